"""Fencing has its own document (`RUN/control/fence.json`, `respawn.contract.fencing.Fence`):
the controller writes it whenever it claims a generation, pods read it, and the store no
longer reads the controller's ledger to learn who owns the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from respawn.contract.fencing import Fence
from respawn.controller.config import load_config
from respawn.controller.reconcile import tick
from respawn.store.file_backend import FileBackend
from respawn.store.keys import Keys
from respawn.store.schema import utcnow
from respawn.store.store import CheckpointStore, FencedError
from tests.conftest import make_step
from tests.fakes.runpod import FakeRunPod
from tests.fakes.vast import FakeVast
from tests.test_security_controller import SECRET, _fleet


def _fence(store: CheckpointStore, generation: int) -> None:
    doc = Fence(run=store.run, generation=generation, at=utcnow())
    store.write_json(store.keys.fence, doc.model_dump(mode="json", by_alias=True))


def test_the_fence_document_decides_who_may_write(store: CheckpointStore, tmp_path: Path) -> None:
    # A store from before the fence is one from before `_control/` too.
    store.write_json(Keys(store.run).legacy(store.keys.ledger) or "", {"generation": 3})
    _fence(store, 5)
    assert store.current_generation() == 5
    with pytest.raises(FencedError):
        store.publish(1, make_step(tmp_path, 1, {"a": b"x"}), generation=4, writer="g4")
    store.publish(1, make_step(tmp_path, 1, {"a": b"x"}), generation=5, writer="g5")


def test_a_store_without_a_fence_falls_back_to_the_ledger(store: CheckpointStore) -> None:
    # A store from before the fence is one from before `_control/` too.
    store.write_json(Keys(store.run).legacy(store.keys.ledger) or "", {"generation": 3})
    assert store.current_generation() == 3
    store.write_json(store.keys.fence, {"generation": "garbage"})  # unreadable: same
    assert store.current_generation() == 3


def test_a_launch_writes_a_plain_fence_that_fences_the_old_pod(
    tmp_path: Path, clouds: tuple[FakeVast, FakeRunPod], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A signed ledger: a pod cannot verify its signature, so it must not need to read it.
    monkeypatch.setenv("RESPAWN_LEDGER_SECRET", SECRET)
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)  # claims g1
    fence = json.loads((tmp_path / "store/job/control/fence.json").read_bytes())
    assert fence["generation"] == 1 and "mac" not in fence
    # What a pod sees, with its own unsigned view of the store: g0 is fenced, g1 is not.
    pod_view = CheckpointStore(FileBackend.from_url(f"file://{tmp_path / 'store'}"), "job")
    (tmp_path / "store" / Keys("job").ledger).unlink()  # not read by pods any more
    with pytest.raises(FencedError):
        pod_view.check_fence(0)
    pod_view.check_fence(1)


def test_a_lost_ledger_with_a_fence_never_launches_below_it(
    tmp_path: Path, clouds: tuple[FakeVast, FakeRunPod], capsys: pytest.CaptureFixture[str]
) -> None:
    from respawn.controller.ledger import read_ledger
    from tests.test_control_safety import cli, cloud_fleet, store_of

    vast, _ = clouds
    path = cloud_fleet(tmp_path, clouds, ["vast"])
    fleet = load_config(path)
    store = store_of(fleet)
    _fence(store, 5)  # the only trace of five launches: ledger, pointer and heartbeat are gone
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown", report.plan.verdict.reason
    assert "fence" in report.plan.verdict.reason and vast.count("create") == 0
    assert cli(capsys, "ledger", "repair", "-c", str(path), "--run", "job")[0] == 0
    assert read_ledger(store).generation == 5
    tick(fleet)
    assert vast.bodies[-1]["env"]["RESPAWN_GENERATION"] == "6"
    assert store.current_generation() == 6


def test_a_made_up_fence_lasts_one_tick_with_a_signed_ledger(
    tmp_path: Path, clouds: tuple[FakeVast, FakeRunPod], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESPAWN_LEDGER_SECRET", SECRET)
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)  # g1
    pod_view = CheckpointStore(FileBackend.from_url(f"file://{tmp_path / 'store'}"), "job")
    _fence(pod_view, 5)  # a pod key fences every pod with a plausible made-up generation
    with pytest.raises(FencedError):
        pod_view.check_fence(1)
    tick(fleet)
    pod_view.check_fence(1)  # the controller's ledger is the truth: the fence is back at g1
    assert vast.count("create") == 1
