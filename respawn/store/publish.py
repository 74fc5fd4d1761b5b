"""Publishing a step: every file → the writer's MANIFEST → latest.json, in that order, so the
pointer never names a step whose bytes are not all in the store. Each publish writes into a
directory of its own (`step_N/gG-TOKEN/…`, manifest `step_N/MANIFEST-gG-TOKEN.json`) and the
pointer names that exact manifest: a fenced writer waking up mid-upload can add bytes to the
store but never replace another writer's. An unchanged file is copied inside the store from
the previous step (proven by its hash), not uploaded again.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from respawn.store.backend import Progress, StoreError
from respawn.store.core import BackwardsError
from respawn.store.disk import LocalFile
from respawn.store.hashing import sha1_file
from respawn.store.pointer import PointerMoves
from respawn.store.schema import LatestPointer, Manifest, ManifestFile, check_rel_path, utcnow

log = logging.getLogger("respawn.store")


def _role(rel: str, step: int) -> str:
    """A file's path with its step number taken out of its directories (not its name: a
    `shard_3.bin` of step 3 is still shard 3): the same file of another step."""
    head, _, name = rel.rpartition("/")
    return re.sub(rf"(?<!\d)0*{step}(?!\d)", "{step}", head) + "/" + name


@dataclass(frozen=True)
class PublishResult:
    pointer: LatestPointer
    bytes_sent: int
    bytes_copied: int


class Publishing(PointerMoves):
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
