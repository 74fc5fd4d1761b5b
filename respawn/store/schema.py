"""The documents the pod writes and the controller reads (`docs/contracts.md`, "Store keys").

Parsing is tolerant of extra fields (a newer writer may add some) but strict on the fields
the protocol depends on: a pointer with no step is malformed, not "step 0".
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
STEP_DIGITS = 6
_STEP_DIR = re.compile(r"^step_(\d+)$")


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ManifestFile(_Doc):
    path: str
    size: int = Field(ge=0)
    sha1: str = Field(pattern=r"^[0-9a-f]{40}$")


class Manifest(_Doc):
    schema_: int = Field(SCHEMA_VERSION, alias="schema")
    step: int = Field(ge=0)
    files: tuple[ManifestFile, ...]
    total_bytes: int = Field(ge=0)
    created_at: datetime

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


Phase = Literal["restoring", "training", "exiting", "finished", "failed"]


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
        return self.step_prefix(step) + "MANIFEST.json"
