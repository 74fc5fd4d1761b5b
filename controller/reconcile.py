"""One controller tick: observe → classify → decide → act, for every run, runs in parallel.

Every provider's listing starts as the tick starts, once per provider, shared by all runs'
observations (a fleet of runs on one account would otherwise list it once per run and meet
rate limits). Only `observe` sees these listings: `act` lists afresh, since settling a launch
race needs the live answer.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from respawn.controller.act import act
from respawn.controller.config import FleetConfig, RunConfig
from respawn.controller.decide import decide
from respawn.controller.lease import Clock, Lease
from respawn.controller.model import ActionResult, Alert, RunReport
from respawn.controller.observe import Listings, observe
from respawn.controller.providers import open_providers
from respawn.controller.stores import open_fleet_backend
from respawn.provisioning.base import Instance, Provider
from respawn.store.backend import Backend, StoreError
from respawn.store.schema import utcnow
from respawn.store.store import CheckpointStore

MAX_PARALLEL_RUNS = 32


class Mode(StrEnum):
    ACT = "act"  # reconcile: carry out the plan
    DRY_RUN = "dry-run"  # reconcile --dry-run: plan, change nothing
    OBSERVE = "observe"  # status: observe and classify only


class NoLease(NamedTuple):
    why: str
    failed: bool  # the store failed (a person should look), rather than another tick holds it


def take_lease(store: CheckpointStore | Exception, clock: Clock) -> Lease | NoLease | None:
    """The run's tick lease, or why this tick may not act on the run. None with no store at
    all: observe reports the store's failure and act can change nothing."""
    if isinstance(store, Exception):
        return None
    lease = Lease(store, clock)
    try:
        holder = lease.acquire()
    except StoreError as e:
        return NoLease(f"the tick lease could not be taken ({e})", failed=True)
    if holder is not None:
        return NoLease(f"another tick is acting on this run: {holder}", failed=False)
    return lease


def tick_run(
    fleet: FleetConfig,
    run: RunConfig,
    store: CheckpointStore | Exception,
    providers: Mapping[str, Provider | Exception],
    listings: Listings,
    now: datetime,
    mode: Mode,
    lease: Lease | NoLease | None = None,
) -> RunReport:
    """`lease`: the run's tick lease; without it (`NoLease`) the tick only looks, and says
    why."""
    skipped = lease.why if isinstance(lease, NoLease) else None
    if isinstance(lease, NoLease):
        mode = Mode.OBSERVE
    try:
        obs = observe(run, store, providers, listings)
        plan = decide(run, obs, now)
        results: tuple[ActionResult, ...] = ()
        if mode is Mode.ACT:
            usable = None if isinstance(store, Exception) else store
            held = lease if isinstance(lease, Lease) else None
            results = tuple(act(plan, run, fleet, usable, providers, obs.ledger, lease=held))
        elif isinstance(lease, NoLease):
            reason = f"{plan.verdict.reason} ({lease.why}; this tick changed nothing)"
            verdict = plan.verdict.model_copy(update={"reason": reason})
            plan = plan.model_copy(update={"actions": (), "verdict": verdict})
            if lease.failed:
                alert = Alert(message=f"{run.name}: {lease.why}")
                results = (ActionResult(action=alert, ok=False, detail=lease.why),)
    finally:
        if isinstance(lease, Lease):
            with contextlib.suppress(StoreError):  # it expires on its own
                lease.release()
    return RunReport(
        run=run.name,
        observation=obs,
        plan=plan,
        results=results,
        dry_run=mode is not Mode.ACT,
        skipped=skipped,
    )


def tick(
    fleet: FleetConfig,
    only: str | None = None,
    mode: Mode = Mode.ACT,
    now: datetime | None = None,
) -> list[RunReport]:
    runs = [fleet.run(only)] if only else list(fleet.runs)
    providers = open_providers(fleet, {p for r in runs for p in r.providers})
    backend: Backend | Exception
    try:
        backend = open_fleet_backend(fleet.store)
    except StoreError as e:
        backend = e
    stores: list[CheckpointStore | Exception] = [
        backend if isinstance(backend, Exception) else CheckpointStore(backend, r.name)
        for r in runs
    ]
    when = now or utcnow()
    start = time.monotonic()

    def clock() -> datetime:  # the tick's time, moving on as the tick runs
        return when + timedelta(seconds=time.monotonic() - start)

    workers = max(1, min(MAX_PARALLEL_RUNS, len(runs) + len(providers)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Leases first, listings after: a listing started before another tick's launch
        # finished would show that launch's generation with no instance, i.e. dead.
        leases: list[Lease | NoLease | None] = [None] * len(runs)
        if mode is Mode.ACT:
            leases = list(pool.map(lambda st: take_lease(st, clock), stores))
        listings: dict[str, Future[list[Instance]]] = {
            name: pool.submit(p.list_all)
            for name, p in providers.items()
            if not isinstance(p, Exception)
        }

        def one(i: int) -> RunReport:
            return tick_run(fleet, runs[i], stores[i], providers, listings, when, mode, leases[i])

        return list(pool.map(one, range(len(runs))))
