"""Retention: which old steps to delete, and crash-left temporaries.

Listings may be eventually consistent, so nothing is inferred from an object's absence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from respawn.store.backend import CorruptError, ObjectInfo, StoreError, TooLargeError
from respawn.store.core import StoreCore
from respawn.store.many import each, retried
from respawn.store.schema import Heartbeat
from respawn.store.strict import MANIFEST_MAX_BYTES

log = logging.getLogger("respawn.store")
#: Crash-left temporaries younger than this may belong to a writer still at work.
LEFTOVER_AGE_S = 6 * 3600.0


#: Reads one tick's retention may spend verifying manifests and probing manifest-less steps:
#: a pod that plants thousands of step directories must not make every tick slower.
MAX_MANIFEST_READS = 64
#: (a probe is one read of one manifest name a manifest-less step directory implies)
MAX_PROBES = 64


class Retention(StoreCore):
    def gc(
        self,
        keep_last: int,
        protect: Sequence[int] = (),
        keep_every: int | None = None,
        now: float | None = None,
        leftover_age_s: float = LEFTOVER_AGE_S,
        max_step: int | None = None,
        max_generation: int | None = None,
        max_reads: int = MAX_MANIFEST_READS,
        max_probes: int = MAX_PROBES,
    ) -> list[int]:
        """Delete old steps; return the steps deleted.

        Every document gc acts on is pod-writable, so a step is deleted only on the strength
        of manifests that verify: listed, of their step, not quarantined, every file listed
        with its size (`listing_mismatch`), of a generation at most `max_generation` (the
        ledger's) and at a step at most `max_step` (the run's target_step). The pointer sets
        the ceiling only when its own manifest verifies so; otherwise no step with a manifest
        is deleted.
        Below the pointer, the newest `keep_last - 1` verified steps are kept; only steps
        below all of them are deleted (never a milestone, a protected step, the step a
        restoring pod announced, or a quarantined one). A step directory without a manifest
        whose objects are all older than `leftover_age_s` is a crash-left or planted
        leftover, deleted wherever it is once a read by name finds no manifest in it.

        Reads are bounded (`max_reads` manifests verified, `max_probes` manifest-less steps
        probed, oldest first): a planted step directory is read once, then deleted.
        Listings may be incomplete, so nothing is inferred from an object's absence.
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
        listing = listing_f.result()
        listed = {o.key: o for o in listing}
        by_step = self._objects_by_step(listing)
        refs = self.manifest_refs(listing)
        quarantined = set(quarantined_f.result())
        held = {p[0] for k in quarantined if (p := self.keys.parse_manifest_key(k)) is not None}
        reads = [max_reads]

        def verified(key: str, step: int, generation: int | None) -> bool:
            if key in quarantined or key not in listed:
                return False
            if max_step is not None and step > max_step:
                return False
            if max_generation is not None and (generation or 0) > max_generation:
                return False
            if reads[0] <= 0:
                return False
            reads[0] -= 1
            try:
                manifest = retried(self.read_manifest_key)(key)
            except CorruptError:
                return False
            if manifest is None:
                return False
            if max_generation is not None and (manifest.generation or 0) > max_generation:
                return False
            return self.listing_mismatch(manifest, listed) is None

        keep = {*protect, *held}
        hb = hb_f.result()
        if hb is not None and hb.restoring_step is not None:
            keep.add(hb.restoring_step)
        good: list[int] = []
        floor: int | None = None  # steps with a manifest below it may be deleted
        if pointer is not None:
            keep.add(pointer.step)
            of_its_step = any(r.key == pointer.manifest for r in refs.get(pointer.step, []))
            if not of_its_step or not verified(pointer.manifest, pointer.step, pointer.generation):
                log.warning(
                    "%s: retention deletes no step: the pointer's %s does not verify",
                    self.run,
                    pointer.manifest,
                )
            else:
                for step in sorted((s for s in refs if s < pointer.step), reverse=True):
                    if len(good) >= keep_last - 1 or reads[0] <= 0:
                        break
                    if any(verified(r.key, step, r.generation) for r in refs[step]):
                        good.append(step)
                if len(good) >= keep_last - 1:
                    floor = min(good)
        keep |= set(good)
        if keep_every:
            keep |= {s for s in refs if s % keep_every == 0}
        doomed = sorted(s for s in refs if floor is not None and s < floor and s not in keep)
        # Manifest-less step directories, oldest first: a leftover of a crashed upload or a
        # planted one. Young ones may be an upload still at work.
        bare = sorted(
            (max(o.mtime or now for o in objs), s)
            for s, objs in by_step.items()
            if s not in refs
            and s not in keep
            and all(o.mtime is not None and now - o.mtime >= leftover_age_s for o in objs)
        )
        probes: dict[int, list[str]] = {}
        budget = max_probes
        for _, step in bare:
            implied = self._manifest_names(step, by_step[step])
            if len(implied) > budget:
                break
            probes[step], budget = implied, budget - len(implied)

        def no_manifest(step: int) -> bool:
            # The listing may have dropped the manifest: look for it by name.
            return not any(retried(self._manifest_present)(k) for k in probes[step])

        found = each(no_manifest, list(probes))
        doomed = sorted(
            {*doomed, *(s for s, bare_ok in zip(probes, found, strict=True) if bare_ok)}
        )
        names = {
            step: sorted(
                set(self._manifest_names(step, by_step[step])) | {r.key for r in refs.get(step, [])}
            )
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
