"""`respawn demo --scenario degenerate`: reward drops to 0, the controller reads it from W&B
(a local stand-in, through the real wandb.Api), rolls back and resumes; the run finishes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_degenerate_demo_rolls_back_and_resumes(tmp_path: Path) -> None:
    proc = run_cli("demo", "--scenario", "degenerate", "--workdir", str(tmp_path), timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "controller: degenerate" in out and "roll pointer back" in out
    assert "✗" not in out and "demo passed" in out
