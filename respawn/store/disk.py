"""Checkpoint steps on a pod's disk: find each source's steps, judge completeness.

A source's step is whatever its template matches: a directory (every regular file under it),
one file, or, for a path without `{step}`, the one file overwritten in place (its step read
from `step_from`). A step is complete only when every required source is
(`respawn.contract.sources`). A file overwritten in place is copied aside (`snapshot`) before
it is published, so the bytes sent are the bytes of the step they are published as.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from respawn.contract.sources import CheckpointSource, template_glob, template_regex
from respawn.store.strict import MAX_STEP

#: Where files overwritten in place are copied before they are published (under the workdir:
#: the same filesystem, and never a checkpoint source's path).
SNAPSHOT_DIR = ".respawn-snapshot"
#: Inside it: the copy being published, and the copy of the newest published step (what a
#: trainer restarted in place is given back when it died half way through overwriting).
_NEXT, _PUBLISHED = "next", "published"


@dataclass(frozen=True)
class LocalFile:
    rel: str
    abs: Path
    size: int
    # A file the trainer overwrites in place: publish a snapshot of it, never the live file.
    live: bool = False


@dataclass(frozen=True)
class StepOnDisk:
    step: int
    dirs: tuple[Path, ...]
    files: tuple[LocalFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _regular(p: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(p).st_mode)
    except OSError:
        return False


def _step(value: object) -> int | None:
    """A step a trainer wrote (a JSON value or a file name's digits), or None when it is no
    step the store could hold: a bool, a fraction, Infinity, 10**18 (never a step trained)."""
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_STEP else None


def read_step(workdir: Path, source: CheckpointSource) -> int | None:
    """The step of a file overwritten in place, from where its `step_from` says; None when it
    cannot be read (not written yet, or mid-write)."""
    sf = source.step_from
    if sf is None:
        return None
    if sf.json_path is not None:
        side = workdir / sf.json_path
        if not _regular(side):
            return None
        try:
            if side.stat().st_size > 1 << 20:
                return None  # no sidecar of a step is this large
            return _step(json.loads(side.read_text()).get(sf.key))
        except (OSError, ValueError, TypeError, AttributeError):
            return None
    assert sf.name is not None
    rx = template_regex(sf.name)
    steps = [
        step
        for p in workdir.glob(template_glob(sf.name))
        if (m := rx.match(p.relative_to(workdir).as_posix()))
        and _regular(p)
        and (step := _step(m.group("step"))) is not None
    ]
    return max(steps, default=None)


def _matches(workdir: Path, source: CheckpointSource) -> dict[int, Path]:
    """Each step's directory or file of this source."""
    if source.in_place:
        path = workdir / source.path
        step = read_step(workdir, source) if _regular(path) else None
        return {} if step is None else {step: path}
    rx = source.regex()
    found: dict[int, Path] = {}
    for path in workdir.glob(source.glob()):
        rel = path.relative_to(workdir).as_posix()
        m = rx.match(rel)
        step = _step(m.group("step")) if m else None
        # A symlink could point anywhere on the pod: never a checkpoint.
        if step is not None and (_regular(path) or (path.is_dir() and not path.is_symlink())):
            found[step] = path
    return found


def _walk(d: Path) -> list[Path]:
    """Regular files under d. Symlinks are skipped (os.walk does not descend into linked
    directories, and a linked file may point at keys or /etc): they are never published."""
    out = []
    for root, _dirs, names in os.walk(d):
        for name in names:
            p = Path(root) / name
            if _regular(p):
                out.append(p)
    return out


def _files_of(workdir: Path, source: CheckpointSource, path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(_walk(path))
    side = source.sidecar()
    return [path, workdir / side] if side is not None else [path]


def _temp_beside(source: CheckpointSource, f: Path) -> bool:
    """A temporary sibling of a step file (`ckpt.pt.tmp`, `.tmp-step=5.ckpt`): mid-write."""
    with contextlib.suppress(OSError):
        for other in f.parent.iterdir():
            if (
                other.name != f.name
                and f.name in other.name
                and any(fnmatch.fnmatch(other.name, pat) for pat in source.temp_patterns)
            ):
                return True
    return False


def _after_its_step_file(workdir: Path, source: CheckpointSource, step: int, path: Path) -> bool:
    """A file overwritten in place whose step is the newest step-named file (Lightning's
    last.ckpt beside step=N.ckpt) holds that step only once rewritten after it."""
    sf = source.step_from
    if sf is None or sf.name is None:
        return True
    try:
        named = workdir / sf.name.replace("{step}", str(step))
        return path.stat().st_mtime_ns >= named.stat().st_mtime_ns
    except FileNotFoundError:
        return False


def _is_complete(
    workdir: Path, source: CheckpointSource, step: int, path: Path, now: float
) -> bool:
    return _incomplete(workdir, source, step, path, now) is None


def _incomplete(
    workdir: Path, source: CheckpointSource, step: int, path: Path, now: float
) -> str | None:
    """Why the step's directory or file is not yet whole (None: it is). The words reach the
    user when a step stays so (`why_not_complete`)."""
    rel = _rel(workdir, path)
    if path.is_dir():
        files = _walk(path)
        temps = [
            f.name
            for f in files
            if any(fnmatch.fnmatch(f.name, pat) for pat in source.temp_patterns)
        ]
        if temps:
            return f"{rel} holds a temporary file ({temps[0]})"
        if source.marker is not None:
            return None if (path / source.marker).is_file() else f"{rel} has no {source.marker}"
        mtimes_of = [*files, path]
        if not files:
            return f"{rel} is empty"
    else:
        files = _files_of(workdir, source, path)
        if any(_temp_beside(source, f) for f in files):
            return f"{rel} has a temporary sibling (still being written)"
        mtimes_of = files
        if not _after_its_step_file(workdir, source, step, path):
            assert source.step_from is not None and source.step_from.name is not None
            named = source.step_from.name.replace("{step}", str(step))
            return f"{rel} is not yet rewritten after {named}"
        marker = source.marker
        if marker is None and source.quiet_for is None:
            # The sidecar is the marker: written after the file, so never older than it.
            marker = source.sidecar()
            ref = workdir / marker if marker else None
            files = [path]
        else:
            ref = path.parent / marker.replace("{step}", str(step)) if marker else None
        if ref is not None:
            try:
                if ref.stat().st_mtime_ns >= max(f.stat().st_mtime_ns for f in files):
                    return None
            except (FileNotFoundError, ValueError):
                return f"{_rel(workdir, ref)} is missing"
            return (
                f"{_rel(workdir, ref)} is older than {rel}: a marker or sidecar must be "
                "written after the checkpoint"
            )
    assert source.quiet_for is not None
    try:
        newest = max(p.stat().st_mtime for p in mtimes_of)
    except FileNotFoundError:  # a file vanished under us: the writer is still busy
        return f"{rel} is changing (a file vanished)"
    quiet = source.quiet_for.total_seconds()
    if now - newest >= quiet:
        return None
    return f"{rel} changed {now - newest:.0f}s ago (quiet_for {quiet:.0f}s)"


def _rel(workdir: Path, path: Path) -> str:
    try:
        return path.relative_to(workdir).as_posix()
    except ValueError:
        return path.as_posix()


def why_not_complete(
    workdir: Path,
    sources: tuple[CheckpointSource, ...] | list[CheckpointSource],
    step: int,
    now: float,
) -> str | None:
    """Why `step`, on disk, is not a complete step (None: it is, or it is not on disk)."""
    for source in sources:
        path = _matches(workdir, source).get(step)
        if path is None:
            if source.required:
                return f"{source.path} has no step {step}"
            continue
        why = _incomplete(workdir, source, step, path, now)
        if why is not None and source.required:
            return why
    return None


def complete_steps(
    workdir: Path, sources: tuple[CheckpointSource, ...] | list[CheckpointSource], now: float
) -> list[StepOnDisk]:
    """Steps whose every required source is complete, oldest first."""
    per_source = [(s, _matches(workdir, s)) for s in sources]
    required = [found for s, found in per_source if s.required]
    if not required:
        return []
    candidates = set.intersection(*(set(d) for d in required))
    out: list[StepOnDisk] = []
    for step in sorted(candidates):
        paths: list[tuple[CheckpointSource, Path]] = []
        ok = True
        for source, found in per_source:
            p = found.get(step)
            if p is None:
                continue  # optional and absent
            if not _is_complete(workdir, source, step, p, now):
                ok = ok and not source.required
                continue
            paths.append((source, p))
        if not ok:
            continue
        files = []
        try:
            for source, p in paths:
                for f in _files_of(workdir, source, p):
                    rel = f.relative_to(workdir).as_posix()
                    files.append(LocalFile(rel, f, f.lstat().st_size, source.in_place))
        except FileNotFoundError:
            continue  # deleted under us (the trainer's own rotation)
        out.append(StepOnDisk(step, tuple(p for _, p in paths), tuple(files)))
    return out


def snapshot(
    workdir: Path,
    step: StepOnDisk,
    sources: tuple[CheckpointSource, ...] | list[CheckpointSource],
    now: float,
) -> StepOnDisk | None:
    """The step with every file overwritten in place copied aside, or None when one changed
    while it was copied, was rewritten since it was judged complete (torch.save writes in
    chunks, and a copy may fall in a pause between two), or its step moved on (the next round
    tries again)."""
    if not any(f.live for f in step.files):
        return step
    base = workdir / SNAPSHOT_DIR / _NEXT
    shutil.rmtree(base, ignore_errors=True)
    files = []
    for f in step.files:
        if not f.live:
            files.append(f)
            continue
        before = os.lstat(f.abs)
        target = base / f.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.abs, target)
        after = os.lstat(f.abs)
        if (before.st_mtime_ns, before.st_size) != (after.st_mtime_ns, after.st_size):
            return None
        files.append(replace(f, abs=target, size=target.stat().st_size, live=False))
    copied = {f.rel for f in step.files if f.live}
    for source in sources:
        path = workdir / source.path
        if not source.in_place or not path.exists():
            continue
        if read_step(workdir, source) != step.step:
            return None
        # Complete now, with the bytes unchanged since they were copied: the copy is whole.
        if source.path in copied and not _is_complete(workdir, source, step.step, path, now):
            return None
    return replace(step, files=tuple(files))


def keep_published(workdir: Path) -> None:
    """The copy just published becomes the one a restarted trainer is given back."""
    root = workdir / SNAPSHOT_DIR
    shutil.rmtree(root / _PUBLISHED, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (root / _NEXT).rename(root / _PUBLISHED)


def restore_in_place(
    workdir: Path,
    sources: tuple[CheckpointSource, ...] | list[CheckpointSource],
    published: int | None,
) -> list[str]:
    """Before a trainer restarts in place: every file overwritten in place that is not a whole
    copy of the published step or a newer one (the last trainer died half way through
    overwriting it) is put back from the published copy. Returns the paths put back."""
    kept = workdir / SNAPSHOT_DIR / _PUBLISHED
    if published is None or not kept.is_dir():
        return []
    back: list[str] = []
    for source in sources:
        if not source.in_place or not (kept / source.path).is_file():
            continue
        path = workdir / source.path
        step = read_step(workdir, source) if _regular(path) else None
        if (
            step is not None
            and step >= published
            and _is_complete(workdir, source, step, path, float("inf"))
        ):
            continue
        for rel in (source.path, source.sidecar()):  # the sidecar last: never older than the file
            if rel is not None and (kept / rel).is_file():
                (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(kept / rel, workdir / rel)
        back.append(source.path)
    return back


def step_dirs(
    workdir: Path,
    sources: tuple[CheckpointSource, ...] | list[CheckpointSource],
    deletable: bool = False,
) -> dict[int, list[Path]]:
    """Every step directory or file on disk, complete or not, by step. `deletable`: only
    those disk cleanup may remove (never a file overwritten in place)."""
    out: dict[int, list[Path]] = {}
    for s in sources:
        if deletable and s.in_place:
            continue
        for step, d in _matches(workdir, s).items():
            out.setdefault(step, []).append(d)
    return out


__all__ = [
    "SNAPSHOT_DIR",
    "LocalFile",
    "StepOnDisk",
    "complete_steps",
    "keep_published",
    "read_step",
    "restore_in_place",
    "snapshot",
    "step_dirs",
    "why_not_complete",
]
