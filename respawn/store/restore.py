"""Restoring a step: trust only the pointer, verify every file's size and sha1, fetch a file
that fails from another intact copy with the same sha1, and fall back to the newest older step
that verifies (quarantining the failed manifest). Only proven bad bytes count against a step;
a read that merely fails (an outage) is retried until `read_deadline_s`, then the restore
gives up as unavailable, quarantining nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from respawn.contract.sources import CheckpointSource
from respawn.store.backend import CorruptError, Progress, StoreError
from respawn.store.core import ManifestRef, NothingVerifiesError, StoreCore
from respawn.store.hashing import sha1_file
from respawn.store.pointer import PointerMoves
from respawn.store.progress import TransferProgress
from respawn.store.schema import LatestPointer, Manifest, ManifestFile

log = logging.getLogger("respawn.store")


def owned_by_sources(sources: Sequence[CheckpointSource], rel: str, step: int) -> bool:
    """Whether `rel` is one of the sources' files of exactly this step (inside a step
    directory, a step file, or a file overwritten in place and its sidecar)."""
    return any(source.owns(rel, step) for source in sources)


@dataclass(frozen=True)
class PullResult:
    step: int
    manifest: Manifest
    pointer: LatestPointer
    rejected: tuple[tuple[int, str], ...] = field(default=())
    manifest_key: str = ""
    # Files whose own object failed and that were restored from another intact copy.
    healed: tuple[tuple[str, str], ...] = field(default=())
    # Whether this pull rewrote the pointer (rebuilt an unreadable one, or moved it off a
    # quarantined step).
    repaired_pointer: bool = False

    @property
    def fell_back(self) -> bool:
        return self.step != self.pointer.step


class Restoring(PointerMoves):
    def pull(
        self,
        dest: Path,
        progress_stream: object | None = None,
        quiet: bool = False,
        sources: Sequence[CheckpointSource] | None = None,
        repair_as: tuple[int, str] | None = None,
        fresh_without_pointer: bool = False,
    ) -> PullResult | None:
        """Restore the newest step at or below the pointer whose every file verifies.

        Returns None when the run has no checkpoint yet (a fresh start): no pointer and no
        manifest. With `repair_as`, a missing pointer while manifests exist is a lost pointer,
        rebuilt like an unreadable one (unless `fresh_without_pointer`). Files land under `dest`
        at their recorded relative paths only after the whole step has verified; with
        `sources`, a manifest naming any file outside those sources' directories of its step
        is rejected. `repair_as=(generation, writer)` lets this pull heal what it finds: an
        unreadable pointer is rebuilt from the newest step that verifies, and a step that
        fails is quarantined and the pointer moved off it (a pod passes its own identity;
        a read-only `ckpt pull` passes none).

        Only proven bad bytes reject a step; a read that fails otherwise (an outage) is
        retried until `read_deadline_s`, then StoreUnavailableError, nothing quarantined.
        """
        try:
            pointer, pointer_error = self.patiently(self.read_pointer), None
        except CorruptError as e:
            if repair_as is None:
                raise
            pointer, pointer_error = None, str(e)
        history: list[dict[int, list[ManifestRef]]] = []

        def refs() -> dict[int, list[ManifestRef]]:
            # The run's whole listing: only when the pointer's step fails (or one of its
            # files needs another copy), never on the way to a step that verifies.
            if not history:
                history.append(self.patiently(self.manifest_refs))
            return history[0]

        if pointer is None and pointer_error is None:
            if repair_as is None or fresh_without_pointer or not refs():
                return None
            pointer_error = (
                f"{self.keys.latest} is missing, but steps {sorted(refs())[-3:]} have manifests"
            )
        rejected: list[tuple[int, str]] = []
        first: list[tuple[int, str]] = []
        if pointer is not None:
            parsed = self.keys.parse_manifest_key(pointer.manifest)
            if parsed is None or parsed[0] != pointer.step:
                pointer_error = f"pointer names {pointer.manifest!r}, not a manifest of its step"
                rejected.append((pointer.step, pointer_error))
            else:
                first.append((pointer.step, pointer.manifest))

        def candidates() -> Iterator[tuple[int, str]]:
            yield from first
            older = refs()
            quarantined = set(self.patiently(self.quarantined))
            top = pointer.step if pointer is not None else None
            for step in sorted(older, reverse=True):
                if top is not None and step >= top:
                    continue  # newer: a publish in flight; same step: only the pointer's
                yield from ((step, r.key) for r in older[step] if r.key not in quarantined)

        alternates = _Alternates(self, refs)
        for step, key in candidates():
            staging = dest / f".respawn-staging-{step}"
            _clear(staging)
            try:
                manifest = self.patiently(self.read_manifest_key, key)
                if manifest is None:
                    raise CorruptError(f"{key} is missing")
                if sources is not None:
                    outside = [
                        f.path
                        for f in manifest.files
                        if not owned_by_sources(sources, f.path, manifest.step)
                    ]
                    if outside:
                        raise CorruptError(
                            f"{key} names {outside[0]!r}, outside the checkpoint sources of "
                            f"step {manifest.step}"
                        )
                healed = self._download_verified(
                    manifest, staging, progress_stream, quiet, alternates
                )
            except StoreError as e:
                shutil.rmtree(staging, ignore_errors=True)
                if not isinstance(e, CorruptError):
                    raise  # an outage (or a key without rights): no step is to blame
                log.warning("step %d (%s) failed: %s; trying an older copy", step, key, e)
                rejected.append((step, str(e)))
                if (
                    isinstance(e, CorruptError)
                    and repair_as is not None
                    and pointer is not None
                    and key == pointer.manifest
                ):
                    self._quarantine(key, step, str(e), *repair_as)
                    pointer_error = f"step {step} quarantined: {e}"
                continue
            for mf in manifest.files:
                # The path was validated (relative, no '..'); a directory the pod's owner
                # symlinked (outputs -> a big volume) is theirs to have. os.replace swaps a
                # symlink at the target itself, never writes through it.
                target = dest / mf.path
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / mf.path, target)
            shutil.rmtree(staging, ignore_errors=True)
            result_pointer, repaired = pointer, False
            # Move the pointer only off what is proven bad: a step that merely failed to
            # download (a transient error) stays the pointer's, for the next pod to retry.
            if repair_as is not None and pointer_error is not None:
                result_pointer = self._point_at(key, step, *repair_as)
                repaired = True
                self._record_repair("pointer-rebuilt", *repair_as, step, pointer_error)
            assert result_pointer is not None
            if repair_as is not None:
                for path, other in healed:
                    self._record_repair(
                        "file-from-other-copy", *repair_as, step, f"{path} restored from {other}"
                    )
            return PullResult(
                step,
                manifest,
                result_pointer if pointer is None else pointer,
                tuple(rejected),
                key,
                tuple(healed),
                repaired,
            )
        raise NothingVerifiesError(
            f"no checkpoint of run {self.run} verifies: "
            + ("; ".join(f"step {s}: {why}" for s, why in rejected) or "no manifest found")
        )

    def _fetch_one(self, key: str, mf: ManifestFile, target: Path, bar: Progress | None) -> None:
        got = self.backend.download(key, target, bar)
        size = target.stat().st_size
        if size != mf.size:
            raise CorruptError(f"{mf.path}: size {size} != manifest {mf.size}")
        digest = got if got is not None else sha1_file(target)
        if digest != mf.sha1:
            raise CorruptError(f"{mf.path}: sha1 {digest} != manifest {mf.sha1}")

    def _download_verified(
        self,
        manifest: Manifest,
        staging: Path,
        stream: object | None,
        quiet: bool,
        alternates: _Alternates | None = None,
    ) -> list[tuple[str, str]]:
        bar = TransferProgress(
            f"pull step {manifest.step}",
            manifest.total_bytes,
            stream=stream,  # type: ignore[arg-type]
            quiet=quiet,
        )
        staging.mkdir(parents=True, exist_ok=True)
        if staging.is_symlink():
            raise CorruptError(f"{staging} is a symlink: refusing to restore through it")
        root = staging.resolve()

        def fetch(mf: ManifestFile) -> tuple[str, str] | None:
            target = staging / mf.path
            # Paths are validated when the manifest is parsed; this is the second lock,
            # checked before a byte is written.
            if not Path(os.path.normpath(root / mf.path)).is_relative_to(root):
                raise CorruptError(f"{mf.path}: outside the staging directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.parent.resolve().is_relative_to(root):
                raise CorruptError(f"{mf.path}: its directory resolves outside staging")
            primary = self.keys.object_key(manifest, mf.path)
            try:
                self.patiently(self._fetch_one, primary, mf, target, bar)
                return None
            except CorruptError as first:
                for other in alternates.keys_for(mf) if alternates else []:
                    if other == primary:
                        continue
                    try:
                        self.patiently(self._fetch_one, other, mf, target, None)
                    except CorruptError:
                        continue
                    log.warning("%s: %s; restored from %s", mf.path, first, other)
                    return mf.path, other
                raise

        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            healed = [h for h in pool.map(fetch, manifest.files) if h is not None]
        bar.finish()
        return healed

    def verify(self, key: str) -> str | None:
        """Download and hash every file a manifest names; None when all verify, else why."""
        try:
            manifest = self.read_manifest_key(key)
            if manifest is None:
                return "manifest missing"
            with tempfile.TemporaryDirectory(prefix="respawn-verify-") as tmp:
                self._download_verified(manifest, Path(tmp), None, True)
        except StoreError as e:
            return str(e)
        return None


def _clear(path: Path) -> None:
    """Remove a leftover staging directory; a symlink in its place is removed, never
    followed (rmtree refuses links, and the download would write through it)."""
    if path.is_symlink():
        path.unlink()
    shutil.rmtree(path, ignore_errors=True)


class _Alternates:
    """Other stored copies of a file, by (sha1, size), from every manifest of the run: the
    bytes are proven by the hash, whichever step they were uploaded for."""

    def __init__(self, store: StoreCore, refs: Callable[[], dict[int, list[ManifestRef]]]) -> None:
        self.store = store
        self.refs = refs
        self._index: dict[tuple[str, int], list[str]] | None = None
        self._lock = threading.Lock()

    def keys_for(self, mf: ManifestFile) -> list[str]:
        with self._lock:
            if self._index is None:
                index: dict[tuple[str, int], list[str]] = {}
                refs = self.refs()
                keys = [r.key for step in sorted(refs, reverse=True) for r in refs[step]]
                for m in self.store.read_manifests(keys).values():
                    if isinstance(m, Manifest):
                        for f in m.files:
                            index.setdefault((f.sha1, f.size), []).append(
                                self.store.keys.object_key(m, f.path)
                            )
                self._index = index
            return list(self._index.get((mf.sha1, mf.size), []))
