"""observe: everything one tick needs to know about a run. Every failure becomes an entry in
`errors` (so the run is classified `unknown`), never a guess such as "no instances"."""

from __future__ import annotations

from collections.abc import Mapping

from ckptstore.store import CheckpointStore, StoreError
from controller.classify import current_instances
from controller.config import RunConfig
from controller.ledger import read_ledger
from controller.model import Ledger, Observation
from provisioning.base import Instance, Provider


def observe(
    run: RunConfig,
    store: CheckpointStore | Exception,
    providers: Mapping[str, Provider | Exception],
) -> Observation:
    errors: list[str] = []
    ledger, pointer, heartbeat = Ledger(run=run.name), None, None
    if isinstance(store, Exception):
        errors.append(f"checkpoint store: {store}")
    else:
        try:
            ledger = read_ledger(store)
        except StoreError as e:
            errors.append(f"ledger: {e}")
        try:
            pointer = store.read_pointer()
        except StoreError as e:
            errors.append(f"latest.json: {e}")
        try:
            heartbeat = store.read_heartbeat()
        except StoreError as e:
            errors.append(f"heartbeat.json: {e}")
    instances: list[Instance] = []
    for name in run.providers:
        provider = providers.get(name)
        if isinstance(provider, Exception) or provider is None:
            errors.append(f"{name}: {provider or 'not configured'}")
            continue
        try:
            instances += [i for i in provider.list_instances(run.name) if i.run == run.name]
        except Exception as e:  # any failure to list means we do not know what runs
            errors.append(f"{name}: listing instances failed: {e}")
    obs = Observation(
        run=run.name,
        pointer=pointer,
        heartbeat=heartbeat,
        instances=tuple(instances),
        ledger=ledger,
        errors=tuple(errors),
    )
    current = current_instances(obs)
    restartable = bool(current) and bool(
        getattr(providers.get(current[0].provider), "can_restart", False)
    )
    return obs.model_copy(update={"restartable": restartable})
