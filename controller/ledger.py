"""The ledger: the controller's memory between stateless ticks, kept in the store."""

from __future__ import annotations

from pydantic import ValidationError

from respawn.controller.model import Ledger
from respawn.store.store import CheckpointStore, StoreError


def read_ledger(store: CheckpointStore) -> Ledger:
    """The run's ledger, or a new one. Raises StoreError when it exists but cannot be read."""
    doc = store.read_json(store.keys.ledger)
    if doc is None:
        return Ledger(run=store.run)
    try:
        return Ledger.model_validate(doc)
    except ValidationError as e:
        raise StoreError(f"{store.keys.ledger} is malformed: {e.errors()[0]['msg']}") from e


def write_ledger(store: CheckpointStore, ledger: Ledger) -> None:
    store.write_json(store.keys.ledger, ledger.model_dump(mode="json", by_alias=True))
