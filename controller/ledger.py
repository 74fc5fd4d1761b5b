"""The ledger (the controller's memory between stateless ticks) and the halt order (what a
person said), kept in the store as two documents with one writer each.

- `RUN/ledger.json` is written by ticks only, and only over the version the tick read
  (`write_ledger`): a tick that observed before another wrote fails instead of undoing it.
  A ledger that cannot be read is never overwritten; `respawn ledger repair`
  (`controller/repair.py`) rebuilds it.
- `RUN/control/halt.json` is written by `respawn terminate` / `respawn resume` only.
- `RUN/control/breaker.json` is written by a tick whose breaker halts the run: the halt
  outlives the ledger it is also in (`respawn ledger repair` reads it back).
"""

from __future__ import annotations

from pydantic import ValidationError

from respawn.controller.model import BreakerHalt, HaltOrder, Ledger
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
        raise StoreError(f"{store.keys.ledger} is malformed: {_first_error(e)}") from e


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
        raise StoreError(f"{halt_key(store.run)} is malformed: {_first_error(e)}") from e


def write_halt(store: CheckpointStore, order: HaltOrder) -> None:
    store.write_json(halt_key(store.run), order.model_dump(mode="json"))


def breaker_key(run: str) -> str:
    return Keys(run).breaker


def write_breaker(store: CheckpointStore, halt: BreakerHalt) -> None:
    store.write_json(breaker_key(store.run), halt.model_dump(mode="json"))


def _first_error(e: ValidationError) -> str:
    first = e.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc']) or '(root)'}: {first['msg']}"
