"""The documents the pod writes and the controller reads (`docs/contracts.md`, "Store keys").

Parsing is tolerant of extra fields (a newer writer may add some) but strict on the fields
the protocol depends on: a pointer with no step is malformed, not "step 0".
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

# Keys live in respawn/store/keys.py; imported here for callers of the old location.
from respawn.store.keys import (  # noqa: F401
    STEP_DIGITS,
    UPLOAD_DIR_PATTERN,
    Keys,
    parse_step_dirname,
    step_dirname,
)
from respawn.store.strict import (
    Generation,
    Name,
    Size,
    Step,
    Text,
)

SCHEMA_VERSION = 1
MAX_SCHEMA = 1000
#: A pod has a handful of SSH host keys (one per algorithm).
MAX_HOST_KEYS = 16
#: The longest file or directory name common filesystems hold (ext4, xfs: 255 bytes).
MAX_NAME_BYTES = 255


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
    path: Name
    size: Size
    sha1: str = Field(pattern=r"^[0-9a-f]{40}$")

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        return check_rel_path(v)


class Manifest(_Doc):
    schema_: int = Field(SCHEMA_VERSION, alias="schema", ge=0, le=MAX_SCHEMA)
    step: Step
    files: tuple[ManifestFile, ...]
    total_bytes: Size
    created_at: AwareDatetime
    # Where this manifest's objects live inside the step directory: "" for the old layout
    # (one shared directory per step), "gNNNNNN-TOKEN/" for a writer's own upload directory.
    prefix: str = Field("", pattern=UPLOAD_DIR_PATTERN)
    generation: Generation | None = None
    writer: Name | None = None

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    @model_validator(mode="after")
    def _restorable(self) -> Manifest:
        # A manifest is written to the pod's disk as it names it: a name no filesystem holds,
        # or a file that is also another file's directory, is a manifest no restore can
        # finish (an OSError mid-restore), so it is refused as malformed like any other.
        paths = {f.path for f in self.files}
        for path in paths:
            part = max(path.split("/"), key=lambda p: len(p.encode()))
            if len(part.encode()) > MAX_NAME_BYTES:
                raise ValueError(f"{path!r}: a name over {MAX_NAME_BYTES} bytes ({part[:40]}...)")
            parents = path.split("/")[:-1]
            for i in range(1, len(parents) + 1):
                if "/".join(parents[:i]) in paths:
                    raise ValueError(f"{path!r}: {'/'.join(parents[:i])!r} is also a file")
        return self

    def by_path(self) -> dict[str, ManifestFile]:
        return {f.path: f for f in self.files}


class LatestPointer(_Doc):
    schema_: int = Field(SCHEMA_VERSION, alias="schema", ge=0, le=MAX_SCHEMA)
    run: Name
    step: Step
    manifest: Name
    wandb_run_id: Name | None = None
    generation: Generation
    written_at: AwareDatetime
    writer: Name

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


# "publishing": the trainer finished; its last steps are not in the store yet (being retried).
Phase = Literal["restoring", "training", "publishing", "exiting", "finished", "failed"]


class Quarantine(_Doc):
    """A manifest that failed verification: kept for inspection, never restored or counted."""

    schema_: int = Field(SCHEMA_VERSION, alias="schema", ge=0, le=MAX_SCHEMA)
    step: Step
    manifest: Name
    reason: Text
    at: AwareDatetime
    generation: Generation
    writer: Name

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class RepairEvent(_Doc):
    """Something the store healed on its own (a rebuilt pointer, a step quarantined, a file
    restored from another intact copy); `respawn ckpt ls` and the controller show these."""

    schema_: int = Field(SCHEMA_VERSION, alias="schema", ge=0, le=MAX_SCHEMA)
    kind: Literal[
        "pointer-rebuilt",
        "quarantined",
        "file-from-other-copy",
        "pointer-reclaimed",
        "pointer-set-aside",
    ]
    step: Step | None = None
    detail: Text = ""
    at: AwareDatetime
    generation: Generation
    writer: Name

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Heartbeat(_Doc):
    """Pod liveness. `step` is the newest step the pod knows the trainer reached."""

    schema_: int = Field(SCHEMA_VERSION, alias="schema", ge=0, le=MAX_SCHEMA)
    run: Name
    generation: Generation
    writer: Name
    at: AwareDatetime
    phase: Phase
    step: Step | None = None
    published_step: Step | None = None
    restoring_step: Step | None = None
    message: Text = ""
    will_repeat: bool = Field(
        False,
        description="with phase failed: the failure does not depend on the machine (nothing "
        "verifies, the command cannot start), so another instance would fail the same way",
    )
    ssh_host_keys: tuple[Name, ...] = Field(
        (),
        max_length=MAX_HOST_KEYS,
        description="SHA256 fingerprints of the pod's SSH host keys: the controller pins them",
    )

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class TickRecord(_Doc):
    """When the controller last ticked for this run (`RUN/tick.json`). The scheduler is
    best-effort: `status` shows the lag, and a pod asks for a tick when this is overdue."""

    schema_: int = Field(SCHEMA_VERSION, alias="schema", ge=0, le=MAX_SCHEMA)
    run: Name
    at: AwareDatetime
    previous_at: AwareDatetime | None = None

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


def utcnow() -> datetime:
    return datetime.now(UTC)
