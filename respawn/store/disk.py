"""Checkpoint steps on a pod's disk: find each source's step directories, judge completeness.

A step is complete only when every required source is (`respawn.contract.sources`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from respawn.contract.sources import CheckpointSource


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
    rx = source.regex()
    found: dict[int, Path] = {}
    for path in workdir.glob(source.glob()):
        rel = path.relative_to(workdir).as_posix()
        m = rx.match(rel)
        # A symlinked step directory could point anywhere on the pod: never a checkpoint.
        if m and path.is_dir() and not path.is_symlink():
            found[int(m.group("step"))] = path
    return found


def _walk(d: Path) -> list[Path]:
    """Regular files under d. Symlinks are skipped (os.walk does not descend into linked
    directories, and a linked file may point at keys or /etc): they are never published."""
    out = []
    for root, _dirs, names in os.walk(d):
        for name in names:
            p = Path(root) / name
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(os.lstat(p).st_mode):
                    out.append(p)
    return out


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
                files.append(LocalFile(f.relative_to(workdir).as_posix(), f, f.lstat().st_size))
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
    "LocalFile",
    "StepOnDisk",
    "complete_steps",
    "step_dirs",
]
