"""The documents the pod writes and the controller reads (`docs/contracts.md`, "Store keys").

Parsing is tolerant of extra fields (a newer writer may add some) but strict on the fields
the protocol depends on: a pointer with no step is malformed, not "step 0".
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1
STEP_DIGITS = 6
_STEP_DIR = re.compile(r"^step_(\d+)$")
UPLOAD_DIR_PATTERN = r"^(g[0-9]{6,}-[0-9a-f]{8,32}/)?$"
_MANIFEST_NAME = re.compile(r"^MANIFEST(?:-g(?P<gen>[0-9]{6,})-(?P<token>[0-9a-f]{8,32}))?\.json$")
QUARANTINE_DIR = "quarantine"
REPAIRS_DIR = "repairs"


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


def check_rel_path(path: str) -> str:
    """A manifest path is relative, '/'-separated and stays inside its directory.

    B2 object names may hold literal `..`, so a bucket writer could otherwise name
    `../../root/.bashrc` and have a restore write it."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise ValueError(
            f"{path!r} is not a relative path inside the step (no leading '/', no '..', "
            "'.', empty parts or backslashes)"
        )
    return path


class ManifestFile(_Doc):
    path: str
    size: int = Field(ge=0)
    sha1: str = Field(pattern=r"^[0-9a-f]{40}$")

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        return check_rel_path(v)


class Manifest(_Doc):
    schema_: int = Field(SCHEMA_VERSION, alias="schema")
    step: int = Field(ge=0)
    files: tuple[ManifestFile, ...]
    total_bytes: int = Field(ge=0)
    created_at: datetime
    # Where this manifest's objects live inside the step directory: "" for the old layout
    # (one shared directory per step), "gNNNNNN-TOKEN/" for a writer's own upload directory.
    prefix: str = Field("", pattern=UPLOAD_DIR_PATTERN)
    generation: int | None = Field(None, ge=0)
    writer: str | None = None

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    def by_path(self) -> dict[str, ManifestFile]:
        return {f.path: f for f in self.files}


class LatestPointer(_Doc):
    schema_: int = Field(SCHEMA_VERSION, alias="schema")
    run: str
    step: int = Field(ge=0)
    manifest: str
    wandb_run_id: str | None = None
    generation: int = Field(ge=0)
    written_at: datetime
    writer: str

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


# "publishing": the trainer finished; its last steps are not in the store yet (being retried).
Phase = Literal["restoring", "training", "publishing", "exiting", "finished", "failed"]


class Quarantine(_Doc):
    """A manifest that failed verification: kept for inspection, never restored or counted."""

    schema_: int = Field(SCHEMA_VERSION, alias="schema")
    step: int = Field(ge=0)
    manifest: str
    reason: str
    at: datetime
    generation: int = Field(ge=0)
    writer: str

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class RepairEvent(_Doc):
    """Something the store healed on its own (a rebuilt pointer, a step quarantined, a file
    restored from another intact copy); `respawn ckpt ls` and the controller show these."""

    schema_: int = Field(SCHEMA_VERSION, alias="schema")
    kind: Literal["pointer-rebuilt", "quarantined", "file-from-other-copy", "pointer-reclaimed"]
    step: int | None = None
    detail: str = ""
    at: datetime
    generation: int = Field(ge=0)
    writer: str

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Heartbeat(_Doc):
    """Pod liveness. `step` is the newest step the pod knows the trainer reached."""

    schema_: int = Field(SCHEMA_VERSION, alias="schema")
    run: str
    generation: int = Field(ge=0)
    writer: str
    at: datetime
    phase: Phase
    step: int | None = None
    published_step: int | None = None
    restoring_step: int | None = None
    message: str = ""
    will_repeat: bool = Field(
        False,
        description="with phase failed: the failure does not depend on the machine (nothing "
        "verifies, the command cannot start), so another instance would fail the same way",
    )
    ssh_host_keys: tuple[str, ...] = Field(
        (), description="SHA256 fingerprints of the pod's SSH host keys: the controller pins them"
    )

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class TickRecord(_Doc):
    """When the controller last ticked for this run (`RUN/tick.json`). The scheduler is
    best-effort: `status` shows the lag, and a pod asks for a tick when this is overdue."""

    schema_: int = Field(SCHEMA_VERSION, alias="schema")
    run: str
    at: datetime
    previous_at: datetime | None = None

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


def step_dirname(step: int) -> str:
    return f"step_{step:0{STEP_DIGITS}d}"


def parse_step_dirname(name: str) -> int | None:
    m = _STEP_DIR.match(name)
    return int(m.group(1)) if m else None


class Keys:
    """Every key of one run in the store, in one place."""

    def __init__(self, run: str) -> None:
        self.run = run

    @property
    def latest(self) -> str:
        return f"{self.run}/latest.json"

    @property
    def heartbeat(self) -> str:
        return f"{self.run}/heartbeat.json"

    @property
    def tick(self) -> str:
        return f"{self.run}/tick.json"

    @property
    def ledger(self) -> str:
        return f"{self.run}/ledger.json"

    def pod_spec(self, generation: int) -> str:
        """The pod spec the controller launched a generation with (its sha256 is in the pod's
        environment)."""
        return f"{self.run}/pods/g{generation:06d}.json"

    @property
    def checkpoints(self) -> str:
        return f"{self.run}/checkpoints/"

    def step_prefix(self, step: int) -> str:
        return f"{self.run}/checkpoints/{step_dirname(step)}/"

    def step_file(self, step: int, path: str) -> str:
        return self.step_prefix(step) + path

    def manifest(self, step: int) -> str:
        """The old layout's one manifest per step (still read; no longer written)."""
        return self.step_prefix(step) + "MANIFEST.json"

    def upload_dir(self, generation: int, token: str) -> str:
        """A writer's own directory inside a step: no other writer can overwrite its bytes."""
        return f"g{generation:06d}-{token}/"

    def manifest_for(self, step: int, generation: int, token: str) -> str:
        return self.step_prefix(step) + f"MANIFEST-g{generation:06d}-{token}.json"

    def parse_manifest_key(self, key: str) -> tuple[int, int | None] | None:
        """(step, generation) of a manifest key of this run (generation None: old layout)."""
        if not key.startswith(self.checkpoints):
            return None
        parts = key[len(self.checkpoints) :].split("/")
        if len(parts) != 2:
            return None
        step = parse_step_dirname(parts[0])
        m = _MANIFEST_NAME.match(parts[1])
        if step is None or m is None:
            return None
        return step, int(m.group("gen")) if m.group("gen") else None

    def object_key(self, manifest: Manifest, path: str) -> str:
        return self.step_prefix(manifest.step) + manifest.prefix + path

    @property
    def quarantine(self) -> str:
        return f"{self.run}/{QUARANTINE_DIR}/"

    def quarantine_for(self, manifest_key: str) -> str:
        name = manifest_key[len(self.checkpoints) :].replace("/", "--")
        return f"{self.quarantine}{name}"

    @property
    def repairs(self) -> str:
        return f"{self.run}/{REPAIRS_DIR}/"
