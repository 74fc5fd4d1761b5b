"""The GitHub Actions workflows: static analysis, and the controller run exactly as the
scheduled workflow runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"


def control() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((WORKFLOWS / "control.yml").read_text())


def test_schedule_every_ten_minutes_and_manual_dispatch() -> None:
    doc = control()
    on = doc[True] if True in doc else doc["on"]  # YAML 1.1 reads a bare `on` as true
    assert on["schedule"] == [{"cron": "*/10 * * * *"}]
    assert "workflow_dispatch" in on
    assert doc["concurrency"]["cancel-in-progress"] is False  # ticks queue, never overlap
    assert doc["permissions"] == {"contents": "read"}


def test_zizmor_finds_nothing() -> None:
    zizmor = shutil.which("zizmor", path=os.path.dirname(sys.executable)) or shutil.which("zizmor")
    if zizmor is None:
        pytest.skip("zizmor is not installed (pip install -e '.[test]')")
    proc = subprocess.run([zizmor, "--offline", str(WORKFLOWS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dry_run", ["true", "false"])
def test_reconcile_step_runs_as_in_the_workflow(tmp_path: Path, dry_run: str) -> None:
    (step,) = [s for s in control()["jobs"]["tick"]["steps"] if s.get("name") == "Reconcile"]
    fleet = tmp_path / "fleet.yaml"
    text = (ROOT / "examples" / "local.yaml").read_text()
    fleet.write_text(text.replace("/tmp/respawn-local", str(tmp_path)))
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        "FLEET_CONFIG": str(fleet),
        "ONLY_RUN": "toy",
        "DRY_RUN": dry_run,
    }
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", step["run"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    try:
        assert proc.returncode == 0, proc.stderr
        assert "toy" in proc.stdout and "never launched" in proc.stdout
        launched = (tmp_path / "store" / "toy" / "ledger.json").exists()
        assert launched == (dry_run == "false")
    finally:
        subprocess.run(
            [sys.executable, "-m", "respawn", "terminate", "-c", str(fleet), "--run", "toy"],
            capture_output=True,
            timeout=60,
        )
