"""Issue 8.5, the controller half: a quarantined step and a store repair are visible (ledger
event, `status` text and --json, the step summary), read cheaply (once per tick, only what is
new) and shown as the untrusted pod-written text they are."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from respawn.controller.config import load_config
from respawn.controller.ledger import read_ledger
from respawn.controller.observe import observe
from respawn.controller.reconcile import Mode, tick
from respawn.controller.redact import Redactor
from respawn.controller.report import dumps, to_markdown, to_text
from respawn.controller.stores import open_run_store
from respawn.store.schema import RepairEvent, utcnow
from respawn.store.store import CheckpointStore
from tests.conftest import make_step
from tests.test_clouds import write_fleet


def _pod_store(tmp: Path) -> CheckpointStore:
    return CheckpointStore.open(f"file://{tmp / 'store'}", "job")


def _fall_back(tmp: Path) -> None:
    """What a restoring pod does when the pointer's step is corrupt: fall back to the one
    before, quarantine the bad one, move the pointer (issue 8.5, the store half)."""
    store = _pod_store(tmp)
    for s in (1100, 1200):
        store.publish(s, make_step(tmp, s, {f"ck/step_{s}/m": str(s).encode()}), 1, "g1")
    m = store.read_manifest(1200)
    store.backend.write_bytes(store.keys.object_key(m, "ck/step_1200/m"), b"rot!")  # type: ignore[arg-type]
    result = store.pull(tmp / "restore", quiet=True, repair_as=(1, "g1"))
    assert result is not None and result.step == 1100 and result.fell_back


def test_a_fallback_is_a_ledger_event_once_and_stays_visible(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["RTX_4090"]))
    tick(fleet)  # g1
    _fall_back(tmp_path)
    report = tick(fleet)[0]
    assert report.observation.store_repairs.quarantined_steps == (1200,)
    kinds = [e.kind for e in report.observation.store_repairs.new]
    assert "quarantined" in kinds and "pointer-rebuilt" in kinds
    ledger = read_ledger(open_run_store(fleet.store, "job"))
    noted = [e.reason for e in ledger.events if e.reason.startswith("store repair")]
    assert any("quarantined" in r and "1200" in r for r in noted), ledger.events
    # The next tick reads nothing new: no second event, the quarantine still shown.
    again = tick(fleet)[0]
    assert again.observation.store_repairs.new == ()
    assert again.observation.store_repairs.quarantined_steps == (1200,)
    later = read_ledger(open_run_store(fleet.store, "job"))
    assert [e.reason for e in later.events if e.reason.startswith("store repair")] == noted
    assert "step 1200 quarantined" in to_text([again])


def test_status_text_json_and_summary_show_the_quarantine(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["RTX_4090"]))
    tick(fleet)
    _fall_back(tmp_path)
    report = tick(fleet, mode=Mode.OBSERVE)[0]
    text = to_text([report])
    assert "step 1200 quarantined" in text and "repair" in text
    doc = json.loads(dumps([report]))["runs"][0]
    assert doc["quarantined_steps"] == [1200]
    assert {r["kind"] for r in doc["repairs"]} >= {"quarantined", "pointer-rebuilt"}
    summary = to_markdown([report])
    assert "⚠️" in summary and "step 1200 quarantined" in summary


def test_pod_written_repair_text_is_redacted_and_inert(tmp_path: Path, clouds: tuple) -> None:
    """A repair record is written with the pod key: its text is untrusted, like a heartbeat."""
    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["RTX_4090"]))
    tick(fleet)
    store = _pod_store(tmp_path)
    evil = RepairEvent(
        kind="pointer-rebuilt",
        step=7,
        detail=f"# Pwned\n![x](https://evil.example/p.png) \x1b[31mred key={vast.api_key}",
        at=utcnow(),
        generation=1,
        writer="w|`x`",
    )
    key = f"{store.keys.repairs}{utcnow():%Y%m%dT%H%M%S%f}-0e0e0e0e.json"
    store.write_json(key, evil.model_dump(mode="json"))
    report = tick(fleet, mode=Mode.OBSERVE)[0]
    redact = Redactor.from_fleet(fleet, {"VAST_API_KEY": vast.api_key})
    for out in (to_text([report], redact), dumps([report], redact), to_markdown([report], redact)):
        assert vast.api_key not in out
        assert "\x1b" not in out
    summary = to_markdown([report], redact)
    line = next(ln for ln in summary.splitlines() if "Pwned" in ln)
    assert not line.lstrip().startswith("#") and "`" in line
    assert "\n# Pwned" not in summary


class CountingBackend:
    """The far side of the wire, counted: which documents a tick reads."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.url, self.reads = inner, inner.url, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes | None:
        self.reads.append(key)
        return self.inner.read_bytes(key, max_bytes)

    def list(self, prefix: str) -> Any:
        return self.inner.list(prefix)


def test_only_new_repair_records_are_read_and_at_most_a_few(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["RTX_4090"]))
    tick(fleet)
    _fall_back(tmp_path)
    tick(fleet)  # records the repairs as seen
    pod = _pod_store(tmp_path)
    # A hostile (or looping) pod floods the repairs folder.
    soon = utcnow() + timedelta(seconds=2)  # after every record already noted
    for i in range(40):
        ev = RepairEvent(kind="pointer-rebuilt", step=i, at=utcnow(), generation=1, writer="w")
        key = f"{pod.keys.repairs}{soon:%Y%m%dT%H%M%S}{i:06d}-f100d{i:03x}.json"
        pod.write_json(key, ev.model_dump(mode="json"))
    counting = CountingBackend(pod.backend)
    store = CheckpointStore(counting, "job")  # type: ignore[arg-type]
    ledger = read_ledger(store)
    counting.reads.clear()
    obs = observe(fleet.run("job"), store, {}, wandb=None)
    repair_reads = [k for k in counting.reads if "/repairs/" in k or "/quarantine/" in k]
    assert len(repair_reads) <= 5, repair_reads
    assert all("-f100d" in k for k in repair_reads)  # none of those already seen
    assert obs.store_repairs.unread == 40 - len(obs.store_repairs.new)
    assert obs.store_repairs.quarantined_steps == (1200,)
    assert ledger.repairs_seen is not None
