"""The pointer protocol (docs/contracts.md), against the file:// store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from respawn.store.backend import Backend
from respawn.store.file_backend import FileBackend
from respawn.store.schema import Heartbeat, utcnow
from respawn.store.store import (
    BackwardsError,
    CheckpointStore,
    FencedError,
    NothingVerifiesError,
    StoreError,
)
from tests.conftest import make_step

FROZEN = b"F" * 50_000


def files_for(step: int) -> dict[str, bytes]:
    return {
        f"outputs/weights/step_{step}/frozen.bin": FROZEN,
        f"outputs/weights/step_{step}/model.bin": f"model-{step}".encode() * 100,
        f"outputs/checkpoints/step_{step}/state.json": json.dumps({"step": step}).encode(),
    }


class RecordingBackend:
    """The far side of the wire, instrumented: it records every write and can fail one."""

    def __init__(self, inner: Backend, fail_after_uploads: int | None = None) -> None:
        self.inner = inner
        self.url = inner.url
        self.writes: list[str] = []
        self.fail_after = fail_after_uploads

    def _note(self, key: str) -> None:
        if self.fail_after is not None and key.endswith(".bin"):
            if self.fail_after == 0:
                raise StoreError(f"injected failure before {key}")
            self.fail_after -= 1
        self.writes.append(key)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._note(key)
        self.inner.write_bytes(key, data)

    def upload(self, key, src, size, progress=None, sha1=None):  # type: ignore[no-untyped-def]
        self._note(key)
        return self.inner.upload(key, src, size, progress, sha1)

    def copy(self, src_key: str, dst_key: str, sha1: str, size: int) -> bool:
        self._note(dst_key)
        return self.inner.copy(src_key, dst_key, sha1, size)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_files_then_manifest_then_pointer(store: CheckpointStore, tmp_path: Path) -> None:
    backend = RecordingBackend(store.backend)
    recorded = CheckpointStore(backend, "r", workers=1)  # type: ignore[arg-type]
    res = recorded.publish(10, make_step(tmp_path, 10, files_for(10)), generation=1, writer="t")
    manifest_at = backend.writes.index(res.pointer.manifest)
    assert res.pointer.manifest.startswith("r/checkpoints/step_000010/MANIFEST-g000001-")
    assert backend.writes[-1] == "r/latest.json"
    assert all(
        k.startswith("r/checkpoints/step_000010/g000001-") and "/outputs/" in k
        for k in backend.writes[:manifest_at]
    )
    assert manifest_at == len(backend.writes) - 2


def test_sync_killed_between_files_leaves_old_pointer(
    store: CheckpointStore, tmp_path: Path
) -> None:
    store.publish(5, make_step(tmp_path, 5, files_for(5)), generation=1, writer="t")
    flaky_backend = RecordingBackend(store.backend, fail_after_uploads=1)
    flaky = CheckpointStore(flaky_backend, store.run, workers=1)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="injected"):
        flaky.publish(10, make_step(tmp_path, 10, files_for(10)), generation=1, writer="t")
    pointer = store.read_pointer()
    assert pointer is not None and pointer.step == 5
    assert store.read_manifest(10) is None
    result = store.pull(tmp_path / "restore", quiet=True)
    assert result is not None and result.step == 5
    # The step is retried on the next round and then lands.
    store.publish(10, make_step(tmp_path, 10, files_for(10)), generation=1, writer="t")
    assert store.read_pointer().step == 10  # type: ignore[union-attr]


def test_pull_restores_relative_paths_and_verifies(store: CheckpointStore, tmp_path: Path) -> None:
    assert store.pull(tmp_path / "empty") is None  # no pointer yet: fresh start
    store.publish(3, make_step(tmp_path, 3, files_for(3)), generation=1, writer="t")
    dest = tmp_path / "dest"
    result = store.pull(dest, quiet=True)
    assert result is not None and result.step == 3 and not result.fell_back
    for rel, data in files_for(3).items():
        assert (dest / rel).read_bytes() == data
    assert not list(dest.glob(".respawn-staging-*"))


def _corrupt(store: CheckpointStore, step: int, rel: str, same_size: bool = True) -> None:
    """Replace one stored object of one step with different bytes (a new object: a linked or
    copied twin in another step stays intact)."""
    manifest = store.read_manifest(step)
    assert manifest is not None
    key = store.keys.object_key(manifest, rel)
    data = store.backend.read_bytes(key)
    assert data is not None
    store.backend.write_bytes(key, bytes([data[0] ^ 1]) + data[1:] if same_size else data[:-1])


@pytest.mark.parametrize("same_size", [True, False])
def test_corrupt_file_falls_back_to_older_step(
    store: CheckpointStore, tmp_path: Path, same_size: bool
) -> None:
    for step in (5, 10):
        store.publish(step, make_step(tmp_path, step, files_for(step)), generation=1, writer="t")
    _corrupt(store, 10, "outputs/weights/step_10/model.bin", same_size)
    dest = tmp_path / "dest"
    result = store.pull(dest, quiet=True)
    assert result is not None
    assert result.step == 5 and result.fell_back
    assert result.rejected[0][0] == 10
    assert ("sha1" if same_size else "size") in result.rejected[0][1]
    assert (dest / "outputs/weights/step_5/model.bin").read_bytes() == files_for(5)[
        "outputs/weights/step_5/model.bin"
    ]
    assert not (dest / "outputs/weights/step_10").exists()


def test_nothing_verifies_is_an_error(store: CheckpointStore, tmp_path: Path) -> None:
    store.publish(5, make_step(tmp_path, 5, files_for(5)), generation=1, writer="t")
    _corrupt(store, 5, "outputs/checkpoints/step_5/state.json")
    with pytest.raises(NothingVerifiesError, match=r"step 5: .*sha1"):
        store.pull(tmp_path / "dest", quiet=True)


def test_older_generation_cannot_move_pointer(store: CheckpointStore, tmp_path: Path) -> None:
    store.publish(10, make_step(tmp_path, 10, files_for(10)), generation=2, writer="new")
    with pytest.raises(FencedError):
        store.publish(20, make_step(tmp_path, 20, files_for(20)), generation=1, writer="old")
    pointer = store.read_pointer()
    assert pointer is not None and (pointer.step, pointer.generation) == (10, 2)


def test_ledger_generation_fences_before_any_pointer(
    store: CheckpointStore, tmp_path: Path
) -> None:
    store.publish(10, make_step(tmp_path, 10, files_for(10)), generation=1, writer="g1")
    # The controller launched g2 (a store from before the fence and `_control/`).
    store.write_json(store.keys.legacy(store.keys.ledger) or "", {"generation": 2})
    with pytest.raises(FencedError, match="generation 2 owns"):
        store.publish(15, make_step(tmp_path, 15, files_for(15)), generation=1, writer="g1")
    assert store.read_pointer().step == 10  # type: ignore[union-attr]


def test_heartbeat_of_newer_generation_fences(store: CheckpointStore) -> None:
    store.write_heartbeat(
        Heartbeat(run="run-a", generation=4, writer="x", at=utcnow(), phase="restoring")
    )
    with pytest.raises(FencedError):
        store.check_fence(3)
    store.check_fence(4)


def test_pointer_never_moves_backwards(store: CheckpointStore, tmp_path: Path) -> None:
    store.publish(10, make_step(tmp_path, 10, files_for(10)), generation=1, writer="t")
    for step in (10, 5):
        with pytest.raises(BackwardsError):
            store.publish(
                step, make_step(tmp_path, step, files_for(step)), generation=1, writer="t"
            )
    assert store.read_pointer().step == 10  # type: ignore[union-attr]


def test_explicit_rollback_moves_back(store: CheckpointStore, tmp_path: Path) -> None:
    for step in (5, 10):
        store.publish(step, make_step(tmp_path, step, files_for(step)), generation=1, writer="t")
    store.rollback_pointer(5, generation=1, writer="controller")
    assert store.read_pointer().step == 5  # type: ignore[union-attr]
    with pytest.raises(StoreError, match="no manifest"):
        store.rollback_pointer(7, generation=1, writer="controller")


def test_unchanged_files_are_not_sent_again(store: CheckpointStore, tmp_path: Path) -> None:
    first = store.publish(5, make_step(tmp_path, 5, files_for(5)), generation=1, writer="t")
    # Same relative paths as step 5 except the step directory: match is by size + sha1.
    second = store.publish(10, make_step(tmp_path, 10, files_for(10)), generation=1, writer="t")
    assert first.bytes_copied == 0
    assert second.bytes_copied == len(FROZEN)
    assert second.bytes_sent == sum(map(len, files_for(10).values())) - len(FROZEN)
    m10 = store.read_manifest(10)
    assert m10 is not None
    key = store.keys.object_key(m10, "outputs/weights/step_10/frozen.bin")
    assert store.backend.read_bytes(key) == FROZEN


def test_file_store_never_shares_one_inode_between_steps(tmp_path: Path) -> None:
    """A hard link would let one rotten block poison every later step (issue 8.1)."""
    store = CheckpointStore(FileBackend.from_url(f"file://{tmp_path / 'store'}"), "r")
    for step in (5, 10):
        store.publish(step, make_step(tmp_path, step, files_for(step)), generation=1, writer="t")
    root = tmp_path / "store"
    m5, m10 = store.read_manifest(5), store.read_manifest(10)
    assert m5 is not None and m10 is not None
    a = root / store.keys.object_key(m5, "outputs/weights/step_5/frozen.bin")
    b = root / store.keys.object_key(m10, "outputs/weights/step_10/frozen.bin")
    assert os.stat(a).st_ino != os.stat(b).st_ino
    assert a.read_bytes() == b.read_bytes() == FROZEN


def test_retention_keeps_last_k_pointer_and_fallback(
    store: CheckpointStore, tmp_path: Path
) -> None:
    for step in range(1, 7):
        store.publish(step, make_step(tmp_path, step, files_for(step)), generation=1, writer="t")
    # An abandoned half-upload below the pointer, and an in-flight one above it.
    store.backend.write_bytes(store.keys.step_file(2, "junk.bin"), b"x")
    store.backend.write_bytes(store.keys.step_file(9, "inflight.bin"), b"x")
    # In flight means young: b2sdk's simulator dates every upload in 1970.
    deleted = store.gc(keep_last=2, leftover_age_s=1e12)
    assert deleted == [1, 2, 3, 4]
    assert store.manifested_steps() == [5, 6]
    assert store.backend.read_bytes(store.keys.step_file(9, "inflight.bin")) == b"x"
    # Still restorable after gc, even though linked files were deleted from older steps.
    assert store.pull(tmp_path / "d", quiet=True).step == 6  # type: ignore[union-attr]


def test_retention_never_deletes_pointer_step_after_rollback(
    store: CheckpointStore, tmp_path: Path
) -> None:
    for step in range(1, 6):
        store.publish(step, make_step(tmp_path, step, files_for(step)), generation=1, writer="t")
    store.rollback_pointer(2, generation=1, writer="controller")
    store.gc(keep_last=2)
    steps = store.manifested_steps()
    assert 2 in steps and 1 in steps  # the pointer's step and its fallback
    assert {3, 4, 5} <= set(steps)  # newer than the pointer: untouched


def test_retention_spares_step_a_pod_is_restoring(store: CheckpointStore, tmp_path: Path) -> None:
    for step in range(1, 6):
        store.publish(step, make_step(tmp_path, step, files_for(step)), generation=1, writer="t")
    store.write_heartbeat(
        Heartbeat(
            run="run-a", generation=1, writer="x", at=utcnow(), phase="restoring", restoring_step=2
        )
    )
    assert store.gc(keep_last=2) == [1, 3]


def test_retention_keeps_milestones(store: CheckpointStore, tmp_path: Path) -> None:
    for step in range(1, 11):
        store.publish(step, make_step(tmp_path, step, files_for(step)), generation=1, writer="t")
    store.gc(keep_last=2, keep_every=4)
    assert store.manifested_steps() == [4, 8, 9, 10]


def test_keep_last_below_two_is_refused(store: CheckpointStore) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        store.gc(keep_last=1)


def test_malformed_pointer_is_an_error_not_a_fresh_start(store: CheckpointStore) -> None:
    store.backend.write_bytes(store.keys.latest, b'{"schema": 1, "run": "run-a"}')
    with pytest.raises(StoreError, match=r"latest\.json is malformed"):
        store.read_pointer()
    store.backend.write_bytes(store.keys.latest, b"{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.pull(Path("/nonexistent"))
    assert store.backend.read_bytes("run-a/no-such-key") is None


def test_file_url_must_be_absolute() -> None:
    from respawn.store import open_backend
    from respawn.store.backend import StoreConfigError

    with pytest.raises(StoreConfigError, match="absolute path"):
        open_backend("file://relative/path")
    with pytest.raises(StoreConfigError, match="unsupported store URL"):
        open_backend("s3://bucket")
