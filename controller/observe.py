"""observe: everything one tick needs to know about a run. Every failure becomes an entry in
`errors` (so the run is classified `unknown`), never a guess such as "no instances"."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future

from respawn.controller.classify import current_instances, merge_rows
from respawn.controller.config import RunConfig
from respawn.controller.ledger import find_ledger, read_halt
from respawn.controller.model import HaltOrder, Ledger, LedgerState, Observation
from respawn.provisioning.base import Instance, Provider, can_restart
from respawn.store.store import CheckpointStore, StoreError

Listings = Mapping[str, "Future[list[Instance]]"]


def observe(
    run: RunConfig,
    store: CheckpointStore | Exception,
    providers: Mapping[str, Provider | Exception],
    listings: Listings | None = None,
) -> Observation:
    """`listings`: each provider's whole listing for this tick, already under way; without
    it, the run's providers are listed here."""
    errors: list[str] = []
    ledger, pointer, heartbeat = Ledger(run=run.name), None, None
    ledger_state: LedgerState = "unreadable"
    halt: HaltOrder | None = None
    if isinstance(store, Exception):
        errors.append(f"checkpoint store: {store}")
    else:
        try:
            found = find_ledger(store)
            ledger, ledger_state = found or ledger, "ok" if found is not None else "missing"
        except StoreError as e:
            errors.append(f"ledger: {e} (nothing is overwritten; `respawn ledger repair`)")
        try:
            halt = read_halt(store)
        except StoreError as e:
            errors.append(f"halt order: {e}")
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
            pending = (listings or {}).get(name)
            every = pending.result() if pending is not None else provider.list_all()
            instances += [i for i in every if i.run == run.name]
        except Exception as e:  # any failure to list means we do not know what runs
            errors.append(f"{name}: listing instances failed: {e}")
    obs = Observation(
        run=run.name,
        pointer=pointer,
        heartbeat=heartbeat,
        instances=merge_rows(instances),
        ledger=ledger,
        ledger_state=ledger_state,
        halt=halt,
        errors=tuple(errors),
    )
    current = current_instances(obs)
    shell_access = bool(current) and can_restart(providers.get(current[0].provider))
    return obs.model_copy(update={"shell_access": shell_access})
