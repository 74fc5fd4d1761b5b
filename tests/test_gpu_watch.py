"""GPU watchdog (issue 10, item 5): nvidia-smi fixtures, and a fake `nvidia-smi` on PATH
under a real pod."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from respawn.pod.gpu_watch import GpuWatch, parse
from respawn.store.store import CheckpointStore
from tests.conftest import ROOT, wait_for
from tests.test_pod import TOY, pod_spec, start_pod

FIXTURES = ROOT / "tests" / "fixtures"


def sample(name: str) -> list:  # type: ignore[type-arg]
    return parse((FIXTURES / name).read_text())


def test_parse_with_and_without_units() -> None:
    (g,) = sample("nvidia-smi-h100-hung.csv")
    assert (g.index, g.utilization, g.memory_used_mib, g.memory_total_mib) == (0, 0, 71234, 81559)
    (n,) = parse("3, NVIDIA A100, [N/A], 512, 40960\nnot a line\n")
    assert n.index == 3 and n.utilization is None and n.memory_used_mib == 512


def test_gpu_whose_memory_drops_to_zero_trips() -> None:
    w = GpuWatch(idle_after=None)
    assert w.check(sample("nvidia-smi-h100x2-busy.csv"), 0) is None
    why = w.check(sample("nvidia-smi-h100x2-gpu0-died.csv"), 15)
    assert why is not None and "GPU 0 memory dropped to 0 MiB" in why


def test_empty_gpu_that_never_held_memory_is_not_a_death() -> None:
    """Right after a (re)start nothing is loaded yet: that is not a crash."""
    w = GpuWatch(idle_after=None)
    assert w.check(sample("nvidia-smi-h100x2-gpu0-died.csv"), 0) is None
    w.check(sample("nvidia-smi-h100x2-busy.csv"), 1)
    w.reset()  # the trainer was restarted
    assert w.check(sample("nvidia-smi-h100x2-gpu0-died.csv"), 2) is None


def test_all_gpus_idle_for_idle_after_trips() -> None:
    w = GpuWatch(idle_after=600)
    idle = sample("nvidia-smi-h100x2-idle.csv")
    assert w.check(idle, 0) is None
    assert w.check(idle, 599) is None
    assert w.check(sample("nvidia-smi-h100x2-busy.csv"), 600) is None  # work resumed
    assert w.check(idle, 700) is None
    why = w.check(idle, 1300)
    assert why is not None and "all 2 GPU(s) at 0% utilization" in why
    assert GpuWatch(idle_after=None).check(idle, 10**6) is None  # idle rule off


class FakeSmi:
    """`nvidia-smi` first on PATH: it prints the fixture last `show`n and counts its calls."""

    def __init__(self, tmp: Path) -> None:
        self.current = tmp / "current.csv"
        self.calls = tmp / "smi-calls"

    def show(self, fixture: str) -> None:
        # Atomically: a read racing a rewrite must see one fixture or the other, never half.
        tmp = self.current.with_suffix(".tmp")
        tmp.write_text((FIXTURES / fixture).read_text())
        tmp.replace(self.current)

    def called(self) -> int:
        return len(self.calls.read_text()) if self.calls.exists() else 0


@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSmi:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = FakeSmi(tmp_path)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f'#!/bin/sh\nprintf x >> "{fake.calls}"\nexec cat "{fake.current}"\n')
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return fake


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")


def test_pod_restarts_the_trainer_when_a_gpu_empties(
    tmp_path: Path, store: CheckpointStore, fake_smi: FakeSmi
) -> None:
    fake_smi.show("nvidia-smi-h100x2-busy.csv")
    # Each trainer start leaves a line in `starts` (the pod's workdir is tmp_path/pod).
    command = "sh -c 'echo start >> starts; exec " + TOY % (400, "0.05") + "'"
    spec = pod_spec(command, watch_gpus=True, gpu_poll_interval="0.1s")
    starts = tmp_path / "pod" / "starts"
    proc = start_pod(tmp_path, spec)
    try:
        wait_for(lambda: (p := store.read_pointer()) is not None and p.step >= 5)
        assert starts.read_text().count("start") == 1  # busy GPUs: nothing tripped
        # The watchdog polls one call at a time: once a second call starts after the trainer
        # is running, a busy sample read while it ran has been checked (GPU 0 "held memory").
        seen = fake_smi.called()
        wait_for(lambda: fake_smi.called() >= seen + 2)
        fake_smi.show("nvidia-smi-h100x2-gpu0-died.csv")
        wait_for(lambda: starts.read_text().count("start") >= 2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert "GPU 0 memory dropped to 0 MiB while the trainer runs" in out, out
    assert "restarting the trainer from step" in out


def test_pod_restarts_the_trainer_when_all_gpus_idle(
    tmp_path: Path, store: CheckpointStore, fake_smi: FakeSmi
) -> None:
    fake_smi.show("nvidia-smi-h100x2-idle.csv")
    spec = pod_spec(
        TOY % (400, "0.05"),
        watch_gpus=True,
        gpu_poll_interval="0.1s",
        gpu_idle_after="0.5s",
        max_trainer_restarts=1,
    )
    proc = start_pod(tmp_path, spec)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, out  # restarted once, then the budget is spent
    assert "all 2 GPU(s) at 0% utilization" in out
    hb = store.read_heartbeat()
    assert hb is not None and hb.phase == "failed" and "GPU watchdog tripped" in hb.message


def test_gpu_idle_after_needs_watch_gpus() -> None:
    with pytest.raises(ValueError, match="gpu_idle_after needs watch_gpus"):
        pod_spec(TOY % (10, "0"), gpu_idle_after="10m")
