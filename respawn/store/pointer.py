"""Moving the pointer: after a publish, back to an older step (a rollback, a restore that fell
back), giving it back after a fenced write, and rebuilding it from the manifests: the
pointer is a cache of the truth, the manifests that verify.

Neither backend has conditional writes, so every move re-checks the fence right before and
after it writes, and puts back what was there when a newer generation took over meanwhile.
"""

from __future__ import annotations

import contextlib
import logging

from respawn.store.backend import CorruptError, StoreError
from respawn.store.core import BackwardsError, FencedError, StoreCore
from respawn.store.many import retried
from respawn.store.schema import LatestPointer, utcnow

log = logging.getLogger("respawn.store")


class PointerMoves(StoreCore):
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

    def newest_listed_step(self) -> tuple[int, str] | None:
        """(step, manifest key) of the newest step whose manifest verifies against the
        listing alone: it parses, is a manifest of its step, is not quarantined, and every
        file it names is listed with its size (and its sha1, where the listing reports one).
        Nothing is downloaded but manifests: what the controller can afford for a run of
        tens of GB. A pod still verifies every byte before it trains on the step."""
        # A few quick retries, never the restore deadline: a tick that waits out an outage
        # would outlive its lease; the next tick tries again.
        listing = retried(self.backend.list)(self.keys.checkpoints)
        listed = {o.key: o for o in listing}
        quarantined = set(self.quarantined())
        refs = self.manifest_refs(listing)
        for step in sorted(refs, reverse=True):
            for ref in refs[step]:
                if ref.key in quarantined:
                    continue
                try:
                    manifest = retried(self.read_manifest_key)(ref.key)
                except CorruptError as e:
                    log.warning("not rebuilding the pointer at %s: %s", ref.key, e)
                    continue
                if manifest is None:
                    continue
                bad = self.listing_mismatch(manifest, listed)
                if bad is None:
                    return step, ref.key
                log.warning("not rebuilding the pointer at %s: %s does not match", ref.key, bad)
        return None

    def rebuild_pointer(self, generation: int, writer: str) -> LatestPointer | None:
        """Point `latest.json` at the newest step that verifies against the listing
        (`newest_listed_step`) when the pointer is missing or unreadable, and record a
        `pointer-rebuilt` repair. None when there is nothing to rebuild from, or the
        pointer became readable meanwhile (a pod published: its pointer wins)."""
        found = self.newest_listed_step()
        if found is None:
            return None
        current, why = self.pointer_or_error()
        if current is not None:
            return None
        step, key = found
        new = self._point_at(key, step, generation, writer)
        self._record_repair(
            "pointer-rebuilt",
            generation,
            writer,
            step,
            f"{why or f'{self.keys.latest} was missing'}; rebuilt from {key}",
        )
        return new

    def set_pointer_aside(self, generation: int, writer: str) -> str | None:
        """Keep an unreadable pointer of a run with no manifest as `latest.json.corrupt-TIME`
        and remove it, so the next pod starts fresh, as a run with no pointer does: a pointer
        only ever names a manifest, so with none there is nothing it could have named. None
        when the pointer became readable meanwhile (a pod published) or steps have manifests
        (those rebuild it: `rebuild_pointer`)."""
        if self.manifested_steps():
            return None
        # Read last, right before it goes: a first publish writes its pointer after its
        # manifest, so a pointer that reads well now is left alone.
        current, why = self.pointer_or_error()
        if current is not None or why is None:
            return None
        kept = self.set_aside(self.keys.latest, f"{utcnow():%Y%m%dT%H%M%S%fZ}")
        self._record_repair("pointer-set-aside", generation, writer, None, f"{why}; kept as {kept}")
        if self.manifested_steps():
            # A first publish landed between the read and the removal: its pointer went with
            # the garbage, and is rebuilt from its manifest at once.
            self.rebuild_pointer(generation, writer)
        return kept
