"""Issue 18.6: a breaker's halt survives `respawn ledger repair` after a pod put back an older
ledger this controller signed (the launch history it counts is rebuilt, not dropped)."""

from __future__ import annotations

import re
import shlex
from datetime import timedelta
from pathlib import Path

import pytest

from respawn.controller.cli import main
from respawn.controller.config import load_config
from respawn.controller.ledger import read_ledger, write_halt
from respawn.controller.model import HaltOrder, Health
from respawn.controller.reconcile import tick
from respawn.controller.stores import open_run_store
from respawn.store.keys import Keys
from respawn.store.schema import Heartbeat, utcnow
from tests.fakes.runpod import FakeRunPod
from tests.fakes.vast import FakeVast
from tests.test_security_controller import SECRET, _fleet

LEDGER = f"store/{Keys('job').ledger}"


@pytest.fixture
def clouds(
    clouds: tuple[FakeVast, FakeRunPod], monkeypatch: pytest.MonkeyPatch
) -> tuple[FakeVast, FakeRunPod]:
    monkeypatch.setenv("RESPAWN_LEDGER_SECRET", SECRET)
    return clouds


def test_a_crash_loop_halt_survives_a_replayed_ledger_and_its_repair(
    tmp_path: Path, clouds: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    vast, runpod = clouds
    budget = {"max_launches_per_day": 2, "max_spend_per_day": 100}
    # Reclaimed instances vanish from the fake's listing at once: no listing lag to wait out.
    health = {"startup_grace": "10m", "dead_after": "15m", "listing_grace": "0.01s"}
    path = _fleet(tmp_path, vast, runpod, budget=budget, health=health)
    fleet = load_config(path)
    store = open_run_store(fleet.store, "job")
    # A person resumed the run once, long before any of this.
    write_halt(store, HaltOrder(halted=False, reason="resume", at=utcnow() - timedelta(hours=2)))
    tick(fleet)  # g1
    replayed = (tmp_path / LEDGER).read_bytes()  # signed by this controller: one launch
    vast.instances.clear()  # reclaimed
    tick(fleet)  # g2
    vast.instances.clear()  # reclaimed again: the crash-loop breaker trips
    report = tick(fleet)[0]
    halted = read_ledger(store)
    assert halted.halted and "crash-loop" in halted.halted, report.plan.verdict.reason
    assert vast.count("create") == 2

    (tmp_path / LEDGER).write_bytes(replayed)  # a pod puts the older ledger back
    report = tick(fleet)[0]
    assert report.plan.verdict.health == Health.UNKNOWN
    named = re.search(r"`(respawn ledger repair[^`]*)`", report.plan.verdict.reason)
    assert named, report.plan.verdict.reason
    argv = shlex.split(named.group(1))[1:]
    rc = main([*argv, "-c", str(path), *([] if "--run" in argv else ["--run", "job"])])
    out = capsys.readouterr()
    assert rc == 0, out.err

    repaired = read_ledger(store)
    assert repaired.halted and "crash-loop" in repaired.halted, out.out
    assert [lr.generation for lr in repaired.launches] == [1, 2]
    assert repaired.generation == 2
    for _ in range(2):
        report = tick(fleet)[0]
        assert report.plan.verdict.health == Health.HALTED, report.plan.verdict.reason
        assert vast.count("create") == 2
    # A person looks, resumes: the next launch is above every generation used so far.
    assert main(["resume", "-c", str(path), "--run", "job"]) == 0
    report = tick(fleet)[0]
    (launch,) = [r for r in report.results if r.action.kind == "provision"]
    assert launch.ok and launch.action.generation == 3, launch  # type: ignore[union-attr]


def test_a_failure_halt_survives_a_replayed_ledger_and_its_repair(
    tmp_path: Path, clouds: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    # A breaker that launches nothing (a failure that would repeat; the rollback breaker's
    # limit): no launch history proves it, its own record does.
    vast, runpod = clouds
    path = _fleet(tmp_path, vast, runpod)
    fleet = load_config(path)
    store = open_run_store(fleet.store, "job")
    write_halt(store, HaltOrder(halted=False, reason="resume", at=utcnow() - timedelta(hours=2)))
    tick(fleet)  # g1
    replayed = (tmp_path / LEDGER).read_bytes()
    failed = Heartbeat(
        run="job",
        generation=1,
        writer="pod g1",
        at=utcnow(),
        phase="failed",
        message="the command cannot start",
        will_repeat=True,
    )
    store.write_heartbeat(failed)
    tick(fleet)
    assert (read_ledger(store).halted or "").startswith("g1 pod reported failure")
    (tmp_path / LEDGER).write_bytes(replayed)
    assert tick(fleet)[0].plan.verdict.health == Health.UNKNOWN
    rc = main(["ledger", "repair", "-c", str(path), "--run", "job"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    report = tick(fleet)[0]
    assert report.plan.verdict.health == Health.HALTED, report.plan.verdict.reason
    assert "cannot start" in report.plan.verdict.reason
    assert vast.count("create") == 1
