"""Properties of decide for any signals (hypothesis): the promises a person relies on."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from respawn.controller.decide import decide
from respawn.controller.model import (
    Health,
    LaunchRecord,
    Ledger,
    Observation,
    ProgressMark,
    Provision,
    RestartInPlace,
    Rollback,
    RollbackRecord,
    Terminate,
    WandbRunSignal,
)
from respawn.provisioning.base import Instance, InstanceState
from respawn.store.schema import Heartbeat, LatestPointer
from tests.test_wandb_health import NOW, RUN

M = timedelta(minutes=1)
minutes = st.integers(min_value=-10, max_value=24 * 60).map(lambda m: NOW - m * M)
recent = st.integers(min_value=-5, max_value=40).map(lambda m: NOW - m * M)
steps = st.integers(min_value=0, max_value=300)
gens = st.integers(min_value=0, max_value=4)
rare = st.sampled_from([False, False, False, True])


@st.composite
def ledgers(draw: st.DrawFn) -> Ledger:
    gen = draw(st.integers(min_value=1, max_value=4) | gens)
    launches = tuple(
        LaunchRecord(generation=g, at=draw(minutes), instance_id=draw(st.sampled_from([None, "x"])))
        for g in range(1, gen + 1)
    )
    rollbacks = tuple(
        RollbackRecord(
            at=draw(minutes),
            from_step=draw(steps),
            to_step=draw(steps),
            wandb_step=draw(steps) if draw(rare) else None,
            reason="r",
        )
        for _ in range(draw(st.sampled_from([0, 0, 1, 3])))
    )
    progress = draw(st.none() | st.builds(ProgressMark, step=steps, at=minutes))
    return Ledger(
        run="r",
        generation=gen,
        launches=launches,
        rollbacks=rollbacks,
        progress=progress,
        halted="halted by hand" if draw(rare) else None,
        notified=draw(st.none() | st.sampled_from(list(Health))),
    )


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    ledger = draw(ledgers())
    # Mostly signals of the current generation, so every state is reached, not only "dead".
    gen = ledger.generation
    near = st.sampled_from([gen, gen, gen, max(0, gen - 1)])
    pointer = draw(
        st.none()
        | st.builds(
            LatestPointer,
            run=st.just("r"),
            step=steps,
            manifest=st.just("m"),
            generation=near,
            written_at=minutes,
            writer=st.just("w"),
        )
    )
    heartbeat = draw(
        st.none()
        | st.builds(
            Heartbeat,
            run=st.just("r"),
            generation=near,
            writer=st.just("w"),
            at=recent,
            phase=st.sampled_from(["restoring", "training", "training", "finished", "failed"]),
            step=st.none() | steps,
        )
    )
    instances = tuple(
        Instance(
            provider="local",
            id=f"i{n}",
            name=f"respawn-r-g{g}",
            run="r",
            generation=g,
            state=draw(st.sampled_from([InstanceState.RUNNING] * 3 + list(InstanceState))),
            created_at=draw(recent),
        )
        for n, g in enumerate(draw(st.lists(near, max_size=3)))
    )

    def tail(last: int) -> tuple[tuple[int, float], ...]:
        # good rows, then a streak of bad ones of any length: below, at and above the rule's N
        values = [1.0] * draw(st.integers(0, 6)) + [draw(st.sampled_from([0.0, float("nan")]))] * (
            draw(st.integers(0, 10))
        )
        return tuple((last - len(values) + 1 + i, v) for i, v in enumerate(values))

    wandb = tuple(
        WandbRunSignal(
            run_id=f"w{n}",
            url="u",
            state=draw(st.sampled_from(["running", "crashed", "finished"])),
            heartbeat_at=draw(minutes),
            step=last,
            tail=tail(last),
            error="W&B unavailable" if draw(rare) else None,
        )
        for n, last in enumerate(draw(st.lists(steps, min_size=1, max_size=2) | st.just([])))
    )
    return Observation(
        run="r",
        pointer=pointer,
        heartbeat=heartbeat,
        instances=instances,
        ledger=ledger,
        errors=("vast: 503",) if draw(rare) else (),
        restartable=draw(st.booleans()),
        wandb=wandb,
        published_steps=None if draw(rare) else tuple(draw(st.lists(steps, max_size=5))),
        ledger_state=draw(st.sampled_from(["unreadable", "missing"])) if draw(rare) else "ok",
    )


DESTRUCTIVE = Terminate | Provision | RestartInPlace | Rollback


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(observations())
def test_decide_keeps_its_promises(obs: Observation) -> None:
    plan = decide(RUN, obs, NOW)
    health = plan.verdict.health
    # Never destroys (or launches, or moves the pointer) on partial knowledge.
    if health is Health.UNKNOWN:
        assert not any(isinstance(a, DESTRUCTIVE) for a in plan.actions)
        # what it told and logged, and its memory of the disagreeing signals, may change
        keep = {"notified": None, "events": (), "doubts": 0, "heartbeat_seen": None}
        assert plan.ledger.model_copy(update=keep) == obs.ledger.model_copy(update=keep)
    # Never launches while an instance is starting or healthy.
    if health in (Health.STARTING, Health.HEALTHY):
        assert not any(isinstance(a, Provision) for a in plan.actions)
    # The pointer moves back only by a rollback the ledger records, to an older step.
    rollbacks = [a for a in plan.actions if isinstance(a, Rollback)]
    assert len(rollbacks) <= 1
    if rollbacks:
        (rb,) = rollbacks
        new = plan.ledger.rollbacks[-1]
        assert new not in obs.ledger.rollbacks and new.to_step == rb.to_step
        assert obs.pointer is None or rb.to_step <= obs.pointer.step
        assert obs.published_steps is not None and rb.to_step in obs.published_steps
        launch = next(a for a in plan.actions if isinstance(a, Provision))
        assert plan.actions.index(rb) < plan.actions.index(launch)
        assert plan.actions.index(rb) == 0  # it fences the old pod before it is stopped
    else:
        assert plan.ledger.rollbacks == obs.ledger.rollbacks
    # A halted run stays halted: nothing but a person clears it.
    if obs.ledger.halted:
        assert plan.ledger.halted == obs.ledger.halted
        assert not any(isinstance(a, Provision | Rollback) for a in plan.actions)
