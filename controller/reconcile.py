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
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple, TypeVar

from respawn.controller.act import act
from respawn.controller.config import FleetConfig, RunConfig
from respawn.controller.decide import decide
from respawn.controller.lease import Clock, Lease
from respawn.controller.model import (
    ActionResult,
    Alert,
    Health,
    Ledger,
    Notify,
    Observation,
    Plan,
    RunReport,
    Verdict,
)
from respawn.controller.observe import Listings, observe
from respawn.controller.providers import open_providers
from respawn.controller.redact import LOG_LIMIT, one_line
from respawn.controller.stores import open_fleet_backend, unmade_file_store
from respawn.controller.wandb_signal import WandbReader
from respawn.provisioning.base import Instance, Provider
from respawn.store.backend import Backend, StoreError, StoreMissingError
from respawn.store.schema import TickRecord, utcnow
from respawn.store.store import CheckpointStore

MAX_PARALLEL_RUNS = 32
log = logging.getLogger("respawn.controller")
_T = TypeVar("_T")


class Mode(StrEnum):
    ACT = "act"  # reconcile: carry out the plan
    DRY_RUN = "dry-run"  # reconcile --dry-run: plan, change nothing
    OBSERVE = "observe"  # status: observe and classify only


class NoLease(NamedTuple):
    why: str
    failed: bool  # the store failed (a person should look), rather than another tick holds it
    # Lease documents found and taken for nothing (a pod's, a torn one): named in the report.
    ignored: tuple[str, ...] = ()


class Broken(NamedTuple):
    """What escaped one run's tick: that run is `unknown`, the others go on."""

    stage: str
    error: Exception


def take_lease(store: CheckpointStore | Exception, clock: Clock) -> Lease | NoLease | None:
    """The run's tick lease, or why this tick may not act on the run. None with no store at
    all: observe reports the store's failure and act can change nothing."""
    if isinstance(store, Exception):
        return None
    lease = Lease(store, clock)
    try:
        holder = lease.acquire()
    except StoreError as e:
        return NoLease(f"the tick lease could not be taken ({e})", True, tuple(lease.ignored))
    if holder is not None:
        return NoLease(holder, failed=False, ignored=tuple(lease.ignored))
    return lease


def peek_lease(store: CheckpointStore | Exception, clock: Clock) -> NoLease | None:
    """For a tick that only looks (`status`): another tick's lease, if one holds the run."""
    if isinstance(store, Exception):
        return None
    lease = Lease(store, clock)
    try:
        holder = lease.peek()
    except StoreError:  # observe reads the store too, and reports what fails
        return None
    return None if holder is None else NoLease(holder, False, tuple(lease.ignored))


def _guarded(stage: str, fn: Callable[[], _T]) -> _T | Broken:
    try:
        return fn()
    except Exception as e:
        return Broken(stage, e)


def broken_report(run: RunConfig, broken: Broken, now: datetime, mode: Mode) -> RunReport:
    """The report of a run whose tick raised: `unknown`, the error named, nothing planned."""
    e = broken.error
    log.error("%s: the tick failed %s: %s: %s", run.name, broken.stage, type(e).__name__, e)
    log.debug("%s: traceback", run.name, exc_info=e)
    reason = (
        # Cut only far out: every sink redacts before it cuts to its own length, and a
        # secret cut here first would no longer be recognised there.
        f"this tick failed {broken.stage}: {type(e).__name__}: {one_line(str(e), LOG_LIMIT)} "
        "(the other runs were reconciled; `respawn -v status` shows the traceback)"
    )
    ledger = Ledger(run=run.name)
    verdict = Verdict(health=Health.UNKNOWN, reason=reason, ledger_trusted=False)
    return RunReport(
        run=run.name,
        observation=Observation(run=run.name, ledger=ledger, errors=(reason,)),
        plan=Plan(
            verdict=verdict, actions=(Alert(message=f"{run.name}: {reason}"),), ledger=ledger
        ),
        dry_run=mode is not Mode.ACT,
        now=now,
    )


def _open_store(fleet: FleetConfig, mode: Mode) -> Backend | Exception:
    """Only an acting tick creates a file store's directory: `status` and a dry run before
    the first launch see an empty store, and leave nothing behind."""
    try:
        try:
            return open_fleet_backend(fleet.store, create=mode is Mode.ACT)
        except StoreMissingError:
            return unmade_file_store(fleet.store)
    except StoreError as e:  # the missing ledger secret too, for a store not made yet
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
    if isinstance(lease, NoLease) and mode is Mode.ACT:
        mode = Mode.OBSERVE
    notified: ActionResult | None = None
    try:
        # The last tick's record is one more independent read: alongside observe's.
        with ThreadPoolExecutor(max_workers=1) as side:
            previous_f = side.submit(_previous_tick, store)
            obs = observe(run, store, providers, listings, wandb)
        previous, unread = previous_f.result()
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
            # The lease first: what the run looks like meanwhile (a heartbeat that "still
            # changes", doubts that never advance) is not why nothing happens.
            reason = f"{lease.why}; this tick changed nothing (it sees: {plan.verdict.reason})"
            verdict = plan.verdict.model_copy(update={"reason": reason})
            plan = plan.model_copy(update={"actions": (), "verdict": verdict, "notify": None})
            if lease.failed:
                alert = Alert(message=f"{run.name}: {lease.why}")
                results = (ActionResult(action=alert, ok=False, detail=lease.why),)
    finally:
        if isinstance(lease, Lease):
            with contextlib.suppress(StoreError):  # it expires on its own
                lease.release()
    # Documents that decide nothing and were taken for nothing: named, never a stop.
    ignored = (*(lease.ignored if isinstance(lease, Lease | NoLease) else ()), *unread)
    if ignored:
        obs = obs.model_copy(update={"warnings": (*obs.warnings, *ignored)})
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


def _previous_tick(store: CheckpointStore | Exception) -> tuple[datetime | None, tuple[str, ...]]:
    """The last tick's time, and why it is unknown where the record cannot be read."""
    if isinstance(store, Exception):
        return None, ()
    try:
        record = store.read_tick()
    except StoreError as e:  # the lag display suffers; an acting tick writes a new record
        log.warning("%s: cannot read the last tick time: %s", store.run, e)
        return None, (f"the last tick's record cannot be read ({e}); an acting tick rewrites it",)
    return (record.at if record else None), ()


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
    for store in stores:
        if isinstance(store, CheckpointStore):
            store.move_legacy = mode is Mode.ACT
    when = now or utcnow()
    start = time.monotonic()

    def clock() -> datetime:  # the tick's time, moving on as the tick runs
        return when + timedelta(seconds=time.monotonic() - start)

    wandb = WandbReader()  # one W&B session per tick, shared by every run
    workers = max(1, min(MAX_PARALLEL_RUNS, len(runs) + len(providers)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Leases first, listings after: a listing started before another tick's launch
        # finished would show that launch's generation with no instance, i.e. dead.
        def lease_of(store: CheckpointStore | Exception) -> Lease | NoLease | Broken | None:
            if mode is Mode.ACT:
                return _guarded("taking the tick lease", lambda: take_lease(store, clock))
            return _guarded("reading the tick lease", lambda: peek_lease(store, clock))

        leases = list(pool.map(lease_of, stores))
        listings: dict[str, Future[list[Instance]]] = {
            name: pool.submit(p.list_all)
            for name, p in providers.items()
            if not isinstance(p, Exception)
        }

        def one(i: int) -> RunReport:
            lease = leases[i]
            if isinstance(lease, Broken):
                return broken_report(runs[i], lease, when, mode)
            done = _guarded(
                "on this run",
                lambda: tick_run(
                    fleet, runs[i], stores[i], providers, listings, when, mode, lease, wandb
                ),
            )
            return broken_report(runs[i], done, when, mode) if isinstance(done, Broken) else done

        return list(pool.map(one, range(len(runs))))
