"""The seeded fault soak (bench/soak.py, issue 18), short: two toy runs, half a minute of
faults of every kind the issue names, then the fleet must finish on its own with every
invariant kept (one instance per run, a pointer that verifies and never moves back, nothing
stuck without a named remedy, the uninterrupted run's losses, no process left)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.soak import FAULTS, Soak

ROOT = Path(__file__).resolve().parent.parent
# Seed 732 at this rate draws all 16 fault kinds between ticks 3 and 27 (21 faults); the
# schedule is the seed's alone (`Soak.draw`), so this stays true whatever the code does.
# On a loaded machine ticks and pods are slower: the 27 ticks bound the faults (not
# `--minutes`), a fault with nothing to hit yet waits for its target (`--fault-wait`), and
# the settle may take minutes (it ends as soon as every run has finished; unloaded, ~10 s).
SHORT = ["--seed", "732", "--fault-rate", "0.8", "--runs", "2", "--ticks", "27"]
SHORT += ["--minutes", "3", "--target", "150", "--settle-minutes", "3"]


def _args(seed: int) -> SimpleNamespace:
    return SimpleNamespace(
        seed=seed,
        runs=3,
        target=40,
        step_seconds=0.1,
        fault_rate=0.5,
        double_rate=0.2,
        skip=(),
        only=FAULTS,
    )


def test_a_seed_names_one_fault_schedule(tmp_path: Path) -> None:
    """A violation's seed is only worth reporting if it replays the same faults."""
    one = Soak(_args(5), tmp_path / "a")  # type: ignore[arg-type]
    two = Soak(_args(5), tmp_path / "b")  # type: ignore[arg-type]
    other = Soak(_args(6), tmp_path / "c")  # type: ignore[arg-type]
    first = [one.draw() for _ in range(200)]
    assert first == [two.draw() for _ in range(200)]
    assert first != [other.draw() for _ in range(200)]
    assert {kind for fire, kind, *_ in first if fire} == set(FAULTS)


@pytest.mark.slow
def test_short_soak_keeps_every_invariant(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench.soak", *SHORT, "--workdir", str(tmp_path / "soak")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert "violations           : 0" in proc.stdout, out[-8000:]
    assert proc.returncode == 0, out[-8000:]
    # Teeth: the faults went in (a soak of faults that found nothing to hit proves nothing).
    hit = re.search(r"^faults +: (\d+)", proc.stdout, re.M)
    assert hit is not None and int(hit.group(1)) >= 15, out[-8000:]
