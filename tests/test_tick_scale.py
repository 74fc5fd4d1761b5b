"""A tick over many runs: a run's documents are read at once, not one after another
(issue 15; the timings are in bench/tick.py)."""

from __future__ import annotations

from pathlib import Path

from respawn.controller.config import load_config
from respawn.controller.observe import observe
from respawn.store.file_backend import FileBackend
from respawn.store.store import CheckpointStore
from tests.test_reconcile import write_fleet
from tests.test_store_scale import Spy


def test_observe_reads_ledger_halt_pointer_and_heartbeat_at_once(tmp_path: Path) -> None:
    fleet = load_config(write_fleet(tmp_path))
    run = fleet.runs[0]
    spy = Spy(FileBackend.from_url(f"file://{tmp_path / 'store'}"))
    obs = observe(run, CheckpointStore(spy, run.name), {})  # type: ignore[arg-type]
    assert obs.pointer is None and obs.heartbeat is None and obs.ledger_state == "missing"
    assert not [e for e in obs.errors if "ledger" in e or "json" in e]
    assert spy.most_in_flight > 1
