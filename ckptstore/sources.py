"""What a checkpoint is on disk: sources, each a directory template with `{step}` and a
completeness rule (DESIGN.md "What a checkpoint is on disk").

A step is complete only when every required source is. Templates may hold other `{name}`
placeholders (AReaL's `epoch{epoch}epochstep{s}globalstep{step}`): those match any text.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ckptstore.durations import Duration

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
        if v.startswith("/") or ".." in Path(v).parts:
            raise ValueError("must be a relative path inside the workdir")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _one_rule(self) -> CheckpointSource:
        if (self.marker is None) == (self.quiet_for is None):
            raise ValueError("set exactly one completeness rule: 'marker' or 'quiet_for'")
        return self

    def _regex(self) -> re.Pattern[str]:
        out, pos = [], 0
        for m in _PLACEHOLDER.finditer(self.path):
            out.append(re.escape(self.path[pos : m.start()]))
            out.append(r"(?P<step>\d+)" if m.group(1) == "step" else r"[^/]*?")
            pos = m.end()
        out.append(re.escape(self.path[pos:]))
        return re.compile("^" + "".join(out) + "$")

    def _glob(self) -> str:
        return _PLACEHOLDER.sub("*", self.path)


@dataclass(frozen=True)
class LocalFile:
    rel: str
    abs: Path
    size: int


@dataclass(frozen=True)
class StepOnDisk:
    step: int
    dirs: tuple[Path, ...]
    files: tuple[LocalFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _step_dirs(workdir: Path, source: CheckpointSource) -> dict[int, Path]:
    rx = source._regex()
    found: dict[int, Path] = {}
    for path in workdir.glob(source._glob()):
        rel = path.relative_to(workdir).as_posix()
        m = rx.match(rel)
        if m and path.is_dir():
            found[int(m.group("step"))] = path
    return found


def _walk(d: Path) -> list[Path]:
    return [Path(root) / name for root, _dirs, names in os.walk(d) for name in names]


def _is_complete(source: CheckpointSource, d: Path, now: float) -> bool:
    files = _walk(d)
    if any(fnmatch.fnmatch(f.name, pat) for f in files for pat in source.temp_patterns):
        return False
    if source.marker is not None:
        return (d / source.marker).is_file()
    assert source.quiet_for is not None
    if not files:
        return False
    try:
        newest = max(max(f.stat().st_mtime for f in files), d.stat().st_mtime)
    except FileNotFoundError:  # a file vanished under us: the writer is still busy
        return False
    return now - newest >= source.quiet_for.total_seconds()


def complete_steps(
    workdir: Path, sources: tuple[CheckpointSource, ...] | list[CheckpointSource], now: float
) -> list[StepOnDisk]:
    """Steps whose every required source is complete, oldest first."""
    per_source = [(s, _step_dirs(workdir, s)) for s in sources]
    required = [dirs for s, dirs in per_source if s.required]
    if not required:
        return []
    candidates = set.intersection(*(set(d) for d in required))
    out: list[StepOnDisk] = []
    for step in sorted(candidates):
        dirs: list[Path] = []
        ok = True
        for source, found in per_source:
            d = found.get(step)
            if d is None:
                continue  # optional and absent
            if not _is_complete(source, d, now):
                ok = ok and not source.required
                continue
            dirs.append(d)
        if not ok:
            continue
        files = []
        for d in dirs:
            for f in sorted(_walk(d)):
                files.append(LocalFile(f.relative_to(workdir).as_posix(), f, f.stat().st_size))
        out.append(StepOnDisk(step, tuple(dirs), tuple(files)))
    return out


def step_dirs(
    workdir: Path, sources: tuple[CheckpointSource, ...] | list[CheckpointSource]
) -> dict[int, list[Path]]:
    """Every step directory on disk, complete or not, by step (for disk cleanup)."""
    out: dict[int, list[Path]] = {}
    for s in sources:
        for step, d in _step_dirs(workdir, s).items():
            out.setdefault(step, []).append(d)
    return out


__all__ = [
    "CheckpointSource",
    "LocalFile",
    "StepOnDisk",
    "complete_steps",
    "step_dirs",
]
