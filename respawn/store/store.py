"""The checkpoint store protocol, shared by the pod (writer) and the controller (reader).

Publishing a step: every file → the writer's MANIFEST → latest.json, in that order, so the
pointer never names a step whose bytes are not all in the store. Each publish writes into a
directory of its own (`step_N/gG-TOKEN/…`, manifest `step_N/MANIFEST-gG-TOKEN.json`) and the
pointer names that exact manifest: a fenced writer waking up mid-upload can add bytes to the
store but never replace another writer's. Readers trust only the pointer and verify every
file's size and sha1; a file that fails is fetched from another intact copy with the same
sha1, and a step that still fails falls back to the newest older step that verifies (the
failed manifest is quarantined). Generations fence writers: a pod launched before the newest
launch stops writing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from respawn.contract.sources import CheckpointSource
from respawn.store import open_backend
from respawn.store.backend import (
    Backend,
    CorruptError,
    ObjectInfo,
    Progress,
    StoreError,
)
from respawn.store.disk import LocalFile
from respawn.store.hashing import sha1_file
from respawn.store.many import each, each_outcome, retried
from respawn.store.progress import TransferProgress
from respawn.store.schema import (
    Heartbeat,
    Keys,
    LatestPointer,
    Manifest,
    ManifestFile,
    Quarantine,
    RepairEvent,
    TickRecord,
    check_rel_path,
    parse_step_dirname,
    utcnow,
)
from respawn.store.strict import DOC_MAX_BYTES, MANIFEST_MAX_BYTES, loads_document

log = logging.getLogger("respawn.store")
_Doc = TypeVar("_Doc", LatestPointer, Heartbeat, Manifest, Quarantine, RepairEvent, TickRecord)
#: Crash-left temporaries younger than this may belong to a writer still at work.
LEFTOVER_AGE_S = 6 * 3600.0


class FencedError(StoreError):
    """A newer generation owns this run: the caller must stop writing."""

    def __init__(self, mine: int, current: int) -> None:
        super().__init__(f"generation {mine} is fenced: generation {current} owns this run")
        self.mine = mine
        self.current = current


class BackwardsError(StoreError):
    """Publishing this step would move the pointer backwards."""


class NothingVerifiesError(StoreError):
    """The pointer exists but no step at or below it verifies."""


def _role(rel: str, step: int) -> str:
    """A file's path with its step number taken out of its directories (not its name: a
    `shard_3.bin` of step 3 is still shard 3): the same file of another step."""
    head, _, name = rel.rpartition("/")
    return re.sub(rf"(?<!\d)0*{step}(?!\d)", "{step}", head) + "/" + name


def owned_by_sources(sources: Sequence[CheckpointSource], rel: str, step: int) -> bool:
    """Whether `rel` lies inside one of the sources' directories of exactly this step."""
    parts = rel.split("/")
    for source in sources:
        depth = len(source.path.split("/"))
        if len(parts) <= depth:
            continue
        m = source.regex().match("/".join(parts[:depth]))
        if m and int(m.group("step")) == step:
            return True
    return False


@dataclass(frozen=True)
class ManifestRef:
    key: str
    step: int
    generation: int | None  # None: the old one-manifest-per-step layout


@dataclass(frozen=True)
class PublishResult:
    pointer: LatestPointer
    bytes_sent: int
    bytes_copied: int


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


class CheckpointStore:
    def __init__(self, backend: Backend, run: str, workers: int = 4) -> None:
        self.backend = backend
        self.run = run
        self.keys = Keys(run)
        self.workers = workers
        # What the previous publish of this store learnt, to read each file once in the next:
        # sha1 by (device, inode, size, mtime) of every file it sent or copied (a
        # file that has not changed on disk need not be read to know its hash), and which
        # files (by their path with the step number taken out) had changed since the step
        # before (those are uploaded, hashing on the way, without a first pass to look for
        # an unchanged copy).
        self._hashes: dict[tuple[int, ...], str] = {}
        self._changed: set[str] = set()

    @classmethod
    def open(
        cls,
        url: str,
        run: str,
        workers: int = 4,
        credential_envs: tuple[str, str] | None = None,
        create: bool = True,
        require_delete: bool = True,
    ) -> CheckpointStore:
        return cls(open_backend(url, credential_envs, create, require_delete), run, workers)

    # -- small documents -------------------------------------------------------------------

    def read_json(self, key: str, max_bytes: int = DOC_MAX_BYTES) -> dict[str, object] | None:
        """The document, None when missing; CorruptError naming the key when it is larger
        than `max_bytes` or is not strict JSON (`respawn.store.strict`)."""
        raw = self.backend.read_bytes(key, max_bytes=max_bytes)
        return None if raw is None else loads_document(key, raw)

    def write_json(self, key: str, doc: object) -> None:
        self.backend.write_bytes(key, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")

    def _parse(self, key: str, model: type[_Doc], max_bytes: int = DOC_MAX_BYTES) -> _Doc | None:
        doc = self.read_json(key, max_bytes)
        if doc is None:
            return None
        try:
            return model.model_validate(doc)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            raise CorruptError(f"{key} is malformed: {where}: {first['msg']}") from e

    def read_pointer(self) -> LatestPointer | None:
        return self._parse(self.keys.latest, LatestPointer)

    def pointer_or_error(self) -> tuple[LatestPointer | None, str | None]:
        """(pointer, why it is unreadable): a corrupt pointer must not wedge a writer."""
        try:
            return self.read_pointer(), None
        except CorruptError as e:
            return None, str(e)

    def read_heartbeat(self) -> Heartbeat | None:
        return self._parse(self.keys.heartbeat, Heartbeat)

    def read_manifest_key(self, key: str) -> Manifest | None:
        manifest = self._parse(key, Manifest, MANIFEST_MAX_BYTES)
        parsed = self.keys.parse_manifest_key(key)
        if manifest is not None and (parsed is None or parsed[0] != manifest.step):
            raise CorruptError(f"{key} claims step {manifest.step}: not a manifest of its step")
        return manifest

    def read_tick(self) -> TickRecord | None:
        return self._parse(self.keys.tick, TickRecord)

    def write_tick(self, tick: TickRecord) -> None:
        self.write_json(self.keys.tick, tick.model_dump(mode="json", by_alias=True))

    def read_manifest(self, step: int) -> Manifest | None:
        """The step's manifest: the one the pointer names, else the newest generation's."""
        key = self.manifest_key(step)
        return self.read_manifest_key(key) if key is not None else None

    def manifest_key(
        self, step: int, refs: dict[int, list[ManifestRef]] | None = None
    ) -> str | None:
        pointer, _ = self.pointer_or_error()
        if pointer is not None and pointer.step == step:
            return pointer.manifest
        found = (refs if refs is not None else self.manifest_refs()).get(step)
        if found:
            return found[0].key
        legacy = self.keys.manifest(step)
        old = self.backend.read_bytes(legacy, max_bytes=MANIFEST_MAX_BYTES)
        return legacy if old is not None else None

    def read_pod_spec(self, generation: int) -> bytes | None:
        return self.backend.read_bytes(self.keys.pod_spec(generation), max_bytes=DOC_MAX_BYTES)

    def write_pod_spec(self, generation: int, doc: bytes) -> None:
        self.backend.write_bytes(self.keys.pod_spec(generation), doc)

    def write_heartbeat(self, hb: Heartbeat) -> None:
        self.write_json(self.keys.heartbeat, hb.model_dump(mode="json", by_alias=True))

    # -- fencing ---------------------------------------------------------------------------

    def current_generation(self) -> int:
        """The generation that owns the run: the controller's (its ledger claims each launch
        before it happens). Pointer and heartbeat are written by pods, so they count only
        where there is no ledger (a store used without a controller): otherwise one forged
        `generation: 1000000000` would fence every future pod.

        An unreadable pointer or heartbeat claims nothing (the pod rewrites both); an
        unreadable ledger is an error, since it is the controller's record of launches."""
        gens = [0]
        ledger = self.read_json(self.keys.ledger)
        if ledger and isinstance(ledger.get("generation"), int):
            return int(ledger["generation"])  # type: ignore[arg-type]
        for key in (self.keys.latest, self.keys.heartbeat):
            try:
                doc = self.read_json(key)
            except CorruptError as e:
                log.warning("ignoring %s", e)
                continue
            if doc and isinstance(doc.get("generation"), int):
                gens.append(int(doc["generation"]))  # type: ignore[arg-type]
        return max(gens)

    def check_fence(self, generation: int) -> None:
        current = self.current_generation()
        if current > generation:
            raise FencedError(generation, current)

    # -- listing ---------------------------------------------------------------------------

    def manifested_steps(self) -> list[int]:
        """Steps with at least one MANIFEST in the store's listing, oldest first."""
        return sorted(self.manifest_refs())

    def manifest_refs(
        self, listing: list[ObjectInfo] | None = None
    ) -> dict[int, list[ManifestRef]]:
        """Every manifest in one listing, by step, the newest generation first."""
        out: dict[int, list[ManifestRef]] = {}
        for obj in listing if listing is not None else self.backend.list(self.keys.checkpoints):
            parsed = self.keys.parse_manifest_key(obj.key)
            if parsed is not None:
                out.setdefault(parsed[0], []).append(ManifestRef(obj.key, *parsed))
        for refs in out.values():
            refs.sort(key=lambda r: -1 if r.generation is None else r.generation, reverse=True)
        return out

    def _objects_by_step(self, listing: list[ObjectInfo]) -> dict[int, list[ObjectInfo]]:
        out: dict[int, list[ObjectInfo]] = {}
        for obj in listing:
            step = parse_step_dirname(obj.key[len(self.keys.checkpoints) :].split("/")[0])
            if step is not None:
                out.setdefault(step, []).append(obj)
        return out

    def quarantined(self) -> dict[str, Quarantine]:
        """Quarantined manifests by key (records that cannot be read are skipped)."""
        keys = [o.key for o in self.backend.list(self.keys.quarantine)]
        out: dict[str, Quarantine] = {}
        for q in each_outcome(lambda k: self._parse(k, Quarantine), keys):
            if isinstance(q, Quarantine):
                out[q.manifest] = q
        return out

    def read_manifests(self, keys: Sequence[str]) -> dict[str, Manifest | StoreError | None]:
        """Many manifests at once (bounded, each retried): by key, the manifest, None when
        missing, or why it could not be read."""
        return dict(zip(keys, each_outcome(retried(self.read_manifest_key), keys), strict=True))

    def exists(self) -> bool:
        """Whether the store holds anything of this run."""
        return bool(self.backend.list(f"{self.run}/"))

    def repairs(self) -> list[RepairEvent]:
        keys = [o.key for o in self.backend.list(self.keys.repairs)]
        out = [
            ev
            for ev in each_outcome(lambda k: self._parse(k, RepairEvent), keys)
            if isinstance(ev, RepairEvent)
        ]
        return sorted(out, key=lambda e: e.at)

    def _record_repair(
        self, kind: str, generation: int, writer: str, step: int | None, detail: str
    ) -> None:
        ev = RepairEvent(
            kind=kind,  # type: ignore[arg-type]
            step=step,
            detail=detail[:500],
            at=utcnow(),
            generation=generation,
            writer=writer,
        )
        key = f"{self.keys.repairs}{ev.at:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.json"
        try:
            self.write_json(key, ev.model_dump(mode="json", by_alias=True))
        except StoreError as e:  # the repair itself stands; only its record is lost
            log.warning("could not record repair %s: %s", kind, e)
        log.warning("store repair (%s) step %s: %s", kind, step, detail)

    def _quarantine(self, key: str, step: int, reason: str, generation: int, writer: str) -> None:
        q = Quarantine(
            step=step,
            manifest=key,
            reason=reason[:500],
            at=utcnow(),
            generation=generation,
            writer=writer,
        )
        self.write_json(self.keys.quarantine_for(key), q.model_dump(mode="json", by_alias=True))
        self._record_repair("quarantined", generation, writer, step, f"{key}: {reason}")

    # -- publish ---------------------------------------------------------------------------

    def publish(
        self,
        step: int,
        files: Sequence[LocalFile],
        generation: int,
        writer: str,
        wandb_run_id: str | None = None,
        progress: Progress | None = None,
    ) -> PublishResult:
        """Upload a complete step into this writer's own directory, then its manifest, then
        move the pointer to that manifest.

        A generation newer than the pointer's may publish a step at or below the pointer's
        (its own good copy of a step it fell back from, or over a pointer an older
        generation wrote after this one took over)."""
        if not files:
            raise StoreError(f"step {step} has no files to publish")
        for f in files:
            try:
                check_rel_path(f.rel)
            except ValueError as e:
                raise StoreError(f"cannot publish {f.abs}: {e}") from None
            # lstat: a symlink could point anywhere on the pod (keys, /etc); never ship one.
            if not stat.S_ISREG(os.lstat(f.abs).st_mode):
                raise StoreError(f"cannot publish {f.abs}: not a regular file (symlink?)")
        self.check_fence(generation)
        pointer, pointer_error = self.pointer_or_error()
        reclaim = pointer is not None and step <= pointer.step
        if pointer is not None and reclaim and pointer.generation >= generation:
            raise BackwardsError(f"step {step} is not newer than the published step {pointer.step}")
        if pointer_error is not None:
            # No pointer to compare with: the newest manifest of this or a newer generation
            # stands in for it, so a rebuilt pointer never lands behind one.
            floor = [
                st
                for st, refs in self.manifest_refs().items()
                if any(r.generation is None or r.generation >= generation for r in refs)
            ]
            if floor and step <= max(floor):
                raise BackwardsError(
                    f"step {step} is not newer than step {max(floor)} ({pointer_error})"
                )
        previous: Manifest | None = None
        if pointer is not None:
            try:
                previous = self.read_manifest_key(pointer.manifest)
            except StoreError as e:
                log.warning("not reusing the previous step's objects: %s", e)
        prev_by_size: dict[int, list[ManifestFile]] = {}
        if previous is not None:
            for pf in previous.files:
                prev_by_size.setdefault(pf.size, []).append(pf)
        token = uuid.uuid4().hex[:16]
        prefix = self.keys.upload_dir(generation, token)

        known, changed_before = dict(self._hashes), set(self._changed)

        def send(f: LocalFile) -> tuple[ManifestFile, int, int, tuple[int, ...], bool]:
            key = self.keys.step_prefix(step) + prefix + f.rel
            st = os.stat(f.abs)
            ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            candidates = prev_by_size.get(f.size) if previous is not None else None
            digest = known.get(ident)
            if candidates and digest is None and _role(f.rel, step) not in changed_before:
                # A same-size file of the previous step may be this one: hash first, since
                # a copy in the store saves the upload. A file that changed last time is
                # taken to change again: uploaded in one pass that also hashes it.
                digest = sha1_file(f.abs)
            if digest is not None and candidates and previous is not None:
                for pf in candidates:
                    # The stored object is proven by the backend (it hashes or checks its
                    # recorded sha1), never taken on the manifest's word.
                    if pf.sha1 == digest and self.backend.copy(
                        self.keys.object_key(previous, pf.path), key, digest, f.size
                    ):
                        if progress:
                            progress(f.size)
                        entry = ManifestFile(path=f.rel, size=f.size, sha1=digest)
                        return entry, 0, f.size, ident, False
            sent = self.backend.upload(key, f.abs, f.size, progress, sha1=digest)
            digest = sent if sent is not None else digest or sha1_file(f.abs)
            changed = bool(candidates) and not any(pf.sha1 == digest for pf in candidates or ())
            return ManifestFile(path=f.rel, size=f.size, sha1=digest), f.size, 0, ident, changed

        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            results = list(pool.map(send, files))
        self._hashes = {r[3]: r[0].sha1 for r in results}
        self._changed = {_role(r[0].path, step) for r in results if r[4]}
        entries = tuple(sorted((r[0] for r in results), key=lambda m: m.path))
        manifest = Manifest(
            step=step,
            files=entries,
            total_bytes=sum(e.size for e in entries),
            created_at=utcnow(),
            prefix=prefix,
            generation=generation,
            writer=writer,
        )
        manifest_key = self.keys.manifest_for(step, generation, token)
        self.check_fence(generation)  # an upload can take long: leave no manifest if fenced
        self.write_json(manifest_key, manifest.model_dump(mode="json", by_alias=True))
        new_pointer = LatestPointer(
            run=self.run,
            step=step,
            manifest=manifest_key,
            wandb_run_id=wandb_run_id,
            generation=generation,
            written_at=utcnow(),
            writer=writer,
        )
        self._move_pointer(new_pointer)
        if pointer_error is not None:
            self._record_repair("pointer-rebuilt", generation, writer, step, pointer_error)
        elif pointer is not None and reclaim:
            self._record_repair(
                "pointer-reclaimed",
                generation,
                writer,
                step,
                f"replaced step {pointer.step} of generation {pointer.generation}",
            )
        return PublishResult(new_pointer, sum(r[1] for r in results), sum(r[2] for r in results))

    def _move_pointer(self, new: LatestPointer, allow_backwards: bool = False) -> None:
        # Re-check right before the write: another generation may have launched meanwhile.
        self.check_fence(new.generation)
        current, _ = self.pointer_or_error()
        if (
            current is not None
            and new.step <= current.step
            and not allow_backwards
            and current.generation >= new.generation
        ):
            raise BackwardsError(f"pointer is at step {current.step}; refusing step {new.step}")
        self.write_json(self.keys.latest, new.model_dump(mode="json", by_alias=True))
        # Neither backend has conditional writes: re-read after the write, and if a newer
        # generation launched in the window, put back what was there while the pointer is
        # still ours (a newer generation's pod also reclaims a pointer an older one wrote).
        try:
            self.check_fence(new.generation)
        except FencedError:
            with contextlib.suppress(StoreError):
                back, _ = self.pointer_or_error()
                if back == new:
                    self._undo_pointer(new, current)
            raise

    def _undo_pointer(self, mine: LatestPointer, before: LatestPointer | None) -> None:
        """Give the pointer back after a fenced write. What this writer read before writing
        may be stale (the newer generation may have published in between, and this write
        erased its pointer), so the newest manifest of a newer generation wins."""
        newest: tuple[int, int, str] | None = None
        for step, refs in self.manifest_refs().items():
            for ref in refs:
                if ref.generation is not None and ref.generation > mine.generation:
                    newest = max(
                        newest or (step, ref.generation, ref.key), (step, ref.generation, ref.key)
                    )
        if newest is not None:
            step, gen, key = newest
            restored = LatestPointer(
                run=self.run,
                step=step,
                manifest=key,
                wandb_run_id=mine.wandb_run_id,
                generation=gen,
                written_at=utcnow(),
                writer=f"{mine.writer} (giving back to generation {gen})",
            )
            self.write_json(self.keys.latest, restored.model_dump(mode="json", by_alias=True))
        elif before is not None:
            self.write_json(self.keys.latest, before.model_dump(mode="json", by_alias=True))
        else:
            self.backend.delete([self.keys.latest])
        self._record_repair(
            "pointer-reclaimed",
            mine.generation,
            mine.writer,
            mine.step,
            "a fenced writer's pointer was taken back",
        )

    def rollback_pointer(self, step: int, generation: int, writer: str) -> LatestPointer:
        """Move the pointer back to an older verified step (the ledger records why)."""
        key = self.manifest_key(step)
        manifest = self.read_manifest_key(key) if key is not None else None
        if manifest is None or key is None:
            raise StoreError(f"cannot roll back to step {step}: it has no manifest")
        return self._point_at(key, step, generation, writer)

    def _point_at(self, key: str, step: int, generation: int, writer: str) -> LatestPointer:
        current, _ = self.pointer_or_error()
        new = LatestPointer(
            run=self.run,
            step=step,
            manifest=key,
            wandb_run_id=current.wandb_run_id if current else None,
            generation=generation,
            written_at=utcnow(),
            writer=writer,
        )
        self._move_pointer(new, allow_backwards=True)
        return new

    # -- pull ------------------------------------------------------------------------------

    def pull(
        self,
        dest: Path,
        progress_stream: object | None = None,
        quiet: bool = False,
        sources: Sequence[CheckpointSource] | None = None,
        repair_as: tuple[int, str] | None = None,
    ) -> PullResult | None:
        """Restore the newest step at or below the pointer whose every file verifies.

        Returns None when the run has no pointer yet (a fresh start). Files land under `dest`
        at their recorded relative paths only after the whole step has verified; with
        `sources`, a manifest naming any file outside those sources' directories of its step
        is rejected. `repair_as=(generation, writer)` lets this pull heal what it finds: an
        unreadable pointer is rebuilt from the newest step that verifies, and a step that
        fails is quarantined and the pointer moved off it (a pod passes its own identity;
        a read-only `ckpt pull` passes none).
        """
        try:
            pointer, pointer_error = self.read_pointer(), None
        except CorruptError as e:
            if repair_as is None:
                raise
            pointer, pointer_error = None, str(e)
        if pointer is None and pointer_error is None:
            return None
        rejected: list[tuple[int, str]] = []
        first: list[tuple[int, str]] = []
        if pointer is not None:
            parsed = self.keys.parse_manifest_key(pointer.manifest)
            if parsed is None or parsed[0] != pointer.step:
                pointer_error = f"pointer names {pointer.manifest!r}, not a manifest of its step"
                rejected.append((pointer.step, pointer_error))
            else:
                first.append((pointer.step, pointer.manifest))
        history: list[dict[int, list[ManifestRef]]] = []

        def refs() -> dict[int, list[ManifestRef]]:
            # The run's whole listing: only when the pointer's step fails (or one of its
            # files needs another copy), never on the way to a step that verifies.
            if not history:
                history.append(self.manifest_refs())
            return history[0]

        def candidates() -> Iterator[tuple[int, str]]:
            yield from first
            older = refs()
            quarantined = set(self.quarantined())
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
                manifest = self.read_manifest_key(key)
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
                self._fetch_one(primary, mf, target, bar)
                return None
            except CorruptError as first:
                for other in alternates.keys_for(mf) if alternates else []:
                    if other == primary:
                        continue
                    try:
                        self._fetch_one(other, mf, target, None)
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

    # -- retention -------------------------------------------------------------------------

    def gc(
        self,
        keep_last: int,
        protect: Sequence[int] = (),
        keep_every: int | None = None,
        now: float | None = None,
        leftover_age_s: float = LEFTOVER_AGE_S,
    ) -> list[int]:
        """Delete old steps; return the steps deleted.

        Listings may be incomplete (eventual consistency), so gc infers nothing from an
        object's absence. It deletes only steps it positively knows are below the pointer
        and unprotected, and reads the manifests that decide protection directly. Never
        deletes: the pointer's step, the newest older step with a manifest (the fallback),
        the newest `keep_last` steps with a manifest, milestones (steps divisible by
        `keep_every`), a step a restoring pod announced in its heartbeat, a quarantined step
        (kept for inspection), anything at or above the pointer (a publish may be in flight),
        a step without any manifest whose objects are younger than `leftover_age_s`.
        """
        if keep_last < 2:
            raise ValueError("keep_last must be at least 2: the pointer's step and its fallback")
        now = time.time() if now is None else now

        def heartbeat() -> Heartbeat | None:
            try:
                return self.read_heartbeat()
            except StoreError:
                return None

        # Every read that decides what to keep at once: each is a round trip to a bucket.
        with ThreadPoolExecutor(max_workers=5) as pool:
            leftovers = pool.submit(self._collect_leftovers, now, leftover_age_s)
            pointer_f = pool.submit(self.read_pointer)
            listing_f = pool.submit(self.backend.list, self.keys.checkpoints)
            quarantined_f = pool.submit(self.quarantined)
            hb_f = pool.submit(heartbeat)
        leftovers.result()
        pointer = pointer_f.result()
        if pointer is None:
            return []
        listing = listing_f.result()
        by_step = self._objects_by_step(listing)
        refs = self.manifest_refs(listing)
        quarantined = set(quarantined_f.result())
        manifests: dict[int, list[str]] = {}  # step -> manifest keys known to exist
        unlisted: list[int] = []
        for step in by_step:
            if step >= pointer.step:
                continue
            manifests[step] = sorted({r.key for r in refs.get(step, [])})
            if not manifests[step]:
                unlisted.append(step)

        def by_name(step: int) -> list[str]:
            # The listing may have dropped the manifest: look for it by name.
            names = self._manifest_names(step, by_step[step])
            return sorted(k for k in names if retried(self.backend.read_bytes)(k))

        for step, found in zip(unlisted, each(by_name, unlisted), strict=True):
            manifests[step] = found
        good = sorted(s for s, keys in manifests.items() if any(k not in quarantined for k in keys))
        keep = {pointer.step, *protect, *good[-(keep_last - 1) :]}
        # A quarantined manifest is kept (with its step) for inspection until a person
        # deletes it; it counts for nothing above.
        keep |= {s for s, keys in manifests.items() if any(k in quarantined for k in keys)}
        if keep_every:
            keep |= {s for s in by_step if s % keep_every == 0}
        hb = hb_f.result()
        if hb is not None and hb.restoring_step is not None:
            keep.add(hb.restoring_step)
        doomed: list[int] = []
        for step in sorted(manifests):
            if step in keep:
                continue
            if not manifests[step]:
                if any(o.mtime is None or now - o.mtime < leftover_age_s for o in by_step[step]):
                    continue  # no manifest yet: maybe an upload still at work
                # No manifest found, yet the listing may have hidden the one upload dir that
                # has it: only below every kept step could it not have been protected.
                if not good or step > min(s for s in keep if s in good):
                    continue
            doomed.append(step)
        names = {
            step: sorted(set(manifests[step]) | set(self._manifest_names(step, by_step[step])))
            for step in doomed
        }
        delete = retried(self.backend.delete)
        # Every doomed manifest goes before any doomed object, so a half-deleted step is
        # never mistaken for a whole one; within each phase, steps go concurrently.
        each(lambda step: delete(names[step]), doomed)
        each(
            lambda step: delete([o.key for o in by_step[step] if o.key not in names[step]]),
            doomed,
        )
        return doomed

    def _manifest_names(self, step: int, objs: list[ObjectInfo]) -> list[str]:
        """Every manifest key the step's objects imply (each upload dir names its manifest)."""
        out = {self.keys.manifest(step)}
        base = self.keys.step_prefix(step)
        for o in objs:
            rest = o.key[len(base) :]
            head = rest.split("/", 1)[0]
            if "/" in rest and head.startswith("g") and "-" in head:
                gen, _, token = head[1:].partition("-")
                if gen.isdigit():
                    out.add(self.keys.manifest_for(step, int(gen), token))
            elif self.keys.parse_manifest_key(o.key):
                out.add(o.key)
        return sorted(out)

    def _collect_leftovers(self, now: float, age_s: float) -> None:
        lister: Callable[[str], list[ObjectInfo]] | None = getattr(
            self.backend, "list_leftovers", None
        )
        if lister is None:
            return
        old = [
            o.key for o in lister(f"{self.run}/") if o.mtime is not None and now - o.mtime > age_s
        ]
        if old:
            log.info("deleting %d crash-left temporaries", len(old))
            self.backend.delete(old)


def _clear(path: Path) -> None:
    """Remove a leftover staging directory; a symlink in its place is removed, never
    followed (rmtree refuses links, and the download would write through it)."""
    if path.is_symlink():
        path.unlink()
    shutil.rmtree(path, ignore_errors=True)


class _Alternates:
    """Other stored copies of a file, by (sha1, size), from every manifest of the run: the
    bytes are proven by the hash, whichever step they were uploaded for."""

    def __init__(
        self, store: CheckpointStore, refs: Callable[[], dict[int, list[ManifestRef]]]
    ) -> None:
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
