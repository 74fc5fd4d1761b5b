from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli


def test_help_lists_commands_without_importing_cloud_sdks() -> None:
    code = (
        "import sys\n"
        "from respawn.controller.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('wandb', 'vastai', 'runpod', 'b2sdk', 'paramiko', 'pydantic')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "reconcile" in proc.stdout and "demo" in proc.stdout
    assert "HEAVY []" in proc.stdout


def test_ckpt_push_ls_pull_gc(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    for step in (1, 2, 3, 4):
        src = tmp_path / f"s{step}"
        (src / "w").mkdir(parents=True)
        (src / "w" / "model.bin").write_bytes(bytes([step]) * 1000)
        (src / "w" / "frozen.bin").write_bytes(b"z" * 5000)
        proc = run_cli(
            "ckpt", "push", "--store", url, "--run", "x", "--dir", str(src), "--step", str(step)
        )
        assert proc.returncode == 0, proc.stderr
    assert "4.9 KiB unchanged" in proc.stdout

    proc = run_cli("ckpt", "ls", "--store", url, "--run", "x", "--json")
    doc = json.loads(proc.stdout)
    assert [s["step"] for s in doc["steps"]] == [1, 2, 3, 4]
    assert doc["pointer"]["step"] == 4

    proc = run_cli("ckpt", "gc", "--store", url, "--run", "x", "--keep-last", "2")
    assert "deleted steps: 1, 2" in proc.stdout

    proc = run_cli("ckpt", "pull", "--store", url, "--run", "x", "--dest", str(tmp_path / "out"))
    assert proc.returncode == 0 and "restored step 4" in proc.stdout
    assert (tmp_path / "out" / "w" / "model.bin").read_bytes() == bytes([4]) * 1000


def test_ckpt_errors_are_clear(tmp_path: Path) -> None:
    proc = run_cli("ckpt", "ls", "--run", "x")
    assert proc.returncode == 2 and "--store URL" in proc.stderr
    proc = run_cli("ckpt", "gc", "--store", f"file://{tmp_path}", "--run", "x", "--keep-last", "1")
    assert proc.returncode == 2 and "at least 2" in proc.stderr
    proc = run_cli("ckpt", "pull", "--store", f"file://{tmp_path}", "--run", "x", "--dest", "d")
    assert proc.returncode == 1 and "no checkpoint yet" in proc.stderr


@pytest.mark.slow
def test_demo_recovers_and_verifies(tmp_path: Path) -> None:
    proc = run_cli("demo", "--workdir", str(tmp_path / "demo"), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "SIGKILL instance" in out and "controller: dead" in out and "controller: finished" in out
    assert "✗" not in out and "demo passed" in out


def test_local_only_tick_imports_no_cloud_sdk(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "local.yaml").read_text()
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(text.replace("/tmp/respawn-local", str(tmp_path)))
    code = (
        "import sys\n"
        "from respawn.controller.config import load_config\n"
        "from respawn.controller.reconcile import Mode, tick\n"
        f"tick(load_config({str(fleet)!r}), mode=Mode.OBSERVE)\n"
        "print('HEAVY', [m for m in ('wandb', 'vastai', 'runpod', 'b2sdk', 'paramiko')"
        " if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "HEAVY []" in proc.stdout, proc.stderr
