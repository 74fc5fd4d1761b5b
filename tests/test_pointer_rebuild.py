"""Issue 18.1: the pointer is a cache of the truth (the verified manifests). A deleted or
garbage `latest.json` with verified steps remaining is rebuilt at the newest of them, by the
controller (from the listing, without downloading a checkpoint) and by a pod (verifying every
byte), and training resumes there, never from step 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from respawn.controller.config import load_config
from respawn.controller.model import RepairPointer
from respawn.controller.reconcile import tick
from respawn.controller.stores import open_run_store
from respawn.store.store import CheckpointStore
from tests.conftest import make_step, wait_for
from tests.test_pod import SOURCES, TOY, pod_spec, start_pod
from tests.test_reconcile import local, write_fleet


def _publish(store: CheckpointStore, tmp_path: Path, steps: tuple[int, ...]) -> None:
    for step in steps:
        files = make_step(
            tmp_path, step, {f"ck/step_{step}/DONE": b"", f"ck/step_{step}/w": bytes([step]) * 64}
        )
        store.publish(step, files, generation=0, writer="cli")


def test_rebuild_pointer_takes_the_newest_step_that_matches_the_listing(
    store: CheckpointStore, tmp_path: Path
) -> None:
    for step in (1, 2, 3, 4):
        files = {"w.bin": bytes([step]) * 100, "opt.bin": bytes([step]) * 10}
        store.publish(step, make_step(tmp_path, step, files), generation=1, writer="g1")
    m3, m4 = store.read_manifest(3), store.read_manifest(4)
    assert m3 is not None and m4 is not None
    store.backend.write_bytes(store.keys.object_key(m4, "w.bin"), b"x" * 99)  # truncated
    store.backend.delete([store.keys.object_key(m3, "opt.bin")])  # lost
    store.backend.delete([store.keys.latest])
    rebuilt = store.rebuild_pointer(generation=1, writer="respawn-controller:repair")
    assert rebuilt is not None and rebuilt.step == 2
    assert store.read_pointer() == rebuilt
    assert [(e.kind, e.step) for e in store.repairs()] == [("pointer-rebuilt", 2)]


def test_rebuild_pointer_checks_the_sha1_a_bucket_listing_reports(tmp_path: Path) -> None:
    from respawn.store.b2_backend import B2Backend
    from tests.conftest import b2_simulator

    api, _sim = b2_simulator()
    store = CheckpointStore(B2Backend(api, "respawn-test", "fleet/prefix"), "run-a")
    for step in (1, 2):
        store.publish(step, make_step(tmp_path, step, {"w.bin": bytes([step]) * 50}), 1, "g1")
    m2 = store.read_manifest(2)
    assert m2 is not None
    store.backend.write_bytes(store.keys.object_key(m2, "w.bin"), b"\xff" * 50)  # same size
    store.write_json(store.keys.latest, {"garbage": True})
    rebuilt = store.rebuild_pointer(generation=1, writer="w")
    assert rebuilt is not None and rebuilt.step == 1


RECORD = (
    "{python} -c \"import sys, time; open(sys.argv[1], 'w').write(sys.argv[2]); "
    'time.sleep(120)" %s {resume_step}'
)


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_a_lost_pointer_is_rebuilt_by_the_next_tick_and_the_pod_resumes_there(
    tmp_path: Path, damage: str
) -> None:
    resumed = tmp_path / "resumed"
    fleet = load_config(write_fleet(tmp_path, RECORD % resumed))
    store = open_run_store(fleet.store, "job")
    _publish(store, tmp_path, (10, 20, 30))
    latest = tmp_path / "store/job/latest.json"
    if damage == "deleted":
        latest.unlink()
    else:
        latest.write_text("{garbage")
    try:
        (report,) = tick(fleet)
        assert isinstance(report.plan.actions[0], RepairPointer), report.plan.actions
        assert report.results[0].ok, report.results[0].detail
        assert any(
            "rebuilding latest.json" in r.detail or "alert" in r.action.kind for r in report.results
        )
        pointer = store.read_pointer()
        assert pointer is not None and pointer.step == 30
        assert [(e.kind, e.step) for e in store.repairs()] == [("pointer-rebuilt", 30)]
        wait_for(lambda: resumed.exists() and resumed.read_text() != "", timeout=30)
        assert resumed.read_text() == "30"
    finally:
        provider = local(fleet)
        for inst in provider.list_instances("job"):
            provider.terminate(inst.id)


def test_a_pod_without_a_pointer_restores_the_newest_step_that_verifies(tmp_path: Path) -> None:
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    first = start_pod(tmp_path, pod_spec(TOY % (20, "0")), generation=1, name="a")
    assert first.wait(timeout=30) == 0
    assert store.read_pointer().step == 20  # type: ignore[union-attr]
    store.backend.delete([store.keys.latest])
    second = start_pod(tmp_path, pod_spec(TOY % (25, "0")), generation=2, name="b")
    out, _ = second.communicate(timeout=30)
    assert second.returncode == 0, out
    assert "restored step 20" in out
    assert store.read_pointer().step == 25  # type: ignore[union-attr]
    assert ("pointer-rebuilt", 20) in [(e.kind, e.step) for e in store.repairs()]


def test_a_pod_may_be_told_to_start_fresh_without_a_pointer(tmp_path: Path) -> None:
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    first = start_pod(tmp_path, pod_spec(TOY % (10, "0")), generation=1, name="a")
    assert first.wait(timeout=30) == 0
    store.backend.delete([store.keys.latest])
    checkpoints = {"sources": SOURCES, "fresh_without_pointer": True}
    second = start_pod(
        tmp_path, pod_spec(TOY % (3, "0"), checkpoints=checkpoints), generation=2, name="b"
    )
    out, _ = second.communicate(timeout=30)
    assert "starting fresh" in out, out


def test_a_first_publish_racing_the_set_aside_of_a_garbage_pointer_keeps_its_step(
    tmp_path: Path,
) -> None:
    """A run with no manifest and a garbage pointer: the tick sets the pointer aside, and a
    pod publishing its first step writes its manifest and pointer in the moment between the
    tick's read and its removal. The step must still be pointed at afterwards."""
    from respawn.store.file_backend import FileBackend

    root = tmp_path / "store"
    pod = CheckpointStore.open(f"file://{root}", "job")

    class PodPublishesMeanwhile(FileBackend):
        raced = False

        def delete(self, keys: list[str]) -> None:
            if pod.keys.latest in keys and not self.raced:
                self.raced = True
                _publish(pod, tmp_path, (10,))  # files, manifest, then the pointer
            super().delete(keys)

    pod.backend.write_bytes(pod.keys.latest, b'{"generation": 1, garbage')
    controller = CheckpointStore(PodPublishesMeanwhile(root), "job")
    kept = controller.set_pointer_aside(generation=1, writer="respawn-controller:repair")
    assert kept is not None and (root / kept).read_bytes().startswith(b'{"generation": 1')
    pointer = pod.read_pointer()
    assert pointer is not None and pointer.step == 10
