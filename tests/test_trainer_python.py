"""The pod image runs the documented trainers (issue 20.1).

In the image respawn's pod side is an isolated venv; the trainer's packages (torch) live in the
base image's own Python. These tests build that split on this machine: the pod side runs from
this checkout's venv, the "base image" is a directory on PATH whose `python3` sees a module
(`fake_torch_20`) that respawn's interpreter cannot import.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from respawn.store.store import CheckpointStore
from tests.conftest import ROOT
from tests.test_pod import pod_spec, start_pod

TRAIN = """
import fake_torch_20  # the base image's package: respawn's venv does not have it
import os, sys
from pathlib import Path
step = int(sys.argv[1])
for s in range(step + 1, 6):
    d = Path(f"ckpt/step_{s}")
    d.mkdir(parents=True, exist_ok=True)
    (d / "state").write_text(fake_torch_20.STATE + str(s))
    (d / "DONE").touch()
"""


def base_image(tmp: Path) -> Path:
    """A `python3` on PATH that is not respawn's: it sees `fake_torch_20`."""
    site = tmp / "base" / "site"
    site.mkdir(parents=True)
    (site / "fake_torch_20.py").write_text('STATE = "torch-state-"\n')
    bin_dir = tmp / "base" / "bin"
    bin_dir.mkdir()
    real = Path(sys.base_prefix) / "bin" / "python3"
    shim = bin_dir / "python3"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{real}" "$@"\n')
    shim.chmod(0o755)
    return bin_dir


def test_onstart_runs_the_trainer_with_the_images_own_python(tmp_path: Path) -> None:
    bin_dir = base_image(tmp_path)
    (tmp_path / "workspace").mkdir()
    (tmp_path / "workspace" / "train.py").write_text(TRAIN)
    spec = pod_spec(
        "{python} train.py {resume_step}",
        checkpoints={"sources": [{"path": "ckpt/step_{step}", "marker": "DONE"}]},
        max_trainer_restarts=1,
    )
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("RESPAWN_TRAINER_PYTHON",)},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RESPAWN_STORE": f"file://{tmp_path / 'store'}",
        "RESPAWN_RUN": "r",
        "RESPAWN_GENERATION": "1",
        "RESPAWN_POD": spec.model_dump_json(),
        "PYTHONPATH": str(ROOT),
        "RESPAWN_WORKDIR": str(tmp_path / "workspace"),
        "RESPAWN_LOG_DIR": str(tmp_path / "log"),
        "RESPAWN_PIDFILE": str(tmp_path / "supervisor.pid"),
        "RESPAWN_POD_BIN": str(Path(sys.executable).parent / "respawn-pod"),
    }
    proc = subprocess.Popen(
        ["bash", str(ROOT / "pod_image" / "onstart.sh")], env=env, start_new_session=True
    )
    try:
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (tmp_path / "log" / "pod.log").read_text()
    assert rc == 0, log
    assert "ModuleNotFoundError" not in log
    pointer = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r").read_pointer()
    assert pointer is not None and pointer.step == 5


def test_pod_python_names_the_trainers_interpreter(tmp_path: Path) -> None:
    bin_dir = base_image(tmp_path)
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    spec = pod_spec(
        f"{{python}} {script} {{resume_step}}",
        python=str(bin_dir / "python3"),
        checkpoints={"sources": [{"path": "ckpt/step_{step}", "marker": "DONE"}]},
        max_trainer_restarts=0,
    )
    proc = start_pod(tmp_path, spec)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    assert store.read_pointer().step == 5  # type: ignore[union-attr]


def test_a_trainer_failing_at_start_the_same_way_twice_halts_with_its_reason(
    tmp_path: Path,
) -> None:
    script = tmp_path / "train.py"
    script.write_text("import fake_torch_20\n")  # not installed where {python} runs it
    spec = pod_spec(f"{{python}} {script} {{resume_step}}", max_trainer_restarts=5)
    proc = start_pod(tmp_path, spec)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    # Once to see it, once to see it repeat: never the whole restart budget.
    assert out.count("starting trainer") == 2, out
    hb = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r").read_heartbeat()
    assert hb is not None and hb.phase == "failed" and hb.will_repeat, hb
    assert "ModuleNotFoundError: No module named 'fake_torch_20'" in hb.message


def test_a_failure_naming_the_machine_is_not_taken_for_one_that_repeats(
    tmp_path: Path,
) -> None:
    script = tmp_path / "train.py"
    script.write_text("raise SystemExit('RuntimeError: CUDA error: no CUDA-capable device')\n")
    spec = pod_spec(f"{{python}} {script} {{resume_step}}", max_trainer_restarts=2)
    proc = start_pod(tmp_path, spec)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert out.count("starting trainer") == 3, out  # the restart budget, as before
    hb = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r").read_heartbeat()
    assert hb is not None and hb.phase == "failed" and not hb.will_repeat


def test_a_trainer_that_trained_before_crashing_is_restarted(tmp_path: Path) -> None:
    # Same exit, same last line, but a step was written in between: not a failure at start.
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, pathlib\n"
        "n = len(list(pathlib.Path('.').glob('ck/step_*')))\n"
        "d = pathlib.Path(f'ck/step_{n + 1}'); d.mkdir(parents=True); (d / 'DONE').touch()\n"
        "sys.exit('ValueError: loss is nan')\n"
    )
    spec = pod_spec(
        f"{{python}} {script} {{resume_step}}",
        checkpoints={"sources": [{"path": "ck/step_{step}", "marker": "DONE"}]},
        max_trainer_restarts=2,
    )
    proc = start_pod(tmp_path, spec)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert out.count("starting trainer") == 3, out
    hb = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r").read_heartbeat()
    assert hb is not None and not hb.will_repeat


def test_the_controller_halts_after_one_launch_of_a_trainer_that_cannot_import(
    tmp_path: Path,
) -> None:
    from respawn.controller.config import FleetConfig
    from respawn.controller.ledger import read_ledger
    from respawn.controller.reconcile import tick
    from respawn.controller.stores import open_run_store
    from respawn.provisioning.local import LocalProvider

    script = tmp_path / "train.py"
    script.write_text("import fake_torch_20\n")
    fleet = FleetConfig.model_validate(
        {
            "fleet_id": "t",
            "store": {"url": f"file://{tmp_path / 'store'}"},
            "providers": {"local": {"state_dir": str(tmp_path / "local")}},
            "runs": [
                {
                    "name": "job",
                    "health": {"startup_grace": "1m", "dead_after": "5s", "listing_grace": "1s"},
                    "pod": {
                        "command": f"{{python}} {script} {{resume_step}}",
                        "checkpoints": {"sources": [{"path": "ck/step_{step}", "marker": "D"}]},
                        "sync_interval": "0.2s",
                        "heartbeat_interval": "0.2s",
                    },
                    "resources": {"gpu_count": 0, "max_price_per_hour": 1},
                    "providers": ["local"],
                    "budget": {"max_launches_per_day": 6, "max_spend_per_day": 1},
                }
            ],
        }
    )
    store = open_run_store(fleet.store, "job")
    provider = LocalProvider(tmp_path / "local", term_grace=2)
    try:
        reports = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reports.append(tick(fleet)[0])
            if reports[-1].plan.verdict.fatal or read_ledger(store).generation > 1:
                break
            time.sleep(0.3)
        for _ in range(3):  # a few more ticks: nothing else is launched
            reports.append(tick(fleet)[0])
    finally:
        for inst in provider.list_instances("job"):
            provider.terminate(inst.id)
    assert read_ledger(store).generation == 1  # one paid launch, not six
    fatal = [r.plan.verdict for r in reports if r.plan.verdict.fatal]
    assert fatal and "No module named 'fake_torch_20'" in fatal[0].reason, [
        r.plan.verdict.reason for r in reports
    ]
