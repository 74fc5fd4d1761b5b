"""Issue 18.4: a store outage during restore is an outage, not corruption. Reads that fail
without proving bad bytes are retried until the restore deadline and never quarantine a step,
move the pointer, or make the pod report a failure that "will repeat"; a listing that cannot
be read fails instead of listing nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from respawn.store.file_backend import FileBackend
from respawn.store.store import (
    CheckpointStore,
    NothingVerifiesError,
    StoreError,
    StoreUnavailableError,
)
from tests.conftest import make_step
from tests.fakes.outage import OutageBackend
from tests.test_pod import SOURCES, TOY, pod_spec, start_pod


def _two_steps(store: CheckpointStore, tmp_path: Path) -> None:
    for step in (1, 2):
        files = make_step(tmp_path, step, {"w.bin": bytes([step]) * 1000, "opt.bin": b"o" * 10})
        store.publish(step, files, generation=1, writer="g1")


def _through_outage(store: CheckpointStore, seconds: float, reads: str = "all") -> CheckpointStore:
    out = CheckpointStore(OutageBackend(store.backend, seconds, reads), store.run)
    out.read_deadline_s = 30.0
    return out


def test_a_pull_during_a_short_outage_succeeds_and_quarantines_nothing(
    store: CheckpointStore, tmp_path: Path
) -> None:
    _two_steps(store, tmp_path)
    pointer = store.read_pointer()
    flaky = _through_outage(store, seconds=1.0)
    result = flaky.pull(tmp_path / "restored", quiet=True, repair_as=(2, "g2"))
    assert result is not None and result.step == 2 and result.rejected == ()
    assert (tmp_path / "restored" / "w.bin").read_bytes() == bytes([2]) * 1000
    assert flaky.backend.failed > 0  # the outage was met, and waited out
    assert store.quarantined() == {} and store.repairs() == []
    assert store.read_pointer() == pointer


@pytest.mark.parametrize("reads", ["all", "objects"])
def test_a_pull_during_a_lasting_outage_gives_up_as_unavailable_not_corrupt(
    store: CheckpointStore, tmp_path: Path, reads: str
) -> None:
    _two_steps(store, tmp_path)
    pointer = store.read_pointer()
    down = _through_outage(store, seconds=3600, reads=reads)
    down.read_deadline_s = 0.5
    with pytest.raises(StoreUnavailableError) as e:
        down.pull(tmp_path / "restored", quiet=True, repair_as=(2, "g2"))
    assert not isinstance(e.value, NothingVerifiesError)
    assert store.quarantined() == {} and store.repairs() == []
    assert store.read_pointer() == pointer  # not moved off a step that is fine
    assert not (tmp_path / "restored" / "w.bin").exists()


def test_an_unreadable_directory_fails_the_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(FileBackend.from_url(f"file://{tmp_path / 'store'}"), "r")
    _two_steps(store, tmp_path)
    # The file system answers EACCES for the checkpoints directory (a root test process is
    # not stopped by chmod, so the answer is given here, as the kernel would give it).
    real = os.scandir
    blocked = str(tmp_path / "store" / "r" / "checkpoints")

    def scandir(path: object = ".") -> object:
        if os.fspath(path) == blocked:  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", blocked)
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(StoreError, match="Permission denied"):
        store.manifested_steps()
    with pytest.raises(StoreError):
        store.gc(keep_last=2)


def test_a_pod_in_a_lasting_outage_reports_a_failure_that_will_not_repeat(
    tmp_path: Path,
) -> None:
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    files = make_step(tmp_path, 5, {"outputs/weights/step_5/STABLE": b"ok"})
    store.publish(5, files, generation=0, writer="cli")
    manifest = store.read_manifest(5)
    assert manifest is not None
    # The object cannot be read (EISDIR: not a "missing object", not wrong bytes): an I/O
    # failure that proves nothing about the checkpoint.
    obj = tmp_path / "store" / store.keys.object_key(manifest, "outputs/weights/step_5/STABLE")
    obj.unlink()
    obj.mkdir()
    checkpoints = {"sources": SOURCES, "keep_last": 2, "restore_deadline": "1s"}
    spec = pod_spec(TOY % (6, "0"), checkpoints=checkpoints)
    proc = start_pod(tmp_path, spec, generation=1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    hb = store.read_heartbeat()
    assert hb is not None and hb.phase == "failed", out
    assert not hb.will_repeat and "did not answer" in hb.message
    assert store.quarantined() == {}
    pointer = store.read_pointer()
    assert pointer is not None and pointer.step == 5


def test_a_bucket_listing_that_keeps_failing_is_an_error_not_an_empty_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from b2sdk.v2 import exception as b2exc

    from respawn.store.b2_backend import B2Backend
    from tests.conftest import b2_simulator

    api, sim = b2_simulator()
    store = CheckpointStore(B2Backend(api, "respawn-test", "fleet/prefix"), "r")
    _two_steps(store, tmp_path)

    def unavailable(*args: object, **kwargs: object) -> object:
        raise b2exc.ServiceError("503 service_unavailable")

    monkeypatch.setattr(sim, "list_file_names", unavailable)  # the server side answers 503
    with pytest.raises(StoreError):
        store.manifested_steps()
    store.backend.delete([store.keys.latest])
    store.read_deadline_s = 0.3
    with pytest.raises(StoreUnavailableError):
        store.pull(tmp_path / "restored", quiet=True, repair_as=(2, "g2"))


def test_a_write_where_the_store_cannot_make_its_file_is_a_store_error(tmp_path: Path) -> None:
    """Found by the fault soak: a write that failed raised the OSError of its own clean-up (or
    of making its directory), not a StoreError, and that escaped a tick."""
    from respawn.store.backend import StoreError

    backend = FileBackend.from_url(f"file://{tmp_path / 'store'}")
    (tmp_path / "store" / "r").write_text("a file where the run's directory belongs")
    with pytest.raises(StoreError, match=r"cannot write r/tick\.json"):
        backend.write_bytes("r/tick.json", b"{}")
