"""The ledger (the controller's memory between stateless ticks) and the halt order (what a
person said), kept in the store as two documents with one writer each.

- `RUN/ledger.json` is written by ticks only, and only over the version the tick read
  (`write_ledger`): a tick that observed before another wrote fails instead of undoing it.
  A ledger that cannot be read is never overwritten; `repair_ledger` rebuilds it.
- `RUN/control/halt.json` is written by `respawn terminate` / `respawn resume` only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime

from pydantic import ValidationError

from respawn.controller.model import HaltOrder, Ledger
from respawn.store.backend import Backend
from respawn.store.keys import Keys
from respawn.store.store import CheckpointStore, StoreError


class StaleLedgerError(StoreError):
    """Another tick wrote the ledger since this one read it: this tick's plan is stale."""


def halt_key(run: str) -> str:
    return Keys(run).halt


def read_ledger(store: CheckpointStore) -> Ledger:
    """The run's ledger, or a new one. Raises StoreError when it exists but cannot be read."""
    ledger = find_ledger(store)
    return ledger if ledger is not None else Ledger(run=store.run)


def find_ledger(store: CheckpointStore) -> Ledger | None:
    doc = store.read_json(store.keys.ledger)
    if doc is None:
        return None
    try:
        return Ledger.model_validate(doc)
    except ValidationError as e:
        raise StoreError(f"{store.keys.ledger} is malformed: {e.errors()[0]['msg']}") from e


def write_ledger(store: CheckpointStore, ledger: Ledger, expected_version: int) -> Ledger:
    """Write `ledger` as version `expected_version + 1`, only if the stored ledger is still at
    `expected_version` (0: none yet). Returns what was written.

    Raises StaleLedgerError when another tick wrote in between, StoreError when the stored
    ledger cannot be read (it is never overwritten then)."""
    try:
        current = find_ledger(store)
    except StoreError as e:
        raise StoreError(f"not overwriting a ledger that cannot be read ({e})") from e
    found = current.version if current is not None else 0
    if found != expected_version:
        raise StaleLedgerError(
            f"the ledger changed under this tick (version {found}, read {expected_version}): "
            "another tick acted on this run; this tick's plan is dropped"
        )
    new = ledger.model_copy(update={"version": expected_version + 1})
    store.write_json(store.keys.ledger, new.model_dump(mode="json", by_alias=True))
    return new


def read_halt(store: CheckpointStore) -> HaltOrder | None:
    doc = store.read_json(halt_key(store.run))
    if doc is None:
        return None
    try:
        return HaltOrder.model_validate(doc)
    except ValidationError as e:
        raise StoreError(f"{halt_key(store.run)} is malformed: {e.errors()[0]['msg']}") from e


def write_halt(store: CheckpointStore, order: HaltOrder) -> None:
    store.write_json(halt_key(store.run), order.model_dump(mode="json"))


def repair_ledger(
    store: CheckpointStore, instance_generations: Iterable[int], now: datetime
) -> tuple[Ledger, list[str]]:
    """Rebuild the ledger from every fencing source: what is left of it, the pointer, the
    heartbeat and the generations of the run's instances. A ledger that cannot be parsed is
    kept beside it (`ledger.json.corrupt-<time>`). Returns the new ledger and what was done.
    Raises StoreError when the pointer or heartbeat cannot be read (their generations are
    needed)."""
    notes: list[str] = []
    old: Ledger | None
    try:
        old = find_ledger(store)
    except StoreError as e:
        raw = _unverified(store).read_bytes(store.keys.ledger) or b""
        backup = f"{store.keys.ledger}.corrupt-{now:%Y%m%dT%H%M%SZ}"
        store.backend.write_bytes(backup, raw)
        notes.append(f"unreadable ledger ({e}) kept as {backup}")
        old = None
    sources = {"ledger": old.generation if old is not None else 0}
    pointer, heartbeat = store.read_pointer(), store.read_heartbeat()
    sources["latest.json"] = pointer.generation if pointer is not None else 0
    sources["heartbeat.json"] = heartbeat.generation if heartbeat is not None else 0
    try:
        fence = store.read_fence()
    except StoreError as e:  # plain and pod-writable: a signal, never a reason to stop
        notes.append(f"fence not read ({e})")
        fence = None
    sources["control/fence.json"] = fence.generation if fence is not None else 0
    sources["instances"] = max(instance_generations, default=0)
    generation = max(sources.values())
    notes.append(
        f"generation {generation} (" + ", ".join(f"{k} g{v}" for k, v in sources.items()) + ")"
    )
    base = old if old is not None else Ledger(run=store.run)
    version = base.version
    if old is None:
        # The version of a lost ledger is unknown: start above anything a stale tick read.
        raw_version = _raw_version(store)
        version = max(version, raw_version)
    repaired = base.model_copy(
        update={
            "generation": generation,
            "heartbeat_seen": None,  # judged afresh from the next tick on
            "doubts": 0,
            "version": version + 1,
        }
    )
    store.write_json(store.keys.ledger, repaired.model_dump(mode="json", by_alias=True))
    return repaired, notes


def _unverified(store: CheckpointStore) -> Backend:
    """The store's backend without the ledger signature check (`controller/seal.py`): repair
    keeps a ledger that does not verify, it does not trust it."""
    raw = getattr(store.backend, "raw", None)
    return raw() if callable(raw) else store.backend


def _raw_version(store: CheckpointStore) -> int:
    try:
        doc = json.loads(_unverified(store).read_bytes(store.keys.ledger) or b"{}")
        version = doc.get("version", 0) if isinstance(doc, dict) else 0
        return version if isinstance(version, int) else 0
    except (ValueError, UnicodeDecodeError, RecursionError):
        return 0
