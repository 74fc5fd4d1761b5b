"""Checkpoint sources: what a checkpoint is on disk (`docs/contracts.md`, "Checkpoint sources").

A step is described by sources, each a directory template with `{step}` and a completeness
rule. Templates may hold other `{name}` placeholders (AReaL's
`epoch{epoch}epochstep{s}globalstep{step}`): those match any text within one path part.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from respawn.contract.durations import Duration

DEFAULT_TEMP_PATTERNS = ("*.tmp", "*.temp", "*.partial", "*.incomplete", ".tmp*", "*.lock")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class CheckpointSource(BaseModel):
    """One directory of a checkpoint. Exactly one completeness rule: `marker` or `quiet_for`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(description="directory template relative to the pod's workdir, with {step}")
    marker: str | None = Field(
        None, description="the step is complete once this file exists in the directory"
    )
    quiet_for: Duration | None = Field(
        None, description="the step is complete once no file changed for this long (e.g. 30s)"
    )
    temp_patterns: tuple[str, ...] = Field(
        DEFAULT_TEMP_PATTERNS, description="files matching these mean a write is in progress"
    )
    required: bool = Field(True, description="an optional source is shipped when present")

    @field_validator("path")
    @classmethod
    def _template(cls, v: str) -> str:
        names = _PLACEHOLDER.findall(v)
        if names.count("step") != 1:
            raise ValueError("must contain {step} exactly once, e.g. 'outputs/step_{step}'")
        parts = PurePosixPath(v).parts
        if v.startswith("/") or "\\" in v or ".." in parts or "." in v.split("/"):
            raise ValueError("must be a relative path inside the workdir (no '..', no '\\')")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _one_rule(self) -> CheckpointSource:
        if (self.marker is None) == (self.quiet_for is None):
            raise ValueError("set exactly one completeness rule: 'marker' or 'quiet_for'")
        return self

    def regex(self) -> re.Pattern[str]:
        """Matches a step directory's path relative to the workdir; group `step`."""
        out, pos = [], 0
        for m in _PLACEHOLDER.finditer(self.path):
            out.append(re.escape(self.path[pos : m.start()]))
            out.append(r"(?P<step>\d+)" if m.group(1) == "step" else r"[^/]*?")
            pos = m.end()
        out.append(re.escape(self.path[pos:]))
        return re.compile("^" + "".join(out) + "$")

    def glob(self) -> str:
        return _PLACEHOLDER.sub("*", self.path)

    def owns(self, rel_path: str) -> bool:
        """Whether a file's path (relative to the workdir) lies inside one of this source's
        step directories: a restore writes only such files."""
        parts = rel_path.split("/")
        depth = len(self.path.split("/"))
        return len(parts) > depth and bool(self.regex().match("/".join(parts[:depth])))
