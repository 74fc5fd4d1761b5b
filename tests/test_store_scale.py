"""Store operations over a long history: their calls go at once (bounded), each key retried on
its own, and a pull whose pointer verifies never lists the history (issue 15)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from respawn.controller.ckpt_cli import _ls
from respawn.store import many
from respawn.store.backend import Backend, ObjectInfo
from respawn.store.disk import LocalFile
from respawn.store.store import CheckpointStore, StoreError
from tests.conftest import make_step


def _files(step: int) -> dict[str, bytes]:
    return {
        f"ckpt/step_{step}/model.bin": f"model-{step}".encode() * 50,
        f"ckpt/step_{step}/state.json": f'{{"step": {step}}}'.encode(),
    }


class Spy:
    """The far side of the wire, instrumented: calls by kind, the most in flight at once,
    the order of deleted keys, and deletes that fail once (a transient error)."""

    def __init__(self, inner: Backend, fail_once: set[str] | None = None) -> None:
        self.inner = inner
        self.url = inner.url
        self.calls: dict[str, int] = {}
        self.deleted: list[str] = []
        self.fail_once = set(fail_once or ())
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()

    def _enter(self, kind: str) -> None:
        with self.lock:
            self.calls[kind] = self.calls.get(kind, 0) + 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(0.01)  # a round trip, so overlapping calls can be seen overlapping

    def _leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes | None:
        self._enter("read")
        try:
            return self.inner.read_bytes(key, max_bytes)
        finally:
            self._leave()

    def list(self, prefix: str) -> list[ObjectInfo]:
        self._enter("list")
        try:
            return self.inner.list(prefix)
        finally:
            self._leave()

    def delete(self, keys: list[str]) -> None:
        self._enter("delete")
        try:
            with self.lock:
                failing = self.fail_once & set(keys)
                self.fail_once -= failing
            if failing:
                raise StoreError(f"injected transient failure deleting {sorted(failing)}")
            self.inner.delete(keys)
            with self.lock:
                self.deleted += keys
        finally:
            self._leave()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _history(store: CheckpointStore, tmp_path: Path, steps: int) -> None:
    for step in range(1, steps + 1):
        store.publish(step, make_step(tmp_path, step, _files(step)), generation=1, writer="t")


def test_pull_of_a_verifying_pointer_lists_nothing(store: CheckpointStore, tmp_path: Path) -> None:
    _history(store, tmp_path, 3)
    spy = Spy(store.backend)
    result = CheckpointStore(spy, store.run).pull(tmp_path / "dest", quiet=True)  # type: ignore[arg-type]
    assert result is not None and result.step == 3 and not result.fell_back
    assert spy.calls.get("list", 0) == 0
    assert (tmp_path / "dest/ckpt/step_3/model.bin").read_bytes() == _files(3)[
        "ckpt/step_3/model.bin"
    ]


def test_pull_lists_the_history_only_to_fall_back(store: CheckpointStore, tmp_path: Path) -> None:
    _history(store, tmp_path, 3)
    manifest = store.read_manifest(3)
    assert manifest is not None
    store.backend.write_bytes(
        store.keys.object_key(manifest, "ckpt/step_3/state.json"), b'{"step": 9}'
    )
    spy = Spy(store.backend)
    result = CheckpointStore(spy, store.run).pull(tmp_path / "dest", quiet=True)  # type: ignore[arg-type]
    assert result is not None and result.step == 2 and result.fell_back
    assert spy.calls.get("list", 0) >= 1


def test_gc_deletes_at_once_manifests_first_and_retries_a_failed_key(
    store: CheckpointStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(many, "RETRY_WAIT_S", 0)
    _history(store, tmp_path, 8)
    doomed_manifest = store.manifest_key(3)
    assert doomed_manifest is not None
    spy = Spy(store.backend, fail_once={doomed_manifest})
    gone = CheckpointStore(spy, store.run).gc(keep_last=2)  # type: ignore[arg-type]
    assert gone == [1, 2, 3, 4, 5, 6]
    assert store.manifested_steps() == [7, 8]
    assert not any(o.key.startswith(store.keys.step_prefix(3)) for o in store.backend.list(""))
    is_manifest = [store.keys.parse_manifest_key(k) is not None for k in spy.deleted]
    # Every doomed manifest is gone before any of their objects: no half-deleted step ever
    # looks whole to a reader.
    assert is_manifest == sorted(is_manifest, reverse=True)
    assert spy.most_in_flight > 1
    assert store.pull(tmp_path / "d", quiet=True).step == 8  # type: ignore[union-attr]


def test_ls_reads_the_history_at_once(
    store: CheckpointStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _history(store, tmp_path, 6)
    spy = Spy(store.backend)
    assert _ls(CheckpointStore(spy, store.run), as_json=False, verify=False) == 0  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert all(f"step {s:>8}" in out for s in range(1, 7))
    assert "latest.json → step 6" in out
    assert spy.most_in_flight > 1


def _hash_passes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every separate hashing pass the store makes over a local file before sending it."""
    from respawn.store import publish as store_module

    seen: list[str] = []
    real = store_module.sha1_file

    def counted(path: Path) -> str:
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(store_module, "sha1_file", counted)
    return seen


def test_push_where_every_file_changed_reads_each_file_once(
    store: CheckpointStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _history(store, tmp_path, 2)  # step 2 changed every file of step 1 (same sizes)
    passes = _hash_passes(monkeypatch)
    res = store.publish(3, make_step(tmp_path, 3, _files(3)), generation=1, writer="t")
    assert passes == []  # hashed only while sending
    assert res.bytes_copied == 0
    pulled = store.pull(tmp_path / "dest", quiet=True)
    assert pulled is not None and pulled.step == 3
    for rel, data in _files(3).items():
        assert (tmp_path / "dest" / rel).read_bytes() == data


def test_unchanged_file_known_by_inode_is_copied_without_reading(
    store: CheckpointStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_step(tmp_path, 1, {"ckpt/step_1/frozen.bin": b"F" * 4096})
    store.publish(1, first, generation=1, writer="t")
    # The trainer hard-links the unchanged shard into the next step: same inode, size, mtime.
    second = tmp_path / "src_2/ckpt/step_2/frozen.bin"
    second.parent.mkdir(parents=True)
    os.link(first[0].abs, second)
    passes = _hash_passes(monkeypatch)
    res = store.publish(2, [LocalFile("ckpt/step_2/frozen.bin", second, 4096)], 1, "t")
    assert passes == [] and res.bytes_copied == 4096 and res.bytes_sent == 0


def test_unchanged_file_over_a_rotten_stored_copy_is_sent_again(
    store: CheckpointStore, tmp_path: Path
) -> None:
    first = make_step(tmp_path, 1, {"ckpt/step_1/frozen.bin": b"F" * 4096})
    store.publish(1, first, generation=1, writer="t")
    m1 = store.read_manifest(1)
    assert m1 is not None
    store.backend.write_bytes(store.keys.object_key(m1, "ckpt/step_1/frozen.bin"), b"R" * 4096)
    second = tmp_path / "src_2/ckpt/step_2/frozen.bin"
    second.parent.mkdir(parents=True)
    os.link(first[0].abs, second)
    res = store.publish(2, [LocalFile("ckpt/step_2/frozen.bin", second, 4096)], 1, "t")
    assert res.bytes_sent == 4096 and res.bytes_copied == 0
    pulled = store.pull(tmp_path / "dest", quiet=True)
    assert pulled is not None and pulled.step == 2
    assert (tmp_path / "dest/ckpt/step_2/frozen.bin").read_bytes() == b"F" * 4096


def test_b2_deletes_keys_at_once_each_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    from respawn.store import b2_backend
    from respawn.store.b2_backend import B2Backend
    from tests.conftest import b2_simulator

    monkeypatch.setattr(b2_backend, "BACKOFF_SECONDS", 0)
    api, sim = b2_simulator()
    backend = B2Backend(api, "respawn-test", "p")
    keys = [f"run/checkpoints/step_000001/g000001-t/f{i}.bin" for i in range(8)]
    for k in keys:
        backend.write_bytes(k, b"old")
        backend.write_bytes(k, b"new")  # two versions: both must go
    real = sim.delete_file_version
    state = {"in_flight": 0, "most": 0, "failed": False}
    lock = threading.Lock()

    def delete_version(*a: object, **kw: object) -> object:
        with lock:
            state["in_flight"] += 1
            state["most"] = max(state["most"], state["in_flight"])
            fail = not state["failed"]
            state["failed"] = True
        try:
            time.sleep(0.01)
            if fail:  # one transient failure: only that key is asked again
                from b2sdk.v2.exception import ServiceError

                raise ServiceError("503 injected")
            return real(*a, **kw)
        finally:
            with lock:
                state["in_flight"] -= 1

    monkeypatch.setattr(sim, "delete_file_version", delete_version)
    backend.delete(keys)
    assert backend.list("run/") == []
    assert not list(api.get_bucket_by_name("respawn-test").list_file_versions(f"p/{keys[0]}"))
    assert state["most"] > 1
