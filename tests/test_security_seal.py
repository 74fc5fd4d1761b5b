"""Issue 12.4, the gaps a signature alone left: a pod (store key, no ledger secret) replays an
older signed ledger or halt order, hides the ledger, or forges a tick lease that never
expires. Each is either refused or made visible; nothing is destroyed or launched on it."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from respawn.controller.config import load_config
from respawn.controller.ledger import read_ledger, write_halt, write_ledger
from respawn.controller.model import HaltOrder
from respawn.controller.reconcile import tick
from respawn.controller.repair import repair_ledger
from respawn.controller.stores import open_run_store
from respawn.store.schema import utcnow
from tests.fakes.runpod import FakeRunPod
from tests.fakes.vast import FakeVast
from tests.test_clouds import write_fleet
from tests.test_security_controller import SECRET, _fleet


@pytest.fixture
def clouds(
    clouds: tuple[FakeVast, FakeRunPod], monkeypatch: pytest.MonkeyPatch
) -> tuple[FakeVast, FakeRunPod]:
    monkeypatch.setenv("RESPAWN_LEDGER_SECRET", SECRET)
    return clouds


LEDGER = "store/job/ledger.json"
LEASE = "store/job/control/lease.json"


def _halt_by_breaker(fleet: object, vast: object) -> None:
    store = open_run_store(fleet.store, "job")  # type: ignore[attr-defined]
    ledger = read_ledger(store)
    halted = ledger.model_copy(update={"halted": "crash-loop breaker", "halted_at": utcnow()})
    write_ledger(store, halted, ledger.version)
    vast.instances.clear()  # type: ignore[attr-defined]


def test_a_replayed_older_ledger_is_refused(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)  # g1
    before_halt = (tmp_path / LEDGER).read_bytes()  # signed by this controller
    _halt_by_breaker(fleet, vast)
    assert tick(fleet)[0].plan.verdict.health.value == "halted"
    (tmp_path / LEDGER).write_bytes(before_halt)  # a pod puts the old ledger back
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown", report.plan.verdict.reason
    assert "older" in report.plan.verdict.reason
    assert not report.plan.destructive and vast.count("create") == 1
    assert (tmp_path / LEDGER).read_bytes() == before_halt  # left for a person


def test_a_hidden_ledger_is_noticed_not_taken_for_a_new_run(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)
    _halt_by_breaker(fleet, vast)
    (tmp_path / LEDGER).unlink()  # B2 hide_file needs only writeFiles
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown", report.plan.verdict.reason
    assert "missing" in report.plan.verdict.reason
    assert vast.count("create") == 1
    # A person rebuilds it, and the run goes on from there.
    store = open_run_store(fleet.store, "job")
    repair_ledger(store, [], utcnow())
    assert tick(fleet)[0].plan.verdict.health.value != "unknown"


def test_a_replayed_resume_order_cannot_undo_a_later_terminate(
    tmp_path: Path, clouds: tuple
) -> None:
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)
    store = open_run_store(fleet.store, "job")
    halt = tmp_path / "store/job/control/halt.json"
    write_halt(store, HaltOrder(halted=False, at=utcnow() - timedelta(hours=1)))
    old_resume = halt.read_bytes()
    write_halt(store, HaltOrder(halted=True, reason="by hand", at=utcnow()))
    assert tick(fleet)[0].plan.verdict.health.value == "stopped"
    halt.write_bytes(old_resume)  # signed, but older than the terminate
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown", report.plan.verdict.reason
    assert not report.plan.destructive and vast.count("create") == 1


@pytest.mark.parametrize("signed", [True, False])
def test_a_forged_lease_cannot_lock_the_controller_out(
    tmp_path: Path, clouds: tuple, signed: bool
) -> None:
    vast, runpod = clouds
    if signed:
        path = _fleet(tmp_path, vast, runpod)
    else:
        path = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    fleet = load_config(path)
    forged = {"token": "pod", "holder": "a pod", "expires_at": "2999-01-01T00:00:00+00:00"}
    (tmp_path / LEASE).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / LEASE).write_text(json.dumps(forged))
    report = tick(fleet)[0]
    assert report.skipped is None, report.skipped
    assert vast.count("create") == 1
