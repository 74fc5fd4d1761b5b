"""`respawn ledger repair`: rebuild what a run's `unknown` waits on, from every source that
survives, trusting none of them alone.

- The ledger: its generation from every fencing source (what is left of it, the pointer, the
  heartbeat, the instances listed); its breaker state (halt, launches, rollbacks) from every
  copy that can be read, verified or not (the current one, the unreadable one it keeps as
  `ledger.json.corrupt-<time>`, those earlier repairs kept), plus the launches the pod specs
  prove (`RUN/pods/gNNNNNN.json`, written before each launch) and the instances listed. Only
  what makes the run safer is taken from a copy that does not verify: more launches, a halt.
  The last breaker halt is also kept in `control/breaker.json` (signed and counted like the
  ledger), and the crash-loop and budget breakers are judged again on the rebuilt launch
  history: a halt survives an older ledger put back (issue 18.6).
- An unreadable pointer or heartbeat contributes no generation (a note says so): it is kept
  beside itself (`.corrupt-<time>`), the pointer rebuilt from the newest step whose manifest
  parses (a pod's restore still verifies every file and falls back), the heartbeat left for
  the pod to write again.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from pydantic import ValidationError

from respawn.controller.config import Budget
from respawn.controller.decide import budget_trip
from respawn.controller.ledger import breaker_key, find_ledger, read_halt
from respawn.controller.model import (
    MAX_LEDGER_EVENTS,
    MAX_LEDGER_LAUNCHES,
    BreakerHalt,
    LaunchRecord,
    Ledger,
    RollbackRecord,
)
from respawn.provisioning.base import Instance
from respawn.store.backend import Backend
from respawn.store.schema import Heartbeat, LatestPointer
from respawn.store.store import CheckpointStore, StoreError
from respawn.store.strict import DOC_MAX_BYTES, loads_document

WRITER = "respawn ledger repair"
#: A launch the controller's record of was lost: the pod spec proves the launch was made,
#: not its instance; counted as one (a halt a person lifts beats a crash loop that goes on).
UNRECORDED = "unrecorded"
_POD_SPEC = re.compile(r"/g(\d+)\.json$")


def unverified(store: CheckpointStore) -> Backend:
    """The store's backend without the ledger signature check (`controller/seal.py`): repair
    keeps a ledger that does not verify, it does not trust it."""
    raw = getattr(store.backend, "raw", None)
    return raw() if callable(raw) else store.backend


def repair_ledger(
    store: CheckpointStore,
    instance_generations: Iterable[int],
    now: datetime,
    instances: Iterable[Instance] = (),
    budget: Budget | None = None,
) -> tuple[Ledger, list[str]]:
    """Rebuild the run's ledger (and set aside an unreadable pointer or heartbeat). Returns
    the new ledger and what was done. Raises StoreError only when the store cannot be read
    or written at all."""
    notes: list[str] = []
    stamp = f"{now:%Y%m%dT%H%M%SZ}"
    listed = [i for i in instances if i.billing]
    old: Ledger | None
    copies: list[Ledger] = []
    try:
        old = find_ledger(store)
    except StoreError as e:
        old = None
        backup = _set_aside(store, store.keys.ledger, stamp, delete=False)
        notes.append(f"unreadable ledger ({e}) kept as {backup}")
    copies += _readable_copies(store)
    # Only a ledger that verifies names a generation: a forged copy's would fence for nothing.
    sources = {"ledger": old.generation if old is not None else 0}
    pointer_gen, pointer_bad = _generation_of(store, store.keys.latest, store.read_pointer, notes)
    heartbeat_gen, heartbeat_bad = _generation_of(
        store, store.keys.heartbeat, store.read_heartbeat, notes
    )
    sources["latest.json"] = pointer_gen
    sources["heartbeat.json"] = heartbeat_gen
    try:
        fence = store.read_fence()
    except StoreError as e:  # plain and pod-writable: a signal, never a reason to stop
        notes.append(f"fence not read ({e})")
        fence = None
    sources["control/fence.json"] = fence.generation if fence is not None else 0
    sources["instances"] = max([*instance_generations, *(i.generation for i in listed)], default=0)
    base = old if old is not None else Ledger(run=store.run)
    version = base.version
    if old is None:
        # The version of a lost ledger is unknown: start above anything a stale tick read.
        version = max([version, _raw_version(store), *(c.version for c in copies)])
    launches = _launches(store, copies, listed, now, notes)
    # A launch proven by its pod spec fences as well: its pod may still be starting.
    sources["launches"] = max((lr.generation for lr in launches), default=0)
    generation = max(sources.values())
    notes.append(
        f"generation {generation} (" + ", ".join(f"{k} g{v}" for k, v in sources.items()) + ")"
    )
    repaired = base.model_copy(
        update={
            "generation": generation,
            "launches": launches,
            "rollbacks": _rollbacks(copies),
            "heartbeat_seen": None,  # judged afresh from the next tick on
            "doubts": 0,
            "version": version + 1,
        }
    )
    repaired = _halt(store, repaired, copies, budget, now, notes)
    store.write_json(store.keys.ledger, repaired.model_dump(mode="json", by_alias=True))
    if heartbeat_bad:
        kept = _set_aside(store, store.keys.heartbeat, stamp)
        notes.append(f"unreadable heartbeat.json kept as {kept}; the pod writes a new one")
    if pointer_bad:
        kept = _set_aside(store, store.keys.latest, stamp)
        rebuilt = _rebuild_pointer(store, generation)
        notes.append(f"unreadable latest.json kept as {kept}; {rebuilt}")
    return repaired, notes


def _set_aside(store: CheckpointStore, key: str, stamp: str, delete: bool = True) -> str:
    return store.set_aside(key, stamp, delete, backend=unverified(store))


def _generation_of(
    store: CheckpointStore,
    key: str,
    read: Callable[[], LatestPointer | Heartbeat | None],
    notes: list[str],
) -> tuple[int, bool]:
    """(the document's generation, whether it is unreadable). An unreadable one still counts
    the generation it names, if it names one."""
    name = key.rsplit("/", 1)[-1]
    try:
        doc = read()
    except StoreError as e:
        gen = _raw_int(store, key, "generation")
        notes.append(f"{name} unreadable ({e}): counts generation {gen}")
        return gen, True
    return (doc.generation if doc is not None else 0), False


def _raw_int(store: CheckpointStore, key: str, field: str) -> int:
    try:
        raw = unverified(store).read_bytes(key, max_bytes=DOC_MAX_BYTES)
        doc = loads_document(key, raw or b"{}")
    except StoreError:
        return 0
    value = doc.get(field, 0) if isinstance(doc, dict) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _raw_version(store: CheckpointStore) -> int:
    return _raw_int(store, store.keys.ledger, "version")


def _readable_copies(store: CheckpointStore) -> list[Ledger]:
    """Every copy of the ledger that parses, verified or not: the current document and those
    earlier repairs kept beside it."""
    backend = unverified(store)
    where = [store.keys.ledger]
    legacy = store.keys.legacy(store.keys.ledger)
    with contextlib.suppress(StoreError):
        # A store never moved to `_control/` (its ledger unreadable there): the old key's
        # copies, pod-writable, count only until the controller's prefix has a ledger.
        if legacy and backend.read_bytes(store.keys.ledger, max_bytes=DOC_MAX_BYTES) is None:
            where.append(legacy)
    keys = list(where)
    for key in where:
        with contextlib.suppress(StoreError):  # the kept copies only add to the current one
            keys += [o.key for o in backend.list(f"{key}.corrupt-")]
    out = []
    for key in keys:
        try:
            raw = backend.read_bytes(key, max_bytes=DOC_MAX_BYTES)
            if raw:
                out.append(Ledger.model_validate_json(raw))
        except (StoreError, ValidationError, ValueError, RecursionError):
            continue
    return out


def _launches(
    store: CheckpointStore,
    copies: list[Ledger],
    listed: list[Instance],
    now: datetime,
    notes: list[str],
) -> tuple[LaunchRecord, ...]:
    """Every launch any copy recorded, any pod spec proves, any listed instance shows."""
    by_gen: dict[int, LaunchRecord] = {}
    for copy in copies:
        for lr in copy.launches:
            have = by_gen.get(lr.generation)
            if have is None or (have.instance_id is None and lr.instance_id is not None):
                by_gen[lr.generation] = lr
    proven = 0
    for gen, at in _pod_specs(store, now, notes):
        if gen not in by_gen:
            by_gen[gen] = LaunchRecord(generation=gen, at=at, instance_id=UNRECORDED)
            proven += 1
    for inst in listed:
        have = by_gen.get(inst.generation)
        if have is None or have.instance_id in (None, UNRECORDED):
            by_gen[inst.generation] = LaunchRecord(
                generation=inst.generation,
                at=have.at if have is not None else inst.created_at or now,
                provider=inst.provider,
                instance_id=inst.id,
                price_per_hour=inst.price_per_hour or 0.0,
            )
    if proven:
        notes.append(f"{proven} launch(es) rebuilt from the pod specs the controller wrote")
    launches = sorted(by_gen.values(), key=lambda lr: (lr.at, lr.generation))
    return tuple(launches[-MAX_LEDGER_LAUNCHES:])


def _pod_specs(
    store: CheckpointStore, now: datetime, notes: list[str]
) -> list[tuple[int, datetime]]:
    prefix = store.keys.pod_spec(0).rsplit("/", 1)[0] + "/"
    try:
        listing = store.backend.list(prefix)
    except StoreError as e:
        notes.append(f"pod specs not listed ({e}): launches only from the ledger's copies")
        return []
    out = []
    for obj in listing:
        found = _POD_SPEC.search(obj.key)
        if found is not None:
            at = datetime.fromtimestamp(obj.mtime, UTC) if obj.mtime is not None else now
            out.append((int(found.group(1)), min(at, now)))
    return out


def _rollbacks(copies: list[Ledger]) -> tuple[RollbackRecord, ...]:
    seen = {(r.at, r.to_step): r for c in copies for r in c.rollbacks}
    return tuple(sorted(seen.values(), key=lambda r: r.at)[-MAX_LEDGER_EVENTS:])


def _halt(
    store: CheckpointStore,
    ledger: Ledger,
    copies: list[Ledger],
    budget: Budget | None,
    now: datetime,
    notes: list[str],
) -> Ledger:
    """The newest breaker halt of any copy and of `control/breaker.json`, else one the
    rebuilt launches trip again. A person's `resume` after a halt still lifts it (classify
    compares the two times)."""
    halts = [BreakerHalt(halted=c.halted, at=c.halted_at or now) for c in copies if c.halted]
    kept = _breaker_record(store)
    if kept is not None:
        halts.append(kept)
    if halts:
        newest = max(halts, key=lambda h: h.at)
        notes.append(f"breaker halt kept: {newest.halted}")
        return ledger.model_copy(update={"halted": newest.halted, "halted_at": newest.at})
    if budget is None:
        return ledger
    try:
        order = read_halt(store)
    except StoreError:
        order = None  # unreadable: every launch counts, as if never resumed
    since = order.at if order is not None and not order.halted else None
    trip = budget_trip(budget, ledger, now, since=since)
    if trip is None:
        return ledger
    notes.append(f"halted again on the rebuilt launch history: {trip}")
    return ledger.model_copy(update={"halted": trip, "halted_at": now})


def _breaker_record(store: CheckpointStore) -> BreakerHalt | None:
    """The last breaker halt, verified or not: a halt is never the unsafe direction."""
    try:
        raw = unverified(store).read_bytes(breaker_key(store.run), max_bytes=DOC_MAX_BYTES)
        return BreakerHalt.model_validate_json(raw) if raw else None
    except (StoreError, ValidationError, ValueError, RecursionError):
        return None


def _rebuild_pointer(store: CheckpointStore, generation: int) -> str:
    try:
        steps = sorted(store.manifested_steps(), reverse=True)
    except StoreError as e:
        return f"not rebuilt (the steps could not be listed: {e}); run this again"
    for step in steps:
        try:
            store.rollback_pointer(step, generation, WRITER)
        except StoreError:
            continue  # its manifest does not parse: an older one
        return f"rebuilt at step {step} (the newest step whose manifest parses)"
    return "no step has a manifest that parses: the next pod starts fresh"
