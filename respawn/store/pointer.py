"""Moving the pointer: after a publish, back to an older step (a rollback, a restore that fell
back), giving it back after a fenced write, and rebuilding it from the manifests.

Neither backend has conditional writes, so every move re-checks the fence right before and
after it writes, and puts back what was there when a newer generation took over meanwhile.
"""

from __future__ import annotations

import contextlib

from respawn.store.backend import StoreError
from respawn.store.core import BackwardsError, FencedError, StoreCore
from respawn.store.schema import LatestPointer, utcnow


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
