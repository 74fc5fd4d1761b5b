"""classify and decide as tables: pure functions, no fakes needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from respawn.controller.classify import classify, heartbeat_digest
from respawn.controller.config import parse_config
from respawn.controller.decide import decide
from respawn.controller.model import (
    Alert,
    Halt,
    HaltOrder,
    Health,
    HeartbeatMark,
    LaunchRecord,
    Ledger,
    Observation,
    ProgressMark,
    Provision,
    RestartInPlace,
    RestartRecord,
    Terminate,
)
from respawn.provisioning.base import Instance, InstanceState
from respawn.store.schema import Heartbeat, LatestPointer

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)

RUN = parse_config(
    """
store: {url: "file:///tmp/s"}
providers: {local: {state_dir: /tmp/l}}
runs:
  - name: r
    target_step: 1000
    health: {startup_grace: 20m, stall_after: 30m, dead_after: 15m}
    pod:
      command: "train --resume {resume_step}"
      checkpoints: {sources: [{path: "s_{step}", marker: OK}]}
    resources: {max_price_per_hour: 5}
    providers: [local]
    budget: {max_launches_per_day: 3, max_spend_per_day: 100}
"""
).runs[0]


def inst(
    gen: int,
    state: InstanceState = InstanceState.RUNNING,
    iid: str | None = None,
    age: timedelta = 30 * M,
) -> Instance:
    return Instance(
        provider="local",
        id=iid or f"i{gen}",
        name=f"respawn-r-g{gen}",
        run="r",
        generation=gen,
        state=state,
        created_at=NOW - age,
    )


def pointer(step: int, gen: int = 1) -> LatestPointer:
    return LatestPointer(
        run="r", step=step, manifest="m", generation=gen, written_at=NOW - M, writer="w"
    )


def hb(gen: int, ago: timedelta = M, step: int | None = 100, phase: str = "training") -> Heartbeat:
    return Heartbeat(
        run="r",
        generation=gen,
        writer="w",
        at=NOW - ago,
        phase=phase,  # type: ignore[arg-type]
        step=step,
    )


def seen(heartbeat: Heartbeat, since: timedelta) -> HeartbeatMark:
    """The ledger's memory that this heartbeat content was first seen `since` ago."""
    return HeartbeatMark(
        generation=heartbeat.generation, digest=heartbeat_digest(heartbeat), at=NOW - since
    )


def ledger(
    gen: int = 1,
    launched: timedelta = 60 * M,
    progress: tuple[int, timedelta] | None = (100, 5 * M),
    **kw: object,
) -> Ledger:
    launches = tuple(
        LaunchRecord(generation=g, at=NOW - launched, provider="local", instance_id=f"i{g}")
        for g in range(1, gen + 1)
    )
    mark = ProgressMark(step=progress[0], at=NOW - progress[1]) if progress else None
    # By default the previous tick, 5 minutes ago, already saw the default heartbeat.
    kw.setdefault("heartbeat_seen", seen(hb(1), 5 * M))
    return Ledger(run="r", generation=gen, launches=launches, progress=mark, **kw)  # type: ignore[arg-type]


def obs(**kw: object) -> Observation:
    base: dict[str, object] = {
        "run": "r",
        "ledger": ledger(),
        "pointer": pointer(100),
        "heartbeat": hb(1),
        "instances": (inst(1),),
    }
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


CASES = [
    # (id, observation, health, reason fragment)
    (
        "never launched",
        obs(ledger=Ledger(run="r"), pointer=None, heartbeat=None, instances=()),
        Health.NEW,
        "never launched",
    ),
    ("healthy", obs(heartbeat=hb(1, step=120)), Health.HEALTHY, "step 120"),
    (
        "starting: no heartbeat yet",
        obs(ledger=ledger(launched=5 * M), heartbeat=None),
        Health.STARTING,
        "no heartbeat yet",
    ),
    (
        "starting: restoring",
        obs(
            ledger=ledger(launched=5 * M, progress=(100, 50 * M)),
            heartbeat=hb(1, phase="restoring"),
        ),
        Health.STARTING,
        "restoring",
    ),
    (
        "dead: no heartbeat within grace",
        obs(ledger=ledger(launched=25 * M), heartbeat=None),
        Health.DEAD,
        "startup grace",
    ),
    ("dead: instance gone", obs(instances=()), Health.DEAD, "no live instance of generation 1"),
    (
        "dead: instance stopped (outbid)",
        obs(instances=(inst(1, InstanceState.STOPPED),)),
        Health.DEAD,
        "it is stopped",
    ),
    (
        "dead: heartbeat unchanged for longer than dead_after",
        obs(ledger=ledger(heartbeat_seen=seen(hb(1), 16 * M))),
        Health.DEAD,
        "no heartbeat from g1 for 16m",
    ),
    ("dead: pod failed", obs(heartbeat=hb(1, phase="failed")), Health.DEAD, "reported failure"),
    (
        "stalled: no progress",
        obs(ledger=ledger(progress=(100, 31 * M))),
        Health.STALLED,
        "unchanged for 31m",
    ),
    (
        "stalled: none since launch",
        obs(ledger=ledger(launched=25 * M, progress=(100, 40 * M))),
        Health.STALLED,
        "no step progress since g1 launched",
    ),
    (
        "old-gen heartbeat ignored",
        obs(ledger=ledger(gen=2, launched=25 * M), heartbeat=hb(1), instances=(inst(2),)),
        Health.DEAD,
        "startup grace",
    ),
    (
        "finished: target reached and finish_grace over",
        obs(pointer=pointer(1000), ledger=ledger(progress=(1000, 11 * M))),
        Health.FINISHED,
        "reached target 1000",
    ),
    (
        "target reached: the trainer gets finish_grace to exit",
        obs(pointer=pointer(1000)),
        Health.HEALTHY,
        "waiting up to 10m for the trainer to exit",
    ),
    (
        "target reached, instance gone: finished at once",
        obs(pointer=pointer(1000), instances=()),
        Health.FINISHED,
        "reached target 1000",
    ),
    (
        "finished: trainer exited",
        obs(pointer=pointer(1000), heartbeat=hb(1, phase="finished", step=1000)),
        Health.FINISHED,
        "exited cleanly",
    ),
    ("halted", obs(ledger=ledger(halted="budget cap")), Health.HALTED, "budget cap"),
    (
        "unknown: failed observation",
        obs(errors=("vast: listing failed: 503",)),
        Health.UNKNOWN,
        "503",
    ),
]


@pytest.mark.parametrize(
    ("observation", "health", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_classify(observation: Observation, health: Health, reason: str) -> None:
    verdict = classify(RUN, observation, NOW)
    assert verdict.health == health
    assert reason in verdict.reason


def kinds(plan_actions: tuple[object, ...]) -> list[str]:
    return [a.kind for a in plan_actions]  # type: ignore[attr-defined]


DECISIONS = [
    (
        "never launched → provision g1 from scratch",
        obs(ledger=Ledger(run="r"), pointer=None, heartbeat=None, instances=()),
        ["provision"],
    ),
    ("healthy → nothing", obs(heartbeat=hb(1, step=120)), []),
    (
        "healthy → terminate older generation and duplicate",
        obs(
            heartbeat=hb(1, step=120),
            instances=(inst(1), inst(0, iid="old"), inst(1, iid="dup", age=5 * M)),
        ),
        ["terminate", "terminate"],
    ),
    (
        "dead → terminate leftovers, then provision",
        obs(instances=(inst(1, InstanceState.STOPPED),)),
        ["terminate", "provision"],
    ),
    (
        "stalled, shell_access → restart in place",
        obs(ledger=ledger(progress=(100, 31 * M)), shell_access=True),
        ["restart"],
    ),
    (
        "stalled, restart already tried → replace",
        obs(
            ledger=ledger(
                progress=(100, 31 * M),
                restarts=(
                    RestartRecord(generation=1, at=NOW - 25 * M, provider="local", instance_id="a"),
                ),
            ),
            shell_access=True,
        ),
        ["terminate", "provision"],
    ),
    (
        "restarted in place 10m ago, no new step yet → startup grace, not replaced",
        obs(
            ledger=ledger(
                progress=(100, 31 * M),
                restarts=(
                    RestartRecord(generation=1, at=NOW - 10 * M, provider="local", instance_id="a"),
                ),
            ),
            shell_access=True,
        ),
        [],
    ),
    (
        "stalled, not shell_access → replace",
        obs(ledger=ledger(progress=(100, 31 * M))),
        ["terminate", "provision"],
    ),
    (
        "finished → terminate everything",
        obs(pointer=pointer(1000), ledger=ledger(progress=(1000, 11 * M))),
        ["terminate"],
    ),
    ("target just reached → nothing killed yet", obs(pointer=pointer(1000)), []),
    (
        "unknown → alert only, nothing destructive",
        obs(errors=("store: timeout",), instances=(inst(1), inst(0, iid="old"))),
        ["alert"],
    ),
    ("halted → alert only", obs(ledger=ledger(halted="x"), instances=()), ["alert"]),
]


@pytest.mark.parametrize(
    ("observation", "expected"), [d[1:] for d in DECISIONS], ids=[d[0] for d in DECISIONS]
)
def test_decide(observation: Observation, expected: list[str]) -> None:
    assert kinds(decide(RUN, observation, NOW).actions) == expected


def test_provision_claims_next_generation_and_resume_step() -> None:
    plan = decide(RUN, obs(instances=()), NOW)
    (action,) = plan.actions
    assert isinstance(action, Provision)
    assert (action.generation, action.resume_step) == (2, 100)
    assert plan.ledger.generation == 2
    assert plan.ledger.launch_of(2) is not None


def test_terminations_come_before_the_launch() -> None:
    plan = decide(RUN, obs(instances=(inst(1, InstanceState.STOPPED), inst(0, iid="x"))), NOW)
    assert kinds(plan.actions) == ["terminate", "terminate", "provision"]


def test_healthy_keeps_the_earliest_created_like_the_launch_race() -> None:
    # One winner rule everywhere (winner_order): settle_race keeps the earliest created, so
    # the tick does too — two rules could destroy both instances between them.
    plan = decide(
        RUN,
        obs(
            heartbeat=hb(1, step=120),
            instances=(inst(1, iid="new", age=40 * M), inst(1, iid="old", age=50 * M)),
        ),
        NOW,
    )
    (t,) = plan.actions
    assert isinstance(t, Terminate) and t.instance_id == "new"


def test_crash_loop_breaker_halts_instead_of_launching() -> None:
    led = ledger(gen=3, launched=30 * M)
    plan = decide(RUN, obs(ledger=led, instances=()), NOW)
    assert kinds(plan.actions) == ["halt", "alert"]
    assert plan.ledger.halted is not None and "crash-loop" in plan.ledger.halted
    assert plan.ledger.generation == 3


def test_launches_that_found_no_capacity_do_not_trip_the_breaker() -> None:
    failed = tuple(
        LaunchRecord(generation=g, at=NOW - g * 10 * M, error="no capacity") for g in range(1, 9)
    )
    led = Ledger(run="r", generation=8, launches=failed)
    plan = decide(RUN, obs(ledger=led, instances=()), NOW)
    assert [a.kind for a in plan.actions] == ["provision"]


def test_spend_cap_halts() -> None:
    launches = (
        LaunchRecord(generation=1, at=NOW - 23 * 60 * M, instance_id="i1", price_per_hour=5),
    )
    led = Ledger(run="r", generation=1, launches=launches, heartbeat_seen=seen(hb(1), 5 * M))
    plan = decide(RUN, obs(ledger=led, instances=()), NOW)
    assert isinstance(plan.actions[0], Halt)
    assert "budget cap" in plan.actions[0].reason


def test_unknown_keeps_ledger_progress() -> None:
    o = obs(errors=("x",), heartbeat=hb(1, step=500))
    plan = decide(RUN, o, NOW)
    assert plan.ledger.progress == o.ledger.progress
    assert isinstance(plan.actions[0], Alert)


def test_progress_is_remembered_in_the_ledger() -> None:
    plan = decide(RUN, obs(heartbeat=hb(1, step=130)), NOW)
    assert plan.ledger.progress == ProgressMark(step=130, at=NOW)
    # The next tick with no new step keeps the time progress was first seen.
    later = decide(RUN, obs(ledger=plan.ledger, heartbeat=hb(1, step=130)), NOW + 10 * M)
    assert later.ledger.progress == ProgressMark(step=130, at=NOW)


def test_decide_is_pure() -> None:
    o = obs(instances=())
    assert decide(RUN, o, NOW) == decide(RUN, o, NOW)


def test_restart_is_recorded_so_it_is_tried_once() -> None:
    plan = decide(RUN, obs(ledger=ledger(progress=(100, 31 * M)), shell_access=True), NOW)
    assert isinstance(plan.actions[-1], RestartInPlace)
    # The restarted trainer gets the startup grace; still no progress after it: replaced.
    assert decide(RUN, obs(ledger=plan.ledger, shell_access=True), NOW + M).actions == ()
    again = decide(RUN, obs(ledger=plan.ledger, shell_access=True), NOW + 21 * M)
    assert kinds(again.actions) == ["terminate", "provision"]


# -- control-plane safety: the ledger, the halt order, two signals -------------------------


@pytest.mark.parametrize("state", ["ok", "missing"])
def test_a_ledger_behind_the_other_signals_is_unknown_and_never_overwritten(state: str) -> None:
    # A lost ledger (or a valid one at g0) with the run at g3: the old code said "never
    # launched", destroyed the healthy g3 and launched g1, which fenced itself.
    o = obs(
        ledger=Ledger(run="r"),
        ledger_state=state,
        pointer=pointer(100, gen=3),
        heartbeat=hb(3, step=120),
        instances=(inst(3),),
    )
    plan = decide(RUN, o, NOW)
    assert plan.verdict.health == Health.UNKNOWN
    assert "ledger repair" in plan.verdict.reason and "g3" in plan.verdict.reason
    assert kinds(plan.actions) == ["alert"]
    assert plan.ledger == o.ledger and not plan.verdict.ledger_trusted


def test_an_unreadable_ledger_is_not_replaced_by_a_blank_one() -> None:
    o = obs(ledger=Ledger(run="r"), ledger_state="unreadable", errors=("ledger: not JSON",))
    plan = decide(RUN, o, NOW)
    assert kinds(plan.actions) == ["alert"]
    assert not plan.verdict.ledger_trusted and plan.ledger == o.ledger


def test_heartbeat_age_is_judged_by_the_controller_not_the_pod_clock() -> None:
    # The pod's clock is 40 minutes behind: its heartbeats look 40 minutes old, but they
    # change from tick to tick, so the pod is alive.
    skewed = hb(1, ago=40 * M, step=130)
    verdict = classify(RUN, obs(heartbeat=skewed), NOW)
    assert verdict.health == Health.HEALTHY
    assert verdict.heartbeat_seen is not None and verdict.heartbeat_seen.at == NOW


def test_empty_listing_with_a_moving_heartbeat_waits_for_a_second_signal() -> None:
    # The listing says g1 is gone, the heartbeat changed since the last tick: no launch yet.
    moving = hb(1, step=130)
    first = decide(RUN, obs(heartbeat=moving, instances=()), NOW)
    assert first.verdict.health == Health.UNKNOWN and kinds(first.actions) == ["alert"]
    assert first.ledger.doubts == 1
    # The heartbeat stopped changing: the two agree, the next tick replaces at once.
    agree = decide(RUN, obs(ledger=first.ledger, heartbeat=moving, instances=()), NOW + 10 * M)
    assert kinds(agree.actions) == ["provision"]
    # A heartbeat that keeps moving is outvoted after DOUBT_TICKS ticks.
    led = first.ledger
    for n in range(2, 4):
        later = NOW + n * M
        beat = hb(1, step=130 + n)
        plan = decide(RUN, obs(ledger=led, heartbeat=beat, instances=()), later)
        led = plan.ledger
    assert kinds(plan.actions) == ["provision"]


def test_a_listing_that_shows_one_instance_twice_destroys_nothing() -> None:
    twice = (inst(1), inst(1, InstanceState.STOPPED))  # same id, two states
    plan = decide(RUN, obs(heartbeat=hb(1, step=120), instances=twice), NOW)
    assert plan.verdict.health == Health.HEALTHY
    assert plan.actions == ()


def test_a_run_stopped_by_hand_is_quiet_and_kept_empty() -> None:
    order = HaltOrder(halted=True, reason="by alice", at=NOW - M)
    plan = decide(RUN, obs(halt=order), NOW)
    assert plan.verdict.health == Health.STOPPED and "stopped by hand" in plan.verdict.reason
    assert kinds(plan.actions) == ["terminate"]  # a launch that raced the kill switch


def test_resume_clears_a_breaker_halt_and_allows_a_launch() -> None:
    led = ledger(gen=3, launched=30 * M).model_copy(
        update={"halted": "crash-loop breaker", "halted_at": NOW - 20 * M}
    )
    assert decide(RUN, obs(ledger=led, instances=()), NOW).verdict.health == Health.HALTED
    resumed = HaltOrder(halted=False, at=NOW - 5 * M)
    plan = decide(RUN, obs(ledger=led, instances=(), halt=resumed), NOW)
    assert kinds(plan.actions) == ["provision"] and plan.ledger.halted is None
