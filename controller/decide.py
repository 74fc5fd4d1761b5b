"""decide: (run config, observation, now) → plan. Pure: no I/O, no clock.

The plan is the whole outcome of a tick: the actions in order (terminations before a launch,
so there are never two instances at once) and the ledger to write afterwards.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from respawn.controller.classify import (
    breaker_halt,
    classify,
    current_instances,
    fencing_generation,
)
from respawn.controller.config import Budget, RunConfig
from respawn.controller.cost import rented, spend_in_window
from respawn.controller.model import (
    MAX_LEDGER_EVENTS,
    MAX_LEDGER_LAUNCHES,
    Action,
    Alert,
    EndReason,
    Halt,
    Health,
    LaunchRecord,
    Ledger,
    LedgerEvent,
    Notify,
    Observation,
    Plan,
    ProgressMark,
    Provision,
    RepairPointer,
    RestartInPlace,
    RestartRecord,
    Rollback,
    RollbackRecord,
    Terminate,
    Verdict,
    describe,
    repair_line,
)
from respawn.controller.notify import notification
from respawn.controller.wandb_health import primary_run_id, rollback_target, rollbacks_in_window
from respawn.provisioning.base import Instance, InstanceState

DAY = timedelta(days=1)


def _terminate(i: Instance, reason: str) -> Terminate:
    return Terminate(provider=i.provider, instance_id=i.id, name=i.name, reason=reason)


def _billing(obs: Observation) -> list[Instance]:
    # One row per instance: a listing that repeats a row must not yield two terminations.
    seen: set[tuple[str, str]] = set()
    out = []
    for i in obs.instances:
        if i.state != InstanceState.TERMINATED and (i.provider, i.id) not in seen:
            seen.add((i.provider, i.id))
            out.append(i)
    return out


def estimated_spend(ledger: Ledger, now: datetime) -> float:
    """$ in the last 24 h: the same figure `respawn status` and `history` show (cost.py)."""
    return spend_in_window(ledger.launches, now, DAY)


def budget_trip(
    budget: Budget, ledger: Ledger, now: datetime, since: datetime | None = None
) -> str | None:
    # Launches that failed without an instance do not count: a spot market with no capacity
    # for an hour is retried every tick, not mistaken for a crash loop. A claim with no
    # outcome recorded counts (`rented`). Launches before a person's `resume` (`since`) do
    # not count either: resuming must allow a launch.
    recent = [
        lr
        for lr in ledger.launches
        if now - lr.at < DAY and rented(lr) and (since is None or lr.at > since)
    ]
    if len(recent) >= budget.max_launches_per_day:
        return (
            f"crash-loop breaker: {len(recent)} launches in 24h "
            f"(budget.max_launches_per_day={budget.max_launches_per_day})"
        )
    spend = estimated_spend(ledger, now)
    if spend >= budget.max_spend_per_day:
        return (
            f"budget cap: ~${spend:.2f} spent in 24h "
            f"(budget.max_spend_per_day={budget.max_spend_per_day:g})"
        )
    return None


def _strays(obs: Observation) -> list[Terminate]:
    """Everything billing except the one live instance of the current generation that
    `winner_order` keeps (the same rule that settles a launch race)."""
    keep = current_instances(obs)[:1]
    kept = {(i.provider, i.id) for i in keep}
    out = []
    for i in _billing(obs):
        if (i.provider, i.id) in kept:
            continue
        if i.generation != obs.ledger.generation:
            why = f"older generation g{i.generation} (current g{obs.ledger.generation})"
        elif not i.live:
            why = f"{i.state.value} instance of the current generation"
        else:
            why = f"duplicate of {keep[0].provider}:{keep[0].id}" if keep else "duplicate"
        out.append(_terminate(i, why))
    return out


def _adopt(ledger: Ledger, current: list[Instance]) -> Ledger:
    """A tick that died between its create and its ledger write left a launch with no
    instance: record the instance that is running, so the budget counts it."""
    launch = ledger.launch_of(ledger.generation)
    if not current or launch is None or launch.instance_id is not None:
        return ledger
    inst = current[0]
    filled = launch.model_copy(
        update={
            "provider": inst.provider,
            "instance_id": inst.id,
            "price_per_hour": inst.price_per_hour or 0.0,
        }
    )
    launches = tuple(filled if lr is launch else lr for lr in ledger.launches)
    return ledger.model_copy(update={"launches": launches})


def _host_keys(obs: Observation) -> tuple[str, ...]:
    """The SSH host keys the current generation's pod published (the only ones trusted)."""
    hb = obs.heartbeat
    return hb.ssh_host_keys if hb is not None and hb.generation == obs.ledger.generation else ()


def _replace(
    run: RunConfig, obs: Observation, ledger: Ledger, now: datetime, why: str
) -> tuple[list[Action], Ledger]:
    actions: list[Action] = [_terminate(i, f"replacing: {why}") for i in _billing(obs)]
    resumed = obs.halt.at if obs.halt is not None and not obs.halt.halted else None
    trip = budget_trip(run.budget, ledger, now, since=resumed)
    if trip is not None:
        actions += [Halt(reason=trip), Alert(message=f"{run.name} halted: {trip}")]
        return actions, ledger.model_copy(update={"halted": trip, "halted_at": now})
    # Above every fencing source: a pod refuses to start below the newest generation seen.
    gen = max(ledger.generation, fencing_generation(obs)[0]) + 1
    resume = obs.pointer.step if obs.pointer is not None else None
    # The pod is told which W&B run to resume, and the ledger remembers it: the W&B history
    # stays one run across generations, and the controller knows which run to watch.
    wandb_id = primary_run_id(run, ledger)
    actions.append(Provision(generation=gen, resume_step=resume, reason=why, wandb_run_id=wandb_id))
    # The claim is saved before the create and counts as a launch at the run's ceiling price
    # until its outcome is recorded (`cost.py`): a tick that loses the run mid-launch cannot
    # leave a rented instance out of the breakers.
    claim = LaunchRecord(
        generation=gen,
        at=now,
        resume_step=resume,
        price_per_hour=run.resources.max_price_per_hour,
    )
    launches = (*ledger.launches, claim)
    return actions, ledger.model_copy(
        update={
            "generation": gen,
            "launches": launches[-MAX_LEDGER_LAUNCHES:],
            "wandb_run_id": wandb_id,
            # Progress is judged from the step the new generation resumes at: the steps the
            # old one reached past its last checkpoint are recomputed, and that is progress
            # (kept as the high-water mark, a resumed trainer looked stalled until it passed
            # the old step, however many steps were lost).
            "progress": ProgressMark(step=resume, at=now) if resume is not None else None,
        }
    )


def _rollback(
    run: RunConfig, obs: Observation, ledger: Ledger, verdict: Verdict, now: datetime
) -> tuple[list[Action], Ledger]:
    """The circuit breaker: move the pointer to the newest step published before the streak
    began, stop the instance, and resume from there; too many rollbacks halt the run."""
    rule = run.health.degenerate
    assert rule is not None and verdict.degenerate_since is not None
    stop = [_terminate(i, f"degenerate: {verdict.reason}") for i in _billing(obs)]

    def halt(why: str) -> tuple[list[Action], Ledger]:
        actions: list[Action] = [
            *stop,
            Halt(reason=why),
            Alert(message=f"{run.name} halted: {why}"),
        ]
        # halted_at: a `respawn resume` given before this halt must not undo it.
        return actions, ledger.model_copy(update={"halted": why, "halted_at": now})

    if obs.published_steps is None:
        return [Alert(message=f"{run.name} is degenerate; published steps unknown")], ledger
    recent = rollbacks_in_window(rule, ledger, now)
    if recent >= rule.max_rollbacks:
        return halt(
            f"degenerate again after {recent} rollbacks within {rule.window} "
            f"(health.degenerate.max_rollbacks={rule.max_rollbacks}): {verdict.reason}"
        )
    current = obs.pointer.step if obs.pointer is not None else None
    target = rollback_target(obs.published_steps, verdict.degenerate_since, current)
    if target is None:
        return halt(
            f"degenerate, and no checkpoint was published before the streak began at W&B step "
            f"{verdict.degenerate_since}: {verdict.reason}"
        )
    record = RollbackRecord(
        at=now,
        from_step=current,
        to_step=target,
        wandb_step=verdict.wandb_step,
        reason=verdict.reason,
    )
    pointer = obs.pointer.model_copy(update={"step": target}) if obs.pointer else None
    actions, after = _replace(
        run, obs.model_copy(update={"pointer": pointer}), ledger, now, verdict.reason
    )
    provision = next((a for a in actions if isinstance(a, Provision)), None)
    if provision is None:  # the budget halted it: the pointer stays, nothing is rolled back
        return actions, after
    after = after.model_copy(
        update={
            "rollbacks": (*after.rollbacks, record)[-MAX_LEDGER_EVENTS:],
            # Progress restarts from the rolled-back step, or the resumed pod looks stalled.
            "progress": ProgressMark(step=target, at=now),
        }
    )
    # The rollback comes first: its pointer carries the new generation, which fences the old
    # pod, so the steps it publishes while it shuts down (the streak's) are refused.
    rollback = Rollback(to_step=target, generation=provision.generation, reason=verdict.reason)
    return [rollback, *actions], after


def decide(run: RunConfig, obs: Observation, now: datetime) -> Plan:
    verdict = classify(run, obs, now)
    ledger = obs.ledger.model_copy(
        update={
            "progress": verdict.progress,
            "heartbeat_seen": verdict.heartbeat_seen,
            "doubts": verdict.doubts,
        }
    )
    if ledger.halted is not None and breaker_halt(obs) is None:
        ledger = ledger.model_copy(update={"halted": None, "halted_at": None})
    actions: list[Action] = []
    match verdict.health:
        case Health.UNKNOWN:
            # Nothing destructive on partial knowledge (skypilot#10155): alert and wait.
            # Only what disagreed is remembered: the heartbeat seen and for how many ticks.
            ledger = obs.ledger.model_copy(
                update={"doubts": verdict.doubts, "heartbeat_seen": verdict.heartbeat_seen}
            )
            actions = [Alert(message=f"{run.name}: {verdict.reason}")]
        case Health.STOPPED:
            # A person halted the run: make sure nothing of it bills (a launch that raced
            # `respawn terminate` included), and say nothing more.
            actions = [_terminate(i, "stopped by hand") for i in _billing(obs)]
        case Health.HALTED:
            actions = [Alert(message=f"{run.name} is halted: {verdict.reason}")]
        case Health.FINISHED:
            actions = [_terminate(i, "run finished") for i in _billing(obs)]
            if ledger.finished_at is None:
                ledger = ledger.model_copy(
                    update={"finished_at": now, "finished_target": run.target_step}
                )
        case Health.HEALTHY | Health.STARTING:
            actions = list(_strays(obs))
            ledger = _adopt(ledger, current_instances(obs))
        case Health.DEAD if verdict.fatal:
            # Relaunching would fail the same way until a person fixes the cause.
            actions = [_terminate(i, f"halting: {verdict.reason}") for i in _billing(obs)]
            actions += [
                Halt(reason=verdict.reason),
                Alert(message=f"{run.name} halted: {verdict.reason}"),
            ]
            ledger = ledger.model_copy(update={"halted": verdict.reason, "halted_at": now})
        case Health.DEAD | Health.NEW:
            # A finished run that is dead again was extended (target_step raised): un-finish it.
            ledger = ledger.model_copy(update={"finished_at": None, "finished_target": None})
            actions, ledger = _replace(run, obs, ledger, now, verdict.reason)
        case Health.STALLED:
            current = current_instances(obs)
            gen = ledger.generation
            tried = any(r.generation == gen for r in ledger.restarts)
            if current and obs.shell_access and not tried:
                target = current[0]
                actions = [*_strays(obs)]
                actions.append(
                    RestartInPlace(
                        provider=target.provider,
                        instance_id=target.id,
                        reason=verdict.reason,
                        host_keys=_host_keys(obs),
                    )
                )
                record = RestartRecord(
                    generation=gen, at=now, provider=target.provider, instance_id=target.id
                )
                ledger = ledger.model_copy(update={"restarts": (*ledger.restarts, record)[-10:]})
            else:
                why = verdict.reason + ("; restart in place already tried" if tried else "")
                actions, ledger = _replace(run, obs, ledger, now, why)
        case Health.DEGENERATE:
            actions, ledger = _rollback(run, obs, ledger, verdict, now)
    if obs.pointer_lost is not None and verdict.health not in (Health.UNKNOWN, Health.STOPPED):
        # Before any launch: the new pod resumes from the rebuilt pointer.
        gen = max(obs.ledger.generation, fencing_generation(obs)[0])
        actions = [
            RepairPointer(generation=gen, reason=obs.pointer_lost),
            Alert(message=f"{run.name}: {obs.pointer_lost}"),
            *actions,
        ]
    if verdict.health is not Health.UNKNOWN:
        ledger = _track_generation(ledger, obs, verdict, actions, now)
    if verdict.early_exit_step is not None:
        ledger = ledger.model_copy(update={"early_exit_step": verdict.early_exit_step})
    if not verdict.ledger_trusted:
        # Never overwrite a ledger that could not be read or lost its memory: the plan
        # carries it unchanged and act does not write it (nor can it remember a notification).
        return Plan(verdict=verdict, actions=tuple(actions), ledger=obs.ledger)
    told, ledger = _notify(run, obs, verdict, actions, ledger)
    ledger = _with_event(ledger, verdict, actions, now)
    return Plan(
        verdict=verdict,
        actions=tuple(actions),
        ledger=_with_repairs(ledger, obs, verdict, now),
        notify=told,
    )


def _end_reason(obs: Observation, verdict: Verdict, launched_at: datetime) -> EndReason:
    order = obs.halt
    if (
        verdict.health == Health.DEAD
        and not verdict.fatal
        and order is not None
        and not order.halted
        and order.stopped_at is not None
        and order.stopped_at >= launched_at
    ):
        return "stopped"  # stopped and resumed by hand before any tick saw it stopped
    match verdict.health:
        case Health.DEGENERATE:
            return "rolled back"
        case Health.STALLED:
            return "stalled"
        case Health.FINISHED:
            return "finished"
        case Health.STOPPED:
            return "stopped"
        case Health.DEAD if verdict.fatal:
            return "halted"
        case Health.DEAD:
            # The cloud took it (gone from the listing, or stopped: Vast's outbid) rather
            # than the pod falling silent or failing on a machine that still runs.
            gen = obs.ledger.generation
            listed_live = any(i.generation == gen and i.live for i in obs.instances)
            return "dead" if listed_live else "preempted"
    return "replaced"


def _track_generation(
    ledger: Ledger, obs: Observation, verdict: Verdict, actions: list[Action], now: datetime
) -> Ledger:
    """Keep the observed generation's record current for `respawn history`: the newest step
    it reached and when, and, once this plan ends it, when and why."""
    gen = obs.ledger.generation
    launch = ledger.launch_of(gen)
    if launch is None or launch.ended_at is not None:
        return ledger
    update: dict[str, object] = {}
    if launch.listed_at is None and current_instances(obs):
        update["listed_at"] = now
    step = verdict.step
    if step is not None and (launch.last_step is None or step > launch.last_step):
        update |= {"last_step": step, "last_progress_at": now}
        if launch.first_progress_at is None and step > (launch.resume_step or -1):
            update["first_progress_at"] = now
    ends = any(isinstance(a, Provision | Halt) for a in actions) or verdict.health in (
        Health.FINISHED,
        Health.STOPPED,
    )
    if ends:
        update |= {
            "ended_at": now,
            "end_reason": _end_reason(obs, verdict, launch.at),
            # Whole: cut only after the ledger is redacted (`model.Detail`).
            "end_detail": verdict.reason,
        }
    if not update:
        return ledger
    changed = launch.model_copy(update=update)
    return ledger.model_copy(
        update={"launches": tuple(changed if lr is launch else lr for lr in ledger.launches)}
    )


def _with_repairs(ledger: Ledger, obs: Observation, verdict: Verdict, now: datetime) -> Ledger:
    """A store repair a pod recorded (a quarantined step, a rebuilt pointer) becomes a ledger
    event once: the ledger remembers the newest record it noted."""
    seen = obs.store_repairs
    if seen.newest == ledger.repairs_seen:
        return ledger
    events = [
        LedgerEvent(
            at=now,
            health=verdict.health,
            reason="store repair: " + repair_line(e.kind, e.step, e.generation, e.writer, e.detail),
        )
        for e in seen.new
    ]
    if seen.unread:
        events.append(
            LedgerEvent(
                at=now,
                health=verdict.health,
                reason=f"store repair: {seen.unread} more repair records not read",
            )
        )
    return ledger.model_copy(
        update={
            "events": (*ledger.events, *events)[-MAX_LEDGER_EVENTS:],
            "repairs_seen": seen.newest,
        }
    )


def _notify(
    run: RunConfig, obs: Observation, verdict: Verdict, actions: list[Action], ledger: Ledger
) -> tuple[Notify | None, Ledger]:
    """Tell a person once per change of state (the ledger remembers what was told)."""
    halt = next((a for a in actions if isinstance(a, Halt)), None)
    if halt is not None:
        told = Notify(level="error", message=f"{run.name} halted: {halt.reason}")
        return told, ledger.model_copy(update={"notified": Health.HALTED})
    change = notification(run.name, verdict, obs.ledger)
    if change is None:
        return None, ledger
    return change, ledger.model_copy(update={"notified": verdict.health})


def _with_event(ledger: Ledger, verdict: Verdict, actions: list[Action], now: datetime) -> Ledger:
    last = ledger.events[-1] if ledger.events else None
    if not actions and last is not None and last.health == verdict.health:
        return ledger
    event = LedgerEvent(
        at=now,
        health=verdict.health,
        reason=verdict.reason,
        actions=tuple(describe(a) for a in actions),
    )
    return ledger.model_copy(update={"events": (*ledger.events, event)[-MAX_LEDGER_EVENTS:]})
