"""The checkpoint store protocol, shared by the pod (writer) and the controller (reader).

Publishing a step: every file → MANIFEST.json → latest.json, in that order, so the pointer
never names a step whose bytes are not all in the store. Readers trust only the pointer and
verify every file's size and sha1; a step that fails falls back to the newest older step that
verifies. Generations fence writers: a pod launched before the newest launch stops writing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from respawn.store import open_backend
from respawn.store.backend import Backend, Progress, StoreError
from respawn.store.disk import LocalFile
from respawn.store.progress import TransferProgress
from respawn.store.schema import (
    Heartbeat,
    Keys,
    LatestPointer,
    Manifest,
    ManifestFile,
    parse_step_dirname,
    utcnow,
)

log = logging.getLogger("respawn.store")
_Doc = TypeVar("_Doc", LatestPointer, Heartbeat, Manifest)
_HASH_CHUNK = 8 << 20


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


def sha1_file(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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

    @property
    def fell_back(self) -> bool:
        return self.step != self.pointer.step


class CheckpointStore:
    def __init__(self, backend: Backend, run: str, workers: int = 4) -> None:
        self.backend = backend
        self.run = run
        self.keys = Keys(run)
        self.workers = workers

    @classmethod
    def open(
        cls,
        url: str,
        run: str,
        workers: int = 4,
        credential_envs: tuple[str, str] | None = None,
    ) -> CheckpointStore:
        return cls(open_backend(url, credential_envs), run, workers)

    # -- small documents -------------------------------------------------------------------

    def read_json(self, key: str) -> dict[str, object] | None:
        raw = self.backend.read_bytes(key)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"{key} is not valid JSON: {e}") from e
        if not isinstance(doc, dict):
            raise StoreError(f"{key} is not a JSON object")
        return doc

    def write_json(self, key: str, doc: object) -> None:
        self.backend.write_bytes(key, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")

    def _parse(self, key: str, model: type[_Doc]) -> _Doc | None:
        doc = self.read_json(key)
        if doc is None:
            return None
        try:
            return model.model_validate(doc)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            raise StoreError(f"{key} is malformed: {where}: {first['msg']}") from e

    def read_pointer(self) -> LatestPointer | None:
        return self._parse(self.keys.latest, LatestPointer)

    def read_heartbeat(self) -> Heartbeat | None:
        return self._parse(self.keys.heartbeat, Heartbeat)

    def read_manifest(self, step: int) -> Manifest | None:
        return self._parse(self.keys.manifest(step), Manifest)

    def read_pod_spec(self, generation: int) -> bytes | None:
        return self.backend.read_bytes(self.keys.pod_spec(generation))

    def write_pod_spec(self, generation: int, doc: bytes) -> None:
        self.backend.write_bytes(self.keys.pod_spec(generation), doc)

    def write_heartbeat(self, hb: Heartbeat) -> None:
        self.write_json(self.keys.heartbeat, hb.model_dump(mode="json", by_alias=True))

    # -- fencing ---------------------------------------------------------------------------

    def current_generation(self) -> int:
        """The newest generation anyone has claimed: the ledger's launch, pointer, heartbeat."""
        gens = [0]
        ledger = self.read_json(self.keys.ledger)
        if ledger and isinstance(ledger.get("generation"), int):
            gens.append(int(ledger["generation"]))  # type: ignore[arg-type]
        for key in (self.keys.latest, self.keys.heartbeat):
            doc = self.read_json(key)
            if doc and isinstance(doc.get("generation"), int):
                gens.append(int(doc["generation"]))  # type: ignore[arg-type]
        return max(gens)

    def check_fence(self, generation: int) -> None:
        current = self.current_generation()
        if current > generation:
            raise FencedError(generation, current)

    # -- listing ---------------------------------------------------------------------------

    def manifested_steps(self) -> list[int]:
        """Steps whose MANIFEST.json is in the store, oldest first."""
        return self._manifested(self._objects_by_step())

    def _manifested(self, by_step: dict[int, list[str]]) -> list[int]:
        return sorted(s for s, keys in by_step.items() if self.keys.manifest(s) in keys)

    def _objects_by_step(self) -> dict[int, list[str]]:
        """Every object under the checkpoints prefix, by step: one listing of the store."""
        out: dict[int, list[str]] = {}
        for obj in self.backend.list(self.keys.checkpoints):
            step = parse_step_dirname(obj.key[len(self.keys.checkpoints) :].split("/")[0])
            if step is not None:
                out.setdefault(step, []).append(obj.key)
        return out

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
        """Upload a complete step, then its manifest, then move the pointer to it."""
        if not files:
            raise StoreError(f"step {step} has no files to publish")
        if any(f.rel == "MANIFEST.json" for f in files):
            raise StoreError("a checkpoint file may not be named MANIFEST.json at the top level")
        self.check_fence(generation)
        pointer = self.read_pointer()
        if pointer is not None and step <= pointer.step:
            raise BackwardsError(f"step {step} is not newer than the published step {pointer.step}")
        previous = self.read_manifest(pointer.step) if pointer is not None else None
        prev_by_size: dict[int, list[ManifestFile]] = {}
        if previous is not None:
            for pf in previous.files:
                prev_by_size.setdefault(pf.size, []).append(pf)

        def send(f: LocalFile) -> tuple[ManifestFile, int, int]:
            key = self.keys.step_file(step, f.rel)
            candidates = prev_by_size.get(f.size)
            if candidates and previous is not None:
                # Hash first only when a same-size file exists to link to: one pass otherwise.
                digest = sha1_file(f.abs)
                for pf in candidates:
                    if pf.sha1 == digest:
                        self.backend.copy(self.keys.step_file(previous.step, pf.path), key)
                        if progress:
                            progress(f.size)
                        return ManifestFile(path=f.rel, size=f.size, sha1=digest), 0, f.size
            sent = self.backend.upload(key, f.abs, f.size, progress)
            digest = sent if sent is not None else sha1_file(f.abs)
            return ManifestFile(path=f.rel, size=f.size, sha1=digest), f.size, 0

        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            results = list(pool.map(send, files))
        entries = tuple(sorted((r[0] for r in results), key=lambda m: m.path))
        manifest = Manifest(
            step=step,
            files=entries,
            total_bytes=sum(e.size for e in entries),
            created_at=utcnow(),
        )
        self.write_json(self.keys.manifest(step), manifest.model_dump(mode="json", by_alias=True))
        new_pointer = LatestPointer(
            run=self.run,
            step=step,
            manifest=self.keys.manifest(step),
            wandb_run_id=wandb_run_id,
            generation=generation,
            written_at=utcnow(),
            writer=writer,
        )
        self._move_pointer(new_pointer)
        return PublishResult(new_pointer, sum(r[1] for r in results), sum(r[2] for r in results))

    def _move_pointer(self, new: LatestPointer, allow_backwards: bool = False) -> None:
        # Re-check right before the write: another generation may have launched meanwhile.
        self.check_fence(new.generation)
        current = self.read_pointer()
        if current is not None and new.step <= current.step and not allow_backwards:
            raise BackwardsError(f"pointer is at step {current.step}; refusing step {new.step}")
        self.write_json(self.keys.latest, new.model_dump(mode="json", by_alias=True))

    def rollback_pointer(self, step: int, generation: int, writer: str) -> LatestPointer:
        """Move the pointer back to an older verified step (the ledger records why)."""
        manifest = self.read_manifest(step)
        if manifest is None:
            raise StoreError(f"cannot roll back to step {step}: it has no manifest")
        current = self.read_pointer()
        new = LatestPointer(
            run=self.run,
            step=step,
            manifest=self.keys.manifest(step),
            wandb_run_id=current.wandb_run_id if current else None,
            generation=generation,
            written_at=utcnow(),
            writer=writer,
        )
        self._move_pointer(new, allow_backwards=True)
        return new

    # -- pull ------------------------------------------------------------------------------

    def pull(
        self, dest: Path, progress_stream: object | None = None, quiet: bool = False
    ) -> PullResult | None:
        """Restore the newest step at or below the pointer whose every file verifies.

        Returns None when the run has no pointer yet (a fresh start). Files land under `dest`
        at their recorded relative paths only after the whole step has verified.
        """
        pointer = self.read_pointer()
        if pointer is None:
            return None
        older = [s for s in self.manifested_steps() if s < pointer.step]
        rejected: list[tuple[int, str]] = []
        for step in [pointer.step, *reversed(older)]:
            try:
                manifest = self.read_manifest(step)
            except StoreError as e:
                rejected.append((step, str(e)))
                continue
            if manifest is None:
                rejected.append((step, "manifest missing"))
                continue
            staging = dest / f".respawn-staging-{step}"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                self._download_verified(manifest, staging, progress_stream, quiet)
            except StoreError as e:
                shutil.rmtree(staging, ignore_errors=True)
                log.warning("step %d failed verification: %s; trying an older step", step, e)
                rejected.append((step, str(e)))
                continue
            for mf in manifest.files:
                target = dest / mf.path
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / mf.path, target)
            shutil.rmtree(staging, ignore_errors=True)
            return PullResult(step, manifest, pointer, tuple(rejected))
        raise NothingVerifiesError(
            f"no checkpoint of run {self.run} verifies: "
            + "; ".join(f"step {s}: {why}" for s, why in rejected)
        )

    def _download_verified(
        self, manifest: Manifest, staging: Path, stream: object | None, quiet: bool
    ) -> None:
        bar = TransferProgress(
            f"pull step {manifest.step}",
            manifest.total_bytes,
            stream=stream,  # type: ignore[arg-type]
            quiet=quiet,
        )

        def fetch(mf: ManifestFile) -> None:
            target = staging / mf.path
            got = self.backend.download(self.keys.step_file(manifest.step, mf.path), target, bar)
            size = target.stat().st_size
            if size != mf.size:
                raise StoreError(f"{mf.path}: size {size} != manifest {mf.size}")
            digest = got if got is not None else sha1_file(target)
            if digest != mf.sha1:
                raise StoreError(f"{mf.path}: sha1 {digest} != manifest {mf.sha1}")

        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            for fut in [pool.submit(fetch, mf) for mf in manifest.files]:
                fut.result()
        bar.finish()

    # -- retention -------------------------------------------------------------------------

    def gc(
        self, keep_last: int, protect: Sequence[int] = (), keep_every: int | None = None
    ) -> list[int]:
        """Delete old steps; return the steps deleted.

        Never deletes: the pointer's step, the newest older step that has a manifest (the
        fallback), the newest `keep_last` manifested steps, milestones (steps divisible by
        `keep_every`), a step a restoring pod announced in its heartbeat, anything newer than
        the pointer (a publish may be in flight).
        """
        if keep_last < 2:
            raise ValueError("keep_last must be at least 2: the pointer's step and its fallback")
        pointer = self.read_pointer()
        if pointer is None:
            return []
        by_step = self._objects_by_step()
        manifested = [s for s in self._manifested(by_step) if s <= pointer.step]
        keep = set(manifested[-keep_last:]) | {pointer.step} | set(protect)
        if keep_every:
            keep |= {s for s in manifested if s % keep_every == 0}
        older = [s for s in manifested if s < pointer.step]
        if older:
            keep.add(older[-1])
        try:
            hb = self.read_heartbeat()
        except StoreError:
            hb = None
        if hb is not None and hb.restoring_step is not None:
            keep.add(hb.restoring_step)
        doomed = sorted(s for s in by_step if s < pointer.step and s not in keep)
        for step in doomed:
            # The manifest goes first, so a half-deleted step is never mistaken for a whole one.
            manifest_key = self.keys.manifest(step)
            self.backend.delete([manifest_key])
            self.backend.delete([k for k in by_step[step] if k != manifest_key])
        return doomed
