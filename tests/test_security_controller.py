"""A pod key must not steer the controller (issue 12.4). Every pod can write its run's
prefix of the store; these are the forgeries that worked with such a key before the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from respawn.controller.config import load_config
from respawn.controller.ledger import read_ledger, write_halt, write_ledger
from respawn.controller.model import HaltOrder
from respawn.controller.reconcile import tick
from respawn.controller.seal import ADOPT_UNSIGNED_ENV
from respawn.controller.stores import open_run_store
from respawn.store.keys import Keys
from respawn.store.schema import Heartbeat, LatestPointer, utcnow
from respawn.store.store import CheckpointStore
from tests.conftest import make_step
from tests.fakes.runpod import FakeRunPod
from tests.fakes.vast import FakeVast
from tests.test_clouds import write_fleet

SECRET = "controller-only-secret-0123456789"


@pytest.fixture
def clouds(
    clouds: tuple[FakeVast, FakeRunPod], monkeypatch: pytest.MonkeyPatch
) -> tuple[FakeVast, FakeRunPod]:
    monkeypatch.setenv("RESPAWN_LEDGER_SECRET", SECRET)
    return clouds


def _fleet(tmp: Path, vast: FakeVast, runpod: FakeRunPod, **run: object) -> Path:
    path = write_fleet(tmp, vast, runpod, ["RTX_4090"])
    doc = yaml.safe_load(path.read_text())
    doc["store"]["ledger_secret_env"] = "RESPAWN_LEDGER_SECRET"
    doc["runs"][0].update(run)
    path.write_text(yaml.safe_dump(doc))
    return path


def _pod_store(tmp: Path) -> CheckpointStore:
    """The store as a pod (or anyone with the pod key) sees it: no ledger secret."""
    return CheckpointStore.open(f"file://{tmp / 'store'}", "job")


def _forge_ledger(tmp: Path, **changes: object) -> None:
    path = tmp / "store" / Keys("job").ledger
    doc = json.loads(path.read_text())
    doc.pop("mac", None)
    doc.update(changes)
    path.write_text(json.dumps(doc))


def test_forged_ledger_cannot_clear_a_breaker_halt(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)  # g1
    store = open_run_store(fleet.store, "job")
    ledger = read_ledger(store)
    halted = ledger.model_copy(update={"halted": "crash-loop breaker", "halted_at": utcnow()})
    write_ledger(store, halted, ledger.version)
    vast.instances.clear()  # the pod is gone
    _forge_ledger(tmp_path, halted=None)  # undo the breaker with a pod's key
    forged = (tmp_path / "store" / Keys("job").ledger).read_text()
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown"
    assert "not written by this controller" in report.plan.verdict.reason
    assert [a.kind for a in report.plan.actions] == ["alert"]
    assert vast.instances == {} and vast.count("create") == 1
    # Not overwritten with a blank ledger either (the next tick would say "never launched").
    assert (tmp_path / "store" / Keys("job").ledger).read_text() == forged
    assert tick(fleet)[0].plan.verdict.health.value == "unknown"


def test_forged_resume_cannot_undo_the_kill_switch(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)  # g1
    store = open_run_store(fleet.store, "job")
    write_halt(store, HaltOrder(halted=True, reason="by hand", at=utcnow()))
    assert tick(fleet)[0].plan.verdict.health.value == "stopped"
    assert vast.instances == {}
    # With a pod's key: a resume order of its own.
    order = HaltOrder(halted=False, at=utcnow())
    (tmp_path / "store" / Keys("job").halt).write_text(order.model_dump_json())
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown" and not report.plan.destructive
    assert vast.count("create") == 1


def test_forged_ledger_cannot_erase_the_launch_history(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)
    _forge_ledger(tmp_path, launches=[])  # defeat the crash-loop and budget breakers
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown"
    assert not report.plan.destructive


def test_signed_ledger_round_trips_and_unsigned_one_can_be_adopted(
    tmp_path: Path, clouds: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)
    assert '"mac"' in (tmp_path / "store" / Keys("job").ledger).read_text()
    assert tick(fleet)[0].plan.verdict.health.value == "starting"
    _forge_ledger(tmp_path)  # unsigned: as written before ledger_secret_env was set
    assert tick(fleet)[0].plan.verdict.health.value == "unknown"
    monkeypatch.setenv(ADOPT_UNSIGNED_ENV, "1")
    v = tick(fleet)[0].plan.verdict
    assert v.health.value == "starting", v.reason
    monkeypatch.delenv(ADOPT_UNSIGNED_ENV)
    assert tick(fleet)[0].plan.verdict.health.value == "starting"  # signed again


def test_missing_ledger_secret_is_a_clear_error(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    import os

    os.environ.pop("RESPAWN_LEDGER_SECRET")
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown"
    assert "RESPAWN_LEDGER_SECRET" in report.plan.verdict.reason
    assert vast.count("create") == 0


def _forge_pointer(tmp: Path, step: int, generation: int) -> None:
    pointer = LatestPointer(
        run="job",
        step=step,
        manifest=f"job/checkpoints/step_{step:06d}/MANIFEST.json",
        generation=generation,
        written_at=utcnow(),
        writer="attacker",
    )
    (tmp / "store/job/latest.json").write_text(pointer.model_dump_json(by_alias=True))


@pytest.mark.parametrize("generation", [1, 1_000_000_000])
def test_forged_pointer_at_target_does_not_finish_the_run(
    tmp_path: Path, clouds: tuple, generation: int
) -> None:
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod, target_step=100))
    tick(fleet)  # g1 running
    _forge_pointer(tmp_path, 100, generation)  # no manifest behind it
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value != "finished"
    assert len(vast.instances) == 1 and not report.plan.destructive


def test_pointer_with_a_manifest_is_still_acted_on(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod, target_step=100))
    tick(fleet)
    files = make_step(tmp_path, 100, {"ck/step_100/DONE": b"", "ck/step_100/w": b"w"})
    _pod_store(tmp_path).publish(100, files, generation=1, writer="pod")
    report = tick(fleet)[0]
    assert report.plan.verdict.step == 100
    assert "reached target 100" in report.plan.verdict.reason


def test_forged_generation_in_a_heartbeat_fences_no_future_pod(
    tmp_path: Path, clouds: tuple
) -> None:
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)  # ledger claims g1
    pod = _pod_store(tmp_path)
    pod.write_heartbeat(
        Heartbeat(run="job", generation=1_000_000_000, writer="x", at=utcnow(), phase="training")
    )
    pod.check_fence(1)  # g1, the controller's generation, still owns the run
    assert pod.current_generation() == 1
    # ...and the controller ignores the heartbeat of a generation it never launched.
    assert tick(fleet)[0].plan.verdict.health.value == "starting"
