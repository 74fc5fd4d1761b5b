"""Issue 12.4, the gaps a signature alone left: a pod (store key, no ledger secret) replays an
older signed ledger or halt order, hides the ledger, or forges a tick lease that never
expires. Each is either refused or made visible; nothing is destroyed or launched on it."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from respawn.controller.config import load_config
from respawn.controller.ledger import read_ledger, write_halt, write_ledger
from respawn.controller.model import HaltOrder
from respawn.controller.reconcile import tick
from respawn.controller.repair import repair_ledger
from respawn.controller.stores import open_run_store
from respawn.store.keys import Keys
from respawn.store.schema import utcnow
from tests.fakes.runpod import FakeRunPod
from tests.fakes.vast import FakeVast
from tests.test_clouds import write_fleet
from tests.test_security_controller import SECRET, _fleet


@pytest.fixture
def clouds(
    clouds: tuple[FakeVast, FakeRunPod], monkeypatch: pytest.MonkeyPatch
) -> tuple[FakeVast, FakeRunPod]:
    monkeypatch.setenv("RESPAWN_LEDGER_SECRET", SECRET)
    return clouds


LEDGER = f"store/{Keys('job').ledger}"
LEASE = f"store/{Keys('job').lease}"


def _halt_by_breaker(fleet: object, vast: object) -> None:
    store = open_run_store(fleet.store, "job")  # type: ignore[attr-defined]
    ledger = read_ledger(store)
    halted = ledger.model_copy(update={"halted": "crash-loop breaker", "halted_at": utcnow()})
    write_ledger(store, halted, ledger.version)
    vast.instances.clear()  # type: ignore[attr-defined]


def test_a_replayed_older_ledger_is_refused(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)  # g1
    before_halt = (tmp_path / LEDGER).read_bytes()  # signed by this controller
    _halt_by_breaker(fleet, vast)
    assert tick(fleet)[0].plan.verdict.health.value == "halted"
    (tmp_path / LEDGER).write_bytes(before_halt)  # a pod puts the old ledger back
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown", report.plan.verdict.reason
    assert "older" in report.plan.verdict.reason
    assert not report.plan.destructive and vast.count("create") == 1
    assert (tmp_path / LEDGER).read_bytes() == before_halt  # left for a person


def test_a_hidden_ledger_is_noticed_not_taken_for_a_new_run(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)
    _halt_by_breaker(fleet, vast)
    (tmp_path / LEDGER).unlink()  # B2 hide_file needs only writeFiles
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown", report.plan.verdict.reason
    assert "missing" in report.plan.verdict.reason
    assert vast.count("create") == 1
    # A person rebuilds it, and the run goes on from there.
    store = open_run_store(fleet.store, "job")
    repair_ledger(store, [], utcnow())
    assert tick(fleet)[0].plan.verdict.health.value != "unknown"


def test_a_replayed_resume_order_cannot_undo_a_later_terminate(
    tmp_path: Path, clouds: tuple
) -> None:
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)
    store = open_run_store(fleet.store, "job")
    halt = tmp_path / "store" / Keys("job").halt
    write_halt(store, HaltOrder(halted=False, at=utcnow() - timedelta(hours=1)))
    old_resume = halt.read_bytes()
    write_halt(store, HaltOrder(halted=True, reason="by hand", at=utcnow()))
    assert tick(fleet)[0].plan.verdict.health.value == "stopped"
    halt.write_bytes(old_resume)  # signed, but older than the terminate
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown", report.plan.verdict.reason
    assert not report.plan.destructive and vast.count("create") == 1


@pytest.mark.parametrize("signed", [True, False])
def test_a_forged_lease_cannot_lock_the_controller_out(
    tmp_path: Path, clouds: tuple, signed: bool
) -> None:
    vast, runpod = clouds
    if signed:
        path = _fleet(tmp_path, vast, runpod)
    else:
        path = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    fleet = load_config(path)
    forged = {"token": "pod", "holder": "a pod", "expires_at": "2999-01-01T00:00:00+00:00"}
    (tmp_path / LEASE).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / LEASE).write_text(json.dumps(forged))
    report = tick(fleet)[0]
    assert report.skipped is None, report.skipped
    assert vast.count("create") == 1


def _two_runs(tmp: Path, vast: FakeVast, runpod: FakeRunPod) -> object:
    """One fleet, one ledger secret, two runs: A (`job`) and B (`other`)."""
    import yaml

    path = _fleet(tmp, vast, runpod)
    doc = yaml.safe_load(path.read_text())
    doc["runs"].append({**doc["runs"][0], "name": "other"})
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


def _health(reports: list, run: str) -> str:  # type: ignore[type-arg]
    (report,) = [r for r in reports if r.run == run]
    return report.plan.verdict.health.value  # type: ignore[no-any-return]


def test_run_bs_signed_resume_order_cannot_undo_run_as_terminate(
    tmp_path: Path, clouds: tuple
) -> None:
    vast, runpod = clouds
    fleet = _two_runs(tmp_path, vast, runpod)
    tick(fleet)  # both launched
    a, b = (open_run_store(fleet.store, n) for n in ("job", "other"))  # type: ignore[attr-defined]
    write_halt(b, HaltOrder(halted=False, at=utcnow()))  # B's resume, signed
    write_halt(a, HaltOrder(halted=True, reason="by hand", at=utcnow()))  # A's terminate
    assert _health(tick(fleet), "job") == "stopped"
    creates = vast.count("create")
    halt_a = tmp_path / "store" / Keys("job").halt
    halt_a.write_bytes((tmp_path / "store" / Keys("other").halt).read_bytes())
    reports = tick(fleet)
    assert _health(reports, "job") == "unknown"
    (report,) = [r for r in reports if r.run == "job"]
    assert "signature" in report.plan.verdict.reason, report.plan.verdict.reason
    assert not report.plan.destructive and vast.count("create") == creates


def test_run_bs_signed_ledger_cannot_replace_run_as(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = _two_runs(tmp_path, vast, runpod)
    tick(fleet)
    a, b = (open_run_store(fleet.store, n) for n in ("job", "other"))  # type: ignore[attr-defined]
    ledger = read_ledger(a)
    halted = ledger.model_copy(update={"halted": "crash-loop breaker", "halted_at": utcnow()})
    write_ledger(a, halted, ledger.version)
    for _ in range(3):  # B's counter ahead of A's: no older-copy check to catch the swap
        ledger_b = read_ledger(b)
        write_ledger(b, ledger_b, ledger_b.version)
    vast.instances.clear()
    creates = vast.count("create")
    (tmp_path / LEDGER).write_bytes((tmp_path / "store" / Keys("other").ledger).read_bytes())
    reports = tick(fleet, only="job")
    assert _health(reports, "job") == "unknown"
    (report,) = reports
    assert not report.plan.destructive and vast.count("create") == creates


def test_signatures_from_before_they_named_their_document_are_adopted_once(
    tmp_path: Path, clouds: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger signed by an older respawn (a MAC over the document alone) is refused like a
    forgery until one tick with RESPAWN_ADOPT_UNSIGNED_LEDGER=1 re-signs it."""
    import hashlib
    import hmac

    from tests.test_security_controller import SECRET

    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)
    for rel in (LEDGER, f"store/{Keys('job').ledger_seq}"):
        doc = json.loads((tmp_path / rel).read_text())
        doc.pop("mac")
        body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        doc["mac"] = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        (tmp_path / rel).write_text(json.dumps(doc))
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown"
    assert "RESPAWN_ADOPT_UNSIGNED_LEDGER" in report.plan.verdict.reason
    monkeypatch.setenv("RESPAWN_ADOPT_UNSIGNED_LEDGER", "1")
    assert tick(fleet)[0].plan.verdict.health.value == "starting"
    monkeypatch.delenv("RESPAWN_ADOPT_UNSIGNED_LEDGER")
    assert tick(fleet)[0].plan.verdict.health.value == "starting"  # signed the new way
    assert vast.count("create") == 1
