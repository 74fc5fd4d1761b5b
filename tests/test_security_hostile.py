"""An adversarial read of the controller as a pod (holding its run's store key) would test it:
cheap attacks the other security tests did not cover."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from respawn.controller.config import load_config
from respawn.controller.observe import observe
from respawn.controller.reconcile import tick
from respawn.store.keys import Keys
from respawn.store.schema import RepairEvent, utcnow
from respawn.store.store import CheckpointStore
from tests.fakes.runpod import FakeRunPod
from tests.fakes.vast import FakeVast
from tests.test_clouds import write_fleet
from tests.test_security_controller import SECRET, _fleet

DEEP = b"[" * 200_000  # valid JSON's grammar, a recursion bomb for json.loads


@pytest.fixture
def clouds(
    clouds: tuple[FakeVast, FakeRunPod], monkeypatch: pytest.MonkeyPatch
) -> tuple[FakeVast, FakeRunPod]:
    monkeypatch.setenv("RESPAWN_LEDGER_SECRET", SECRET)
    return clouds


def _two_runs(tmp: Path, vast: FakeVast, runpod: FakeRunPod) -> Path:
    path = _fleet(tmp, vast, runpod)
    doc = yaml.safe_load(path.read_text())
    other = json.loads(json.dumps(doc["runs"][0]))
    other["name"] = "other"
    doc["runs"].append(other)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    "document",
    ["heartbeat", "latest", "ledger", "halt", "lease"],
)
def test_a_recursion_bomb_in_one_runs_store_stops_neither_the_tick_nor_other_runs(
    tmp_path: Path, clouds: tuple, document: str
) -> None:
    """Attack: a pod writes deeply nested JSON into a document the controller reads. Today
    json.loads raises RecursionError, which no `except StoreError` catches: the whole tick
    dies, every run of the fleet unattended."""
    vast, runpod = clouds
    fleet = load_config(_two_runs(tmp_path, vast, runpod))
    target = tmp_path / "store" / getattr(Keys("other"), document)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(DEEP)
    reports = {r.run: r for r in tick(fleet)}
    assert reports["job"].plan.verdict.health.value == "new"
    assert [r.ok for r in reports["job"].results if r.action.kind == "provision"] == [True]
    other = reports["other"]
    if document == "lease":  # a lease that cannot be read holds nothing
        assert other.skipped is None
    elif document == "latest":  # no manifest: the pointer could have named nothing
        assert "set aside" in other.plan.verdict.reason or any(
            "set aside" in r.detail for r in other.results
        ), other.plan.verdict.reason
        assert not target.exists()
    else:
        assert other.plan.verdict.health.value == "unknown", other.plan.verdict.reason
        assert not other.plan.destructive


def test_a_repair_record_named_in_the_future_cannot_hide_later_ones(
    tmp_path: Path, clouds: tuple
) -> None:
    """Attack: the controller reads repair records newer (by name) than the last it noted. A
    pod names one `99991231T...` (or `~`): every later, genuine record sorts below it."""
    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["RTX_4090"]))
    tick(fleet)
    pod = CheckpointStore.open(f"file://{tmp_path / 'store'}", "job")

    def record(name: str, step: int) -> None:
        ev = RepairEvent(kind="pointer-rebuilt", step=step, at=utcnow(), generation=1, writer="w")
        pod.write_json(f"{pod.keys.repairs}{name}", ev.model_dump(mode="json"))

    record("99991231T235959999999-ffffffff.json", 1)
    record("~.json", 2)
    tick(fleet)  # notes what it may
    later = utcnow() + timedelta(seconds=1)
    record(f"{later:%Y%m%dT%H%M%S%f}-0123abcd.json", 3)  # the store's own naming
    obs = observe(fleet.run("job"), CheckpointStore.open(f"file://{tmp_path / 'store'}", "job"), {})
    assert [e.step for e in obs.store_repairs.new] == [3]


def test_a_forged_lease_that_looks_real_holds_nothing_when_signing_is_on(
    tmp_path: Path, clouds: tuple
) -> None:
    """Attack: with a near, plausible expiry (not the far-future one), renewed every few
    minutes by the pod, an unsigned lease would keep every tick from acting."""
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    soon = (utcnow() + timedelta(minutes=4)).isoformat()
    lease = tmp_path / "store" / Keys("job").lease
    lease.parent.mkdir(parents=True, exist_ok=True)
    lease.write_text(json.dumps({"token": "pod", "holder": "gh pid 1", "expires_at": soon}))
    report = tick(fleet)[0]
    assert report.skipped is None, report.skipped
    assert vast.count("create") == 1
