"""The pod image (issue 10, item 4): the slim default install runs the bootstrap in a fresh
virtual environment with no controller dependency; `docker build` where a daemon exists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from respawn.contract.pod import PodSpec
from respawn.store.store import CheckpointStore
from tests.conftest import ROOT

CONTROLLER_ONLY = ("wandb", "vastai", "runpod", "paramiko")


def test_dockerfile_and_onstart_keep_the_pod_side_out_of_the_trainers_python() -> None:
    dockerfile = (ROOT / "pod_image" / "Dockerfile").read_text()
    assert "python3 -m venv /opt/respawn/venv" in dockerfile
    assert "/opt/respawn/venv/bin/pip install --no-cache-dir ." in dockerfile
    onstart = (ROOT / "pod_image" / "onstart.sh").read_text()
    assert 'ulimit -n "$(ulimit -Hn)"' in onstart  # vLLM warns below 32000 open files
    assert "exec " in onstart and "/opt/respawn/venv/bin/respawn-pod" in onstart


def test_onstart_raises_the_open_file_limit(tmp_path: Path) -> None:
    probe = tmp_path / "probe.sh"
    probe.write_text('#!/bin/sh\nulimit -n > "$OUT"\n')
    probe.chmod(0o755)
    out = tmp_path / "nofile"
    env = {**os.environ, "RESPAWN_POD_BIN": str(probe), "OUT": str(out)}
    env["RESPAWN_LOG_DIR"] = str(tmp_path / "log")
    env["RESPAWN_WORKDIR"] = str(tmp_path)
    soft_before = subprocess.run(
        ["bash", "-c", "ulimit -Sn 1024 && ulimit -Hn"], capture_output=True, text=True
    ).stdout.strip()
    proc = subprocess.run(
        ["bash", "-c", f"ulimit -Sn 1024 && exec bash {ROOT / 'pod_image' / 'onstart.sh'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    got = out.read_text().strip()
    assert got == soft_before or (got.isdigit() and int(got) >= 65536), got


@pytest.mark.slow
def test_slim_install_in_a_fresh_venv_runs_the_bootstrap(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if pip.returncode != 0 and "No matching distribution" in pip.stderr:
        pytest.skip("no package index reachable for the pod's dependencies")
    assert pip.returncode == 0, pip.stderr[-2000:]

    # Run from outside the checkout so the installed package, not the source tree, is used.
    work = tmp_path / "pod"
    work.mkdir()
    leaked = subprocess.run(
        [
            str(py),
            "-c",
            f"import importlib.util as u; print([m for m in {CONTROLLER_ONLY!r} "
            "if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        cwd=work,
    )
    assert leaked.stdout.strip() == "[]", leaked.stdout

    spec = PodSpec.model_validate(
        {
            "command": "{python} -m respawn.examples.toy_trainer --resume-step {resume_step} "
            "--target-step 5 --ckpt-every 5 --seed 1 --step-seconds 0",
            "checkpoints": {
                "sources": [
                    {"path": "outputs/checkpoints/step_{step}", "quiet_for": "0.2s"},
                    {"path": "outputs/weights/step_{step}", "marker": "STABLE"},
                ]
            },
            "sync_interval": "0.1s",
            "heartbeat_interval": "0.2s",
        }
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {
        "RESPAWN_STORE": f"file://{tmp_path / 'store'}",
        "RESPAWN_RUN": "r",
        "RESPAWN_GENERATION": "1",
        "RESPAWN_POD": spec.model_dump_json(),
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
    }
    proc = subprocess.run(
        [str(venv / "bin" / "respawn-pod")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pointer = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r").read_pointer()
    assert pointer is not None and pointer.step == 5


def _docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _docker_daemon(), reason="no Docker daemon")
def test_docker_build_smoke() -> None:
    tag = "respawn-pod-smoke:test"
    build = subprocess.run(
        ["docker", "build", "-f", "pod_image/Dockerfile", "-t", tag, "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    try:
        run = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--entrypoint",
                "/opt/respawn/venv/bin/python",
                tag,
                "-c",
                "import respawn.pod.bootstrap, importlib.util as u; "
                "assert not any(u.find_spec(m) for m in ('wandb', 'vastai', 'runpod'))",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        # The trainer's interpreter is untouched: respawn is only in its own venv.
        sys_py = subprocess.run(
            ["docker", "run", "--rm", "--entrypoint", "python3", tag, "-c", "import respawn"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert sys_py.returncode != 0
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120)
