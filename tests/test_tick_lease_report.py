"""A tick killed while holding a run's lease (issue 18.9): until the lease expires, every
tick says that this is why nothing happens — not what the run looks like meanwhile (a
heartbeat that "still changes", doubts that never advance)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from respawn.controller.config import load_config
from respawn.controller.reconcile import Mode, tick
from respawn.store.keys import Keys
from respawn.store.schema import utcnow
from tests.conftest import run_cli
from tests.fakes.runpod import FakeRunPod
from tests.fakes.vast import FakeVast
from tests.test_clouds import write_fleet


def _killed_tick_lease(tmp: Path, minutes: float = 4) -> str:
    """What a tick killed mid-way leaves: its lease, unexpired. Returns the expiry as shown."""
    until = utcnow() + timedelta(minutes=minutes)
    lease = tmp / "store" / Keys("job").lease
    lease.parent.mkdir(parents=True, exist_ok=True)
    doc = {"token": "killed", "holder": "runner-7 pid 4242", "expires_at": until.isoformat()}
    lease.write_text(json.dumps(doc))
    return f"{until:%Y-%m-%d %H:%M:%S}Z"


@pytest.mark.parametrize("mode", [Mode.ACT, Mode.OBSERVE, Mode.DRY_RUN])
def test_every_tick_says_another_tick_holds_the_lease_until_when(
    tmp_path: Path, clouds: tuple[FakeVast, FakeRunPod], mode: Mode
) -> None:
    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["RTX_4090"]))
    tick(fleet)  # g1 launched
    until = _killed_tick_lease(tmp_path)
    report = tick(fleet, mode=mode)[0]
    said = f"another tick holds the tick lease until {until} (runner-7 pid 4242)"
    assert report.plan.verdict.reason.startswith(said), report.plan.verdict.reason
    assert report.skipped is not None and report.skipped.startswith(said)
    assert report.plan.actions == () and report.results == ()
    assert vast.count("create") == 1


def test_the_reports_name_the_lease_and_its_expiry(
    tmp_path: Path, clouds: tuple[FakeVast, FakeRunPod]
) -> None:
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    tick(load_config(path))
    until = _killed_tick_lease(tmp_path)
    proc = run_cli("status", "-c", str(path), "--json")
    (run,) = json.loads(proc.stdout)["runs"]
    assert run["skipped"].startswith(f"another tick holds the tick lease until {until}")
    proc = run_cli("reconcile", "-c", str(path))
    assert f"holds the tick lease until {until}" in proc.stdout, proc.stdout + proc.stderr
    assert "if that tick was killed, the run waits until then" in proc.stdout


def test_an_expired_lease_of_a_killed_tick_holds_nothing(
    tmp_path: Path, clouds: tuple[FakeVast, FakeRunPod]
) -> None:
    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["RTX_4090"]))
    _killed_tick_lease(tmp_path, minutes=-1)
    report = tick(fleet)[0]
    assert report.skipped is None and "lease" not in report.plan.verdict.reason
    assert vast.count("create") == 1
