"""Issue 18.6: a breaker's halt survives a `respawn resume` given before it, whichever
breaker halted the run (pure: classify and decide)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from respawn.controller.config import RunConfig
from respawn.controller.decide import decide
from respawn.controller.model import HaltOrder, Health, Observation, RollbackRecord
from respawn.provisioning.base import InstanceState
from respawn.store.schema import Heartbeat
from tests.test_decide import NOW, M, hb, inst, ledger, obs
from tests.test_decide import RUN as PLAIN
from tests.test_wandb_health import RUN as DEGENERATE
from tests.test_wandb_health import STREAK, sig, wobs

# A person resumed the run an hour before the breaker tripped.
OLD_RESUME = HaltOrder(halted=False, reason="respawn resume", at=NOW - 60 * M)


def _rollback_breaker() -> Observation:
    past = tuple(
        RollbackRecord(at=NOW - h * 10 * M, from_step=100, to_step=90, wandb_step=50, reason="x")
        for h in (1, 2)
    )
    return wobs(sig(rewards=STREAK), ledger=ledger(rollbacks=past), halt=OLD_RESUME)


def _no_checkpoint_before_streak() -> Observation:
    return wobs(sig(rewards=STREAK), published_steps=(118,), halt=OLD_RESUME)


def _crash_loop() -> Observation:
    return obs(
        ledger=ledger(gen=3, launched=5 * M),
        instances=(inst(3, InstanceState.TERMINATED),),
        heartbeat=None,
        halt=OLD_RESUME,
    )


def _fatal() -> Observation:
    failed = Heartbeat.model_validate(
        {**hb(1).model_dump(), "phase": "failed", "will_repeat": True, "message": "bad config"}
    )
    return obs(heartbeat=failed, halt=OLD_RESUME)


BREAKERS = [
    ("rollbacks", DEGENERATE, _rollback_breaker),
    ("no checkpoint before the streak", DEGENERATE, _no_checkpoint_before_streak),
    ("crash loop", PLAIN, _crash_loop),
    ("pod failure that would repeat", PLAIN, _fatal),
]


@pytest.mark.parametrize(
    ("run", "observation"), [b[1:] for b in BREAKERS], ids=[b[0] for b in BREAKERS]
)
def test_a_breaker_halt_survives_a_resume_given_before_it(
    run: RunConfig, observation: Callable[[], Observation]
) -> None:
    o = observation()
    plan = decide(run, o, NOW)
    assert plan.ledger.halted, plan.verdict.reason
    assert plan.ledger.halted_at == NOW
    # The next tick, with the same (older) resume order still in the store.
    later = o.model_copy(update={"ledger": plan.ledger, "instances": (), "wandb": ()})
    again = decide(run, later, NOW + timedelta(minutes=5))
    assert again.verdict.health == Health.HALTED, again.verdict.reason
    assert again.ledger.halted == plan.ledger.halted
    assert not again.destructive
