"""Issue 18.8: a listing that lags behind a launch. An instance launched moments ago and not
listed yet is starting, not dead: nothing is replaced before `health.listing_grace` from its
launch. Pure cases, then one real tick with the local provider whose listing omits it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from respawn.controller.classify import classify
from respawn.controller.config import load_config
from respawn.controller.decide import decide
from respawn.controller.model import Health, LaunchRecord
from respawn.controller.reconcile import tick
from respawn.controller.stores import open_run_store
from respawn.provisioning.base import InstanceState
from tests.conftest import wait_for
from tests.test_decide import NOW, RUN, inst, ledger, obs
from tests.test_reconcile import fleet_path as fleet_path  # a fixture
from tests.test_reconcile import local

S = timedelta(seconds=1)


def _just_launched(after: timedelta, **launch: object) -> object:
    record = LaunchRecord.model_validate(
        {"generation": 2, "at": NOW - after, "provider": "local", "instance_id": "i2", **launch}
    )
    base = ledger(gen=1)
    return base.model_copy(
        update={"generation": 2, "launches": (*base.launches, record), "heartbeat_seen": None}
    )


def test_an_instance_missing_from_the_listing_seconds_after_its_launch_is_not_replaced() -> None:
    o = obs(ledger=_just_launched(3 * S), instances=(), heartbeat=None)
    plan = decide(RUN, o, NOW)
    assert plan.verdict.health == Health.STARTING, plan.verdict.reason
    assert "not listed" in plan.verdict.reason and "listing_grace" in plan.verdict.reason
    assert not plan.destructive


def test_after_the_listing_grace_a_missing_instance_is_dead() -> None:
    grace = RUN.health.listing_grace
    o = obs(ledger=_just_launched(grace + S), instances=(), heartbeat=None)
    assert classify(RUN, o, NOW).health == Health.DEAD


def test_an_instance_the_listing_shows_gone_gets_no_grace() -> None:
    o = obs(
        ledger=_just_launched(3 * S),
        instances=(inst(2, InstanceState.TERMINATED, age=3 * S),),
        heartbeat=None,
    )
    assert classify(RUN, o, NOW).health == Health.DEAD


def test_an_instance_once_listed_then_gone_is_dead_at_once() -> None:
    """The grace is for a listing that has not caught up with a create. An instance a tick
    already saw listed and that is gone now was reclaimed: waiting out the grace only delays
    the replacement (found by the fault soak: every kill in the first two minutes waited)."""
    seen = decide(RUN, obs(ledger=_just_launched(20 * S), instances=(inst(2, age=20 * S),)), NOW)
    assert seen.ledger.launch_of(2).listed_at == NOW  # type: ignore[union-attr]
    later = NOW + 10 * S
    gone = obs(ledger=seen.ledger, instances=(), heartbeat=None)
    plan = decide(RUN, gone, later)
    assert plan.verdict.health == Health.DEAD, plan.verdict.reason
    assert any(a.kind == "provision" for a in plan.actions)


def test_a_launch_that_failed_gets_no_grace() -> None:
    o = obs(
        ledger=_just_launched(3 * S, instance_id=None, error="no capacity"),
        instances=(),
        heartbeat=None,
    )
    assert classify(RUN, o, NOW).health == Health.DEAD


def test_a_tick_whose_listing_lost_a_heartbeating_pod_does_not_replace_it(
    fleet_path: Path,
) -> None:
    fleet = load_config(fleet_path)
    store = open_run_store(fleet.store, "job")
    provider = local(fleet)
    tick(fleet)  # launches g1: a real pod process that heartbeats
    wait_for(lambda: store.read_heartbeat() is not None)
    (record,) = (fleet_path.parent / "local/instances").glob("*.json")
    hidden = record.with_name("lagging-listing")
    record.rename(hidden)  # the provider's listing no longer shows the instance
    assert provider.list_instances("job") == []
    report = tick(fleet)[0]
    assert report.plan.verdict.health == Health.STARTING, report.plan.verdict.reason
    assert report.plan.actions == ()
    hidden.rename(record)  # the listing catches up
    assert [i.generation for i in provider.list_instances("job")] == [1]
    report = tick(fleet)[0]
    assert report.plan.verdict.health == Health.STARTING, report.plan.verdict.reason
    assert report.plan.actions == ()
