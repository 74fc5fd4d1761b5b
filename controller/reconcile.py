"""One controller tick: observe → classify → decide → act, for every run, runs in parallel.

Every provider's listing starts as the tick starts, once per provider, shared by all runs'
observations (a fleet of runs on one account would otherwise list it once per run and meet
rate limits). Only `observe` sees these listings: `act` lists afresh, since settling a launch
race needs the live answer.
"""

from __future__ import annotations

import contextlib
import logging
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
from respawn.controller.model import ActionResult, Alert, Notify, RunReport
from respawn.controller.observe import Listings, observe
from respawn.controller.providers import open_providers
from respawn.controller.stores import open_fleet_backend, unmade_file_store
from respawn.controller.wandb_signal import WandbReader
from respawn.provisioning.base import Instance, Provider
from respawn.store.backend import Backend, StoreError, StoreMissingError
from respawn.store.schema import TickRecord, utcnow
from respawn.store.store import CheckpointStore

MAX_PARALLEL_RUNS = 32
log = logging.getLogger("respawn.controller")


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


def _open_store(fleet: FleetConfig, mode: Mode) -> Backend | Exception:
    """Only an acting tick creates a file store's directory: `status` and a dry run before
    the first launch see an empty store, and leave nothing behind."""
    try:
        return open_fleet_backend(fleet.store, create=mode is Mode.ACT)
    except StoreMissingError:
        return unmade_file_store(fleet.store)
    except StoreError as e:
        return e


def tick_run(
    fleet: FleetConfig,
    run: RunConfig,
    store: CheckpointStore | Exception,
    providers: Mapping[str, Provider | Exception],
    listings: Listings,
    now: datetime,
    mode: Mode,
    lease: Lease | NoLease | None = None,
    wandb: WandbReader | None = None,
) -> RunReport:
    """`lease`: the run's tick lease; without it (`NoLease`) the tick only looks, and says
    why. `wandb`: the tick's W&B session (one for every run)."""
    skipped = lease.why if isinstance(lease, NoLease) else None
    if isinstance(lease, NoLease):
        mode = Mode.OBSERVE
    notified: ActionResult | None = None
    try:
        # The last tick's record is one more independent read: alongside observe's.
        with ThreadPoolExecutor(max_workers=1) as side:
            previous_f = side.submit(_previous_tick, store)
            obs = observe(run, store, providers, listings, wandb)
        previous = previous_f.result()
        plan = decide(run, obs, now)
        results: tuple[ActionResult, ...] = ()
        if mode is Mode.ACT:
            usable = None if isinstance(store, Exception) else store
            held = lease if isinstance(lease, Lease) else None
            results = tuple(act(plan, run, fleet, usable, providers, obs.ledger, lease=held))
            if usable is not None:
                _record_tick(usable, run.name, now, previous)
            # act reports the notification last; the report keeps it apart from the actions.
            if plan.notify is not None and results and isinstance(results[-1].action, Notify):
                results, notified = results[:-1], results[-1]
        elif isinstance(lease, NoLease):
            reason = f"{plan.verdict.reason} ({lease.why}; this tick changed nothing)"
            verdict = plan.verdict.model_copy(update={"reason": reason})
            plan = plan.model_copy(update={"actions": (), "verdict": verdict, "notify": None})
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
        previous_tick=previous,
        now=now,
        notified=notified,
    )


def _previous_tick(store: CheckpointStore | Exception) -> datetime | None:
    if isinstance(store, Exception):
        return None
    try:
        record = store.read_tick()
    except StoreError as e:
        log.warning("%s: cannot read the last tick time: %s", store.run, e)
        return None
    return record.at if record else None


def _record_tick(
    store: CheckpointStore, run: str, now: datetime, previous: datetime | None
) -> None:
    """Only acting ticks count: status and dry runs are not the schedule."""
    try:
        store.write_tick(TickRecord(run=run, at=now, previous_at=previous))
    except StoreError as e:  # the tick itself happened; only the lag display suffers
        log.warning("%s: cannot record the tick time: %s", run, e)


def tick(
    fleet: FleetConfig,
    only: str | None = None,
    mode: Mode = Mode.ACT,
    now: datetime | None = None,
) -> list[RunReport]:
    runs = [fleet.run(only)] if only else list(fleet.runs)
    providers = open_providers(fleet, {p for r in runs for p in r.providers})
    backend = _open_store(fleet, mode)
    stores: list[CheckpointStore | Exception] = [
        backend if isinstance(backend, Exception) else CheckpointStore(backend, r.name)
        for r in runs
    ]
    when = now or utcnow()
    start = time.monotonic()

    def clock() -> datetime:  # the tick's time, moving on as the tick runs
        return when + timedelta(seconds=time.monotonic() - start)

    wandb = WandbReader()  # one W&B session per tick, shared by every run
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
            return tick_run(
                fleet, runs[i], stores[i], providers, listings, when, mode, leases[i], wandb
            )

        return list(pool.map(one, range(len(runs))))
