"""The store's core: a run's small documents, its fence, its listing, and the records of what
the store healed. Publishing (`publish.py`), the pointer's moves (`pointer.py`), restoring
(`restore.py`) and retention (`retention.py`) build on it; `store.CheckpointStore` is all of
them together.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ValidationError
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from respawn.contract.fencing import MAX_FENCE_AHEAD, Fence
from respawn.store import open_backend
from respawn.store.backend import (
    Backend,
    CorruptError,
    ObjectInfo,
    StoreConfigError,
    StoreError,
    TooLargeError,
)
from respawn.store.keys import Keys, parse_step_dirname
from respawn.store.many import each_outcome, retried
from respawn.store.schema import (
    Heartbeat,
    LatestPointer,
    Manifest,
    Quarantine,
    RepairEvent,
    TickRecord,
    utcnow,
)
from respawn.store.strict import DOC_MAX_BYTES, MANIFEST_MAX_BYTES, loads_document

log = logging.getLogger("respawn.store")
_Doc = TypeVar("_Doc", bound=BaseModel)
T = TypeVar("T")
#: First wait between reads during an outage, doubling up to OUTAGE_MAX_WAIT_S (tests: 0).
OUTAGE_WAIT_S = 0.5
OUTAGE_MAX_WAIT_S = 15.0


class FencedError(StoreError):
    """A newer generation owns this run: the caller must stop writing."""

    def __init__(self, mine: int, current: int) -> None:
        super().__init__(f"generation {mine} is fenced: generation {current} owns this run")
        self.mine = mine
        self.current = current


class BackwardsError(StoreError):
    """Publishing this step would move the pointer backwards."""


class NothingVerifiesError(StoreError):
    """The pointer exists but no step at or below it verifies (proven bad bytes, never an
    outage: another instance would fail the same way)."""


class StoreUnavailableError(StoreError):
    """The store kept failing to answer (not bad bytes) past the read deadline: another try
    later, or another instance, may well succeed."""


def is_outage(e: BaseException) -> bool:
    """A store call that failed without proving anything about the bytes (an I/O error, a
    timeout, a 5xx the backend's own retries did not outlast): asking again later may work.
    Bad bytes, bad documents and a key without the right (`StoreConfigError`) stay so."""
    return isinstance(e, StoreError) and not isinstance(
        e,
        CorruptError
        | StoreConfigError
        | FencedError
        | BackwardsError
        | NothingVerifiesError
        | StoreUnavailableError,
    )


@dataclass(frozen=True)
class ManifestRef:
    key: str
    step: int
    generation: int | None  # None: the old one-manifest-per-step layout


class StoreCore:
    #: Whether a controller document found only at its old key is moved to `_control/RUN/`
    #: (False for read-only commands, which change nothing in the store).
    move_legacy: bool = True
    #: How long a restore keeps retrying reads that fail without proving anything bad
    #: (an outage), before it gives up as unavailable (never as corrupt).
    read_deadline_s: float = 300.0

    def __init__(self, backend: Backend, run: str, workers: int = 4) -> None:
        self.backend = backend
        self.run = run
        self.keys = Keys(run)
        self.workers = workers
        # The controller documents that move from a store from before `_control/` on their
        # first read (the lease and the tick record do not: they expire or inform only).
        counted = {
            self.keys.ledger: self.keys.ledger_seq,
            self.keys.halt: self.keys.halt_seq,
            self.keys.breaker: self.keys.breaker_seq,
        }
        self._migrating = {k: self.keys.legacy(k) or k for k in counted}
        self._migrating_counters = {k: self.keys.legacy(c) or c for k, c in counted.items()}
        self._from_before_control: bool | None = None  # learnt on the first old-key read
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
    ) -> Self:
        return cls(open_backend(url, credential_envs, create, require_delete), run, workers)

    def patiently(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, asked again while the store is out (`is_outage`), for at most
        `read_deadline_s`; then StoreUnavailableError. Anything else is raised at once."""
        deadline = self.read_deadline_s
        try:
            return retry(
                retry=retry_if_exception(is_outage),
                stop=stop_after_delay(deadline),
                wait=wait_exponential(multiplier=OUTAGE_WAIT_S, max=OUTAGE_MAX_WAIT_S),
                reraise=True,
            )(fn)(*args)
        except StoreError as e:
            if not is_outage(e):
                raise
            raise StoreUnavailableError(
                f"the store did not answer for {deadline:g}s ({e}); nothing was judged corrupt"
            ) from e

    # -- small documents -------------------------------------------------------------------

    def read_json(self, key: str, max_bytes: int = DOC_MAX_BYTES) -> dict[str, object] | None:
        """The document, None when missing; CorruptError naming the key when it is larger
        than `max_bytes` or is not strict JSON (`respawn.store.strict`)."""
        raw = self.backend.read_bytes(key, max_bytes=max_bytes)
        if raw is None and key in self._migrating and self._before_control():
            raw = self._migrate(key, self._migrating[key], max_bytes)
        return None if raw is None else loads_document(key, raw)

    def _before_control(self) -> bool:
        """Whether this run's store is from before `_control/`: its controller prefix holds no
        ledger. Once it does, the old keys are never read again: they are pod-writable, and
        a halt order or breaker record planted there would otherwise be moved and obeyed."""
        if self._from_before_control is None:
            try:
                moved = self.backend.read_bytes(self.keys.ledger, max_bytes=DOC_MAX_BYTES)
            except StoreError:
                moved = b"unreadable, but there"
            self._from_before_control = moved is None
        return self._from_before_control

    def _migrate(self, key: str, old: str, max_bytes: int) -> bytes | None:
        """A controller document missing from `_control/RUN/`: a store from before the split
        keeps it under `RUN/`. Read there once, verified as it always was there (a sealed
        backend checks its signature and counter), written to `key`, and the old copy and
        its counter deleted, so a pod key cannot plant one to be read again."""
        raw = self.backend.read_bytes(old, max_bytes=max_bytes)
        if raw is None or not self.move_legacy:
            return raw  # a read-only command reads the old copy where it is
        loads_document(old, raw)
        if key == self.keys.ledger:
            # The ledger moves last: until it has, the next tick still finds the store from
            # before `_control/` and moves what a crash here left behind.
            for other in self._migrating:
                if other != key:
                    self.read_json(other)
        self.backend.write_bytes(key, raw)
        stale = [old, self._migrating_counters[key]]
        try:
            self.backend.delete(stale)
        except StoreError as e:  # moved already; the next read finds the new copy
            log.warning("%s moved to %s; the old copy stays: %s", old, key, e)
        log.info("moved %s to %s (the controller's prefix)", old, key)
        return self.backend.read_bytes(key, max_bytes=max_bytes)

    def set_aside(
        self, key: str, stamp: str, delete: bool = True, backend: Backend | None = None
    ) -> str:
        """Keep `key`'s bytes as `key.corrupt-STAMP` (what it was, when too large to keep
        whole) and, with `delete`, remove it. `backend`: one that reads it unverified."""
        backend = backend or self.backend
        kept = f"{key}.corrupt-{stamp}"
        try:
            raw = backend.read_bytes(key, max_bytes=DOC_MAX_BYTES) or b""
        except TooLargeError as big:
            raw = str(big).encode()
        backend.write_bytes(kept, raw)
        if delete:
            backend.delete([key])
        return kept

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

    def write_heartbeat(self, hb: Heartbeat) -> None:
        self.write_json(self.keys.heartbeat, hb.model_dump(mode="json", by_alias=True))

    def read_tick(self) -> TickRecord | None:
        return self._parse(self.keys.tick, TickRecord)

    def write_tick(self, tick: TickRecord) -> None:
        self.write_json(self.keys.tick, tick.model_dump(mode="json", by_alias=True))

    def read_pod_spec(self, generation: int) -> bytes | None:
        return self.backend.read_bytes(self.keys.pod_spec(generation), max_bytes=DOC_MAX_BYTES)

    def write_pod_spec(self, generation: int, doc: bytes) -> None:
        self.backend.write_bytes(self.keys.pod_spec(generation), doc)

    def read_manifest_key(self, key: str) -> Manifest | None:
        manifest = self._parse(key, Manifest, MANIFEST_MAX_BYTES)
        parsed = self.keys.parse_manifest_key(key)
        if manifest is not None and (parsed is None or parsed[0] != manifest.step):
            raise CorruptError(f"{key} claims step {manifest.step}: not a manifest of its step")
        return manifest

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

    # -- fencing ---------------------------------------------------------------------------

    def read_fence(self) -> Fence | None:
        return self._parse(self.keys.fence, Fence)

    def write_fence(self, generation: int) -> Fence:
        """Claim `generation` for the run (the controller, right after its ledger)."""
        fence = Fence(run=self.run, generation=generation, at=utcnow())
        self.write_json(self.keys.fence, fence.model_dump(mode="json", by_alias=True))
        return fence

    def current_generation(self) -> int:
        """The generation that owns the run: the controller's fence document, written each
        time it claims a generation. Stores written by an older controller have no fence:
        there the ledger's generation counts, and where there is no ledger either (a store
        used without a controller), the newest a pod wrote in its pointer or heartbeat.

        An unreadable fence falls back the same way (the controller rewrites it at its next
        claim); an unreadable ledger is an error, since it is the controller's record."""
        try:
            fence = self.read_fence()
        except CorruptError as e:
            log.warning("ignoring %s", e)
            fence = None
        if fence is not None:
            return fence.generation
        gens = [0]
        # A store from before the fence is also one from before `_control/` (a pod key
        # cannot read the controller's prefix).
        ledger = self.read_json(self.keys.legacy(self.keys.ledger) or self.keys.ledger)
        claimed = ledger.get("generation") if ledger else None
        if isinstance(claimed, int):
            return claimed
        for key in (self.keys.latest, self.keys.heartbeat):
            try:
                doc = self.read_json(key)
            except CorruptError as e:
                log.warning("ignoring %s", e)
                continue
            named = doc.get("generation") if doc else None
            if isinstance(named, int):
                gens.append(named)
        return max(gens)

    def check_fence(self, generation: int) -> None:
        current = self.current_generation()
        if current > generation + MAX_FENCE_AHEAD:
            log.warning(
                "%s: ignoring a fence at generation %d, more than %d above this writer's %d: "
                "no controller claims that many while a pod lives (made up with a pod's key?)",
                self.run,
                current,
                MAX_FENCE_AHEAD,
                generation,
            )
            return
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

    def listing_mismatch(self, manifest: Manifest, listed: dict[str, ObjectInfo]) -> str | None:
        """The first file of `manifest` the listing does not show with its size (and sha1,
        where the listing reports one); None when every file is there. Reads nothing."""
        for f in manifest.files:
            obj = listed.get(self.keys.object_key(manifest, f.path))
            if obj is None or obj.size != f.size or (obj.sha1 is not None and obj.sha1 != f.sha1):
                return f.path
        return None

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

    def write_log(self, generation: int, tail: bytes) -> None:
        """The pod's upload of its trainer's output tail (overwritten each time)."""
        self.backend.write_bytes(self.keys.log(generation), tail)

    def log_generations(self) -> list[int]:
        """Generations whose pod uploaded a trainer log tail, oldest first."""
        found = (self.keys.parse_log_key(o.key) for o in self.backend.list(self.keys.logs))
        return sorted(g for g in found if g is not None)

    def old_logs(self, keep: int, max_generation: int) -> list[str]:
        """The log keys of all but the newest `keep` generations (retention's to delete).
        Logs above `max_generation` (the ledger's) are not counted: no launch wrote them, and
        a pod planting them must not push the real ones out."""
        gens = [g for g in self.log_generations() if g <= max_generation]
        return [self.keys.log(g) for g in gens[: max(0, len(gens) - keep)]]

    def exists(self) -> bool:
        """Whether the store holds anything of this run."""
        return bool(self.backend.list(f"{self.run}/"))

    # -- what the store healed -------------------------------------------------------------

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
            kind=kind,
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
