"""Retention: which old steps to delete, and crash-left temporaries.

Listings may be eventually consistent, so nothing is inferred from an object's absence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from respawn.store.backend import ObjectInfo, StoreError, TooLargeError
from respawn.store.core import StoreCore
from respawn.store.many import each, retried
from respawn.store.schema import Heartbeat
from respawn.store.strict import MANIFEST_MAX_BYTES

log = logging.getLogger("respawn.store")
#: Crash-left temporaries younger than this may belong to a writer still at work.
LEFTOVER_AGE_S = 6 * 3600.0


class Retention(StoreCore):
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
            return sorted(k for k in names if retried(self._manifest_present)(k))

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

    def _manifest_present(self, key: str) -> bool:
        try:
            return self.backend.read_bytes(key, max_bytes=MANIFEST_MAX_BYTES) is not None
        except TooLargeError:
            return True  # there, whatever it holds

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
