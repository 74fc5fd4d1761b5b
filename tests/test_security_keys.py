"""Two keys (issue 12.3): pods hold a key restricted to the bucket and their run's prefix,
without delete or listBuckets; the controller holds the other and applies retention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from b2sdk.v2 import B2Api, B2HttpApiConfig, InMemoryAccountInfo
from b2sdk.v2.exception import Unauthorized

from respawn.controller.act import retention
from respawn.controller.config import parse_config
from respawn.store.b2_backend import B2Backend
from respawn.store.store import CheckpointStore, StoreError
from tests.conftest import b2_simulator, make_step
from tests.test_config import GOOD

URL = "b2://respawn-test/fleet"


def _strict(sim: Any) -> None:
    """b2sdk's simulator leaves out two checks real B2 makes for a restricted key (it asks for
    an upload URL without the bucket, so a bucket-restricted key could never upload, and it
    ignores the key's name prefix on upload): put them back, as B2 documents them."""
    real_upload = sim.upload_file

    def get_upload_url(api_url: str, token: str, bucket_id: str) -> Any:
        bucket = sim._get_bucket_by_id(bucket_id)
        sim._assert_account_auth(api_url, token, bucket.account_id, "writeFiles", bucket_id)
        return bucket.get_upload_url(token)

    def upload_file(upload_url: str, *args: Any, **kwargs: Any) -> Any:
        name = kwargs.get("file_name", args[1] if len(args) > 1 else "")
        key = sim.auth_token_to_key[upload_url.rsplit("/", 1)[1]]
        if key.name_prefix_or_none and not name.startswith(key.name_prefix_or_none):
            raise Unauthorized("", "unauthorized")
        return real_upload(upload_url, *args, **kwargs)

    sim.get_upload_url = get_upload_url
    sim.upload_file = upload_file


def _keyed(monkeypatch: pytest.MonkeyPatch, caps: list[str], prefix: str | None) -> tuple[Any, Any]:
    """A second B2 client on the same simulated account, authorized with a restricted key."""
    api, sim = b2_simulator()
    _strict(sim)
    bucket = api.get_bucket_by_name("respawn-test")
    key = api.create_key(capabilities=caps, key_name="k", bucket_id=bucket.id_, name_prefix=prefix)
    monkeypatch.setenv("B2_APPLICATION_KEY_ID", key.id_)
    monkeypatch.setenv("B2_APPLICATION_KEY", key.application_key)
    restricted = B2Api(
        InMemoryAccountInfo(), api_config=B2HttpApiConfig(_raw_api_class=lambda *a, **k: sim)
    )
    return api, restricted


def test_pod_key_without_list_buckets_or_delete_publishes_and_pulls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, pod_api = _keyed(monkeypatch, ["listFiles", "readFiles", "writeFiles"], "fleet/run/")
    store = CheckpointStore(B2Backend.from_url(URL, api=pod_api, require_delete=False), "run")
    store.publish(1, make_step(tmp_path, 1, {"w.bin": b"one"}), generation=1, writer="pod")
    pulled = store.pull(tmp_path / "dest", quiet=True)
    assert pulled is not None and (tmp_path / "dest/w.bin").read_bytes() == b"one"
    # Outside its run's prefix the pod key is refused by B2 itself.
    with pytest.raises(StoreError):
        store.backend.write_bytes("other-run/ledger.json", b"{}")
    assert store.backend.can_delete is False  # type: ignore[attr-defined]


def test_bucket_restricted_controller_key_without_list_buckets_opens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caps = ["listFiles", "readFiles", "writeFiles", "deleteFiles"]
    _, ctl_api = _keyed(monkeypatch, caps, None)
    backend = B2Backend.from_url(URL, api=ctl_api)
    backend.write_bytes("run/ledger.json", b"{}")
    assert backend.read_bytes("run/ledger.json") == b"{}"


def test_controller_applies_retention(tmp_path: Path) -> None:
    api, _ = b2_simulator()
    store = CheckpointStore(B2Backend(api, "respawn-test", "fleet"), "toy", workers=1)
    for step in (1, 2, 3, 4, 5):
        files = make_step(tmp_path, step, {"w.bin": f"{step}".encode()})
        store.publish(step, files, generation=1, writer="pod")
    run = parse_config(GOOD).runs[0]  # keep_last 3
    retention(store, run, generation=1)
    assert store.manifested_steps() == [3, 4, 5]


def test_retention_keeps_recent_trainer_logs_and_ignores_planted_ones(tmp_path: Path) -> None:
    """`respawn logs` shows the last generations' output; a pod planting logs of generations
    no launch reached must not push the real ones out."""
    api, _ = b2_simulator()
    backend = B2Backend(api, "respawn-test", "fleet")
    store = CheckpointStore(backend, "toy", workers=1)
    for gen in range(1, 9):
        backend.write_bytes(store.keys.log(gen), f"gen {gen} output\n".encode())
    for planted in range(10**9, 10**9 + 5):  # the most digits a log key may have
        backend.write_bytes(store.keys.log(planted), b"junk\n")
    for gen in range(1, 9):  # the same generations spelled with more zeros
        backend.write_bytes(f"{store.keys.logs}g{gen:08d}.log", b"junk\n")
    run = parse_config(GOOD).runs[0]
    retention(store, run, generation=8)
    kept = [g for g in store.log_generations() if g <= 8]
    assert kept == [4, 5, 6, 7, 8]


def test_doctor_names_an_unset_pod_key_or_ledger_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from respawn.controller.doctor import run_doctor

    text = GOOD.replace(
        "  url: file:///tmp/x\n",
        "  url: file:///tmp/x\n  pod_key_id_env: POD_ID\n  pod_key_env: POD_KEY\n"
        "  ledger_secret_env: LEDGER_SECRET\n",
    )
    lines, ok = run_doctor(parse_config(text), live=False, environ={"POD_ID": "x"})
    assert not ok
    assert any("POD_KEY (pod key" in ln for ln in lines)
    assert any("LEDGER_SECRET (ledger secret" in ln for ln in lines)
    assert not any("POD_ID" in ln for ln in lines)
