"""What only B2 has: keys and capabilities, multi-part files, versions, transient failures.

The store contract itself runs against B2 in test_store.py; this is b2sdk's RawSimulator
behind the real B2Api throughout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from b2sdk.v2 import exception as b2exc

from respawn.store import b2_backend
from respawn.store.b2_backend import B2Backend
from respawn.store.backend import StoreConfigError
from respawn.store.store import CheckpointStore, StoreError
from tests.conftest import b2_simulator, make_step

URL = "b2://respawn-test/fleet"


def new_key(api: object, capabilities: list[str]) -> tuple[str, str]:
    key = api.create_key(capabilities=capabilities, key_name="respawn-test-key")  # type: ignore[attr-defined]
    return key.id_, key.application_key


def test_bad_key_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    api, _ = b2_simulator()
    monkeypatch.setenv("B2_APPLICATION_KEY_ID", "no-such-key")
    monkeypatch.setenv("B2_APPLICATION_KEY", "nope")
    with pytest.raises(StoreConfigError, match="rejected the application key"):
        B2Backend.from_url(URL, api=api)


def test_missing_credentials_name_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_B2_ID", raising=False)
    monkeypatch.setenv("MY_B2_KEY", "x")
    with pytest.raises(StoreConfigError, match="set MY_B2_ID"):
        B2Backend.from_url(URL, "MY_B2_ID", "MY_B2_KEY")


def test_missing_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    api, _sim = b2_simulator()
    key_id, key = new_key(api, list(b2_backend.NEEDED_CAPABILITIES))
    monkeypatch.setenv("B2_APPLICATION_KEY_ID", key_id)
    monkeypatch.setenv("B2_APPLICATION_KEY", key)
    with pytest.raises(StoreConfigError, match="'no-such-bucket' does not exist"):
        B2Backend.from_url("b2://no-such-bucket/x", api=api)


def test_key_without_needed_capabilities_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    api, _ = b2_simulator()
    key_id, key = new_key(api, ["listBuckets", "listFiles", "readFiles"])
    monkeypatch.setenv("B2_APPLICATION_KEY_ID", key_id)
    monkeypatch.setenv("B2_APPLICATION_KEY", key)
    with pytest.raises(StoreConfigError, match="lacks capabilities writeFiles, deleteFiles"):
        B2Backend.from_url(URL, api=api)


def test_full_key_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    api, _ = b2_simulator()
    key_id, key = new_key(api, list(b2_backend.NEEDED_CAPABILITIES))
    monkeypatch.setenv("B2_APPLICATION_KEY_ID", key_id)
    monkeypatch.setenv("B2_APPLICATION_KEY", key)
    backend = B2Backend.from_url(URL, api=api)
    backend.write_bytes("r/x.json", b"{}")
    assert backend.read_bytes("r/x.json") == b"{}"
    assert [o.key for o in backend.list("r/")] == ["r/x.json"]


def b2_store() -> tuple[CheckpointStore, object]:
    api, sim = b2_simulator()
    return CheckpointStore(B2Backend(api, "respawn-test", "fleet"), "run", workers=1), sim


def test_upload_errors_mid_step_leave_pointer_and_retry_next_round(tmp_path: Path) -> None:
    store, sim = b2_store()
    store.publish(1, make_step(tmp_path, 1, {"a.bin": b"a" * 100}), generation=1, writer="t")
    # More 503s than b2sdk's own retries times ours: this round of the sync fails.
    sim.set_upload_errors([b2exc.ServiceError("503 injected")] * 40)  # type: ignore[attr-defined]
    files = make_step(tmp_path, 2, {"a.bin": b"b" * 100, "b.bin": b"c" * 100})
    with pytest.raises(StoreError):
        store.publish(2, files, generation=1, writer="t")
    assert store.read_pointer().step == 1  # type: ignore[union-attr]
    sim.upload_errors.clear()  # type: ignore[attr-defined]
    store.publish(2, files, generation=1, writer="t")
    assert store.read_pointer().step == 2  # type: ignore[union-attr]


def test_transient_errors_are_retried_within_a_call(tmp_path: Path) -> None:
    store, sim = b2_store()
    sim.set_upload_errors([b2exc.ServiceError("503 injected")] * 7)  # type: ignore[attr-defined]
    store.publish(1, make_step(tmp_path, 1, {"a.bin": b"a" * 100}), generation=1, writer="t")
    assert store.read_pointer().step == 1  # type: ignore[union-attr]


def test_corrupt_large_file_is_detected_and_falls_back(tmp_path: Path) -> None:
    store, sim = b2_store()
    big = bytes(range(256)) * 40  # 10 KiB: a multi-part "large file" on the simulator
    store.publish(1, make_step(tmp_path, 1, {"w/model.bin": big}), generation=1, writer="t")
    store.publish(2, make_step(tmp_path, 2, {"w/model.bin": big[::-1]}), generation=1, writer="t")
    bucket = sim.bucket_name_to_bucket["respawn-test"]  # type: ignore[attr-defined]
    name = "fleet/" + store.keys.object_key(store.read_manifest(2), "w/model.bin")  # type: ignore[arg-type]
    (fsim,) = [f for (n, _), f in bucket.file_name_and_id_to_file.items() if n == name]
    assert fsim.content_sha1 == "none"  # a large file: b2sdk has no whole-file hash to check
    fsim.data_bytes = bytes([fsim.data_bytes[0] ^ 0xFF]) + fsim.data_bytes[1:]

    result = store.pull(tmp_path / "dest", quiet=True)
    assert result is not None and result.step == 1
    assert result.rejected[0][0] == 2 and "sha1" in result.rejected[0][1]
    assert (tmp_path / "dest/w/model.bin").read_bytes() == big


def test_unchanged_file_is_copied_server_side(tmp_path: Path) -> None:
    store, _sim = b2_store()
    big = b"z" * 5000
    store.publish(1, make_step(tmp_path, 1, {"frozen.bin": big, "m.bin": b"1"}), 1, "t")
    res = store.publish(2, make_step(tmp_path, 2, {"frozen.bin": big, "m.bin": b"2"}), 1, "t")
    assert (res.bytes_sent, res.bytes_copied) == (1, 5000)
    key = store.keys.object_key(store.read_manifest(2), "frozen.bin")  # type: ignore[arg-type]
    assert store.backend.read_bytes(key) == big


def test_retention_deletes_every_version(tmp_path: Path) -> None:
    store, _sim = b2_store()
    backend = store.backend
    assert isinstance(backend, B2Backend)
    for step in range(1, 5):
        # Publish step 1 twice over (an earlier aborted attempt left a version behind).
        store.publish(step, make_step(tmp_path, step, {"m.bin": bytes([step]) * 300}), 1, "t")
    backend.write_bytes(store.keys.step_file(1, "m.bin"), b"old version")
    assert store.gc(keep_last=2) == [1, 2]
    all_versions = [
        v.file_name for v, _ in backend.bucket.ls("fleet/", recursive=True, latest_only=False)
    ]
    assert not [n for n in all_versions if "step_000001" in n or "step_000002" in n]
    assert store.manifested_steps() == [3, 4]


def test_progress_counts_every_byte(tmp_path: Path) -> None:
    store, _ = b2_store()
    big = b"q" * 12_345
    seen: list[int] = []
    store.publish(1, make_step(tmp_path, 1, {"x.bin": big}), 1, "t", progress=seen.append)
    assert sum(seen) == len(big)


def test_store_url_prefix_isolates_fleets(tmp_path: Path) -> None:
    api, _ = b2_simulator()
    a = CheckpointStore(B2Backend(api, "respawn-test", "team-a"), "run")
    b = CheckpointStore(B2Backend(api, "respawn-test", "team-b"), "run")
    a.publish(1, make_step(tmp_path, 1, {"x.bin": b"x"}), 1, "t")
    assert b.read_pointer() is None and b.manifested_steps() == []


def test_expired_auth_token_is_renewed_mid_run(tmp_path: Path) -> None:
    api, sim = b2_simulator()
    store = CheckpointStore(B2Backend(api, "respawn-test", "fleet"), "run", workers=1)
    store.publish(1, make_step(tmp_path, 1, {"a.bin": b"a" * 300}), 1, "t")
    sim.expire_auth_token(api.account_info.get_account_auth_token())
    store.publish(2, make_step(tmp_path, 2, {"a.bin": b"b" * 300}), 1, "t")
    assert store.read_pointer().step == 2  # type: ignore[union-attr]
