"""The pod bootstrap + supervisor as real processes against a file:// store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from respawn.controller.config import PodSpec
from respawn.store.store import CheckpointStore
from tests.conftest import ROOT, make_step, wait_for

TOY = (
    "{python} -m respawn.examples.toy_trainer --resume-step {resume_step}"
    " --target-step %d --ckpt-every 5 --seed 3 --step-seconds %s"
)
SOURCES = [
    {"path": "outputs/checkpoints/step_{step}", "quiet_for": "0.2s"},
    {"path": "outputs/weights/step_{step}", "marker": "STABLE"},
]


def pod_spec(command: str, **kw: object) -> PodSpec:
    return PodSpec.model_validate(
        {
            "command": command,
            "checkpoints": {"sources": SOURCES, "keep_last": 2, "pod_retention_every": 1},
            "sync_interval": "0.1s",
            "heartbeat_interval": "0.2s",
            "term_grace": "5s",
            **kw,
        }
    )


def start_pod(
    tmp: Path,
    spec: PodSpec,
    generation: int = 1,
    name: str = "pod",
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    disk = tmp / name
    disk.mkdir()
    env = {
        **os.environ,
        "RESPAWN_STORE": f"file://{tmp / 'store'}",
        "RESPAWN_RUN": "r",
        "RESPAWN_GENERATION": str(generation),
        "RESPAWN_POD": spec.model_dump_json(),
        "PYTHONPATH": str(ROOT),
        "RESPAWN_PIDFILE": str(disk / "supervisor.pid"),
        **(extra_env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "respawn.pod"],
        cwd=disk,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def session_alive(sid: int) -> bool:
    from respawn.provisioning.local import _session_processes

    return bool(_session_processes(sid))


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")


def test_pod_fenced_at_start_writes_nothing(tmp_path: Path, store: CheckpointStore) -> None:
    store.write_fence(2)
    proc = start_pod(tmp_path, pod_spec(TOY % (20, "0.05")), generation=1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "fenced" in out
    assert store.read_heartbeat() is None and store.read_pointer() is None


def test_pod_fenced_mid_run_stops_writing_and_exits(tmp_path: Path, store: CheckpointStore) -> None:
    proc = start_pod(tmp_path, pod_spec(TOY % (400, "0.05")), generation=1)
    try:
        wait_for(lambda: (p := store.read_pointer()) is not None and p.step >= 5)
        store.write_fence(2)  # the controller launched g2
        at_fence = store.read_pointer()
        proc.wait(timeout=15)
        assert proc.returncode == 0
        after = store.read_pointer()
        assert at_fence is not None and after is not None and after.generation == 1
        # At most the one publish already past its fence check may land; never a later one.
        assert after.step <= at_fence.step + 5
        wait_for(lambda: not session_alive(proc.pid), timeout=5)  # the trainer is gone too
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_sigterm_checkpoints_and_publishes_before_exit(
    tmp_path: Path, store: CheckpointStore
) -> None:
    proc = start_pod(tmp_path, pod_spec(TOY % (400, "0.05")), generation=1)
    try:
        wait_for(lambda: (p := store.read_pointer()) is not None and p.step >= 5)
        os.killpg(proc.pid, signal.SIGTERM)  # a spot reclaim signals every process
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    checkpointed = [line for line in out.splitlines() if "SIGTERM, checkpointed step" in line]
    assert checkpointed, out
    step = int(checkpointed[0].rsplit(" ", 1)[1])
    pointer = store.read_pointer()
    assert pointer is not None and pointer.step == step
    hb = store.read_heartbeat()
    assert hb is not None and hb.phase == "exiting"


def test_resume_from_published_step_and_disk_cleanup(
    tmp_path: Path, store: CheckpointStore
) -> None:
    first = start_pod(tmp_path, pod_spec(TOY % (20, "0")), generation=1, name="a")
    assert first.wait(timeout=30) == 0
    assert store.read_pointer().step == 20  # type: ignore[union-attr]
    disk = tmp_path / "a"
    # keep_local=1: only the newest published step stays on the pod's disk
    assert sorted(p.name for p in (disk / "outputs/weights").iterdir()) == ["step_20"]
    # keep_last=2 in the store (only the newest complete step is published each round)
    assert store.manifested_steps()[-1] == 20 and len(store.manifested_steps()) <= 2

    second = start_pod(tmp_path, pod_spec(TOY % (30, "0")), generation=2, name="b")
    out, _ = second.communicate(timeout=30)
    assert second.returncode == 0, out
    assert "restored step 20" in out
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "b/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(21, 31))


FLAKY = """
import os, sys, time
from respawn.examples import toy_trainer
resume = int(sys.argv[1])
args = ["--ckpt-every", "5", "--seed", "3", "--resume-step", str(resume)]
if resume == 0 and not os.path.exists("crashed-once"):
    open("crashed-once", "w").close()
    toy_trainer.main([*args, "--target-step", "5"])
    time.sleep(0.6)  # step 5 goes quiet and is published; then the trainer crashes
    sys.exit(3)
sys.exit(toy_trainer.main([*args, "--target-step", "12"]))
"""


def test_crashed_trainer_is_restarted_from_published_step(
    tmp_path: Path, store: CheckpointStore
) -> None:
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY)
    spec = pod_spec(f"{{python}} {script} {{resume_step}}", max_trainer_restarts=2)
    proc = start_pod(tmp_path, spec, generation=1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "trainer exited 3; restart 1 from step 5" in out
    assert store.read_pointer().step == 12  # type: ignore[union-attr]
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "pod/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [*range(1, 6), *range(6, 13)]


SLOW_LOADER = """
import json, os, sys, time
from pathlib import Path
from respawn.examples import toy_trainer
resume, latest = int(sys.argv[1]), Path(sys.argv[2])
def published(step):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if json.loads(latest.read_text())["step"] >= step:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    sys.exit(f"step {step} was never published")
args = ["--ckpt-every", "5", "--seed", "3"]
if not os.path.exists("crashed-once"):
    open("crashed-once", "w").close()
    toy_trainer.main([*args, "--resume-step", "0", "--target-step", "5"])
    published(5)
    toy_trainer.main([*args, "--resume-step", "5", "--target-step", "10"])
    sys.exit(3)  # crashes right after saving step 10, long before it has been quiet for 2s
# Restarted from step 5 while step 10 is still settling: step 10 is published while this
# trainer is still loading step 5 (a large checkpoint takes a while to read).
published(10)
time.sleep(1.0)
sys.exit(toy_trainer.main([*args, "--resume-step", str(resume), "--target-step", "12"]))
"""


def test_restart_never_cleans_the_step_the_new_trainer_loads(
    tmp_path: Path, store: CheckpointStore
) -> None:
    """Issue 18 item 7: the step a restarted trainer resumes from stays on disk while a newer
    step (left by the crashed trainer) is published and the disk is cleaned."""
    script = tmp_path / "slow_loader.py"
    script.write_text(SLOW_LOADER)
    latest = tmp_path / "store" / "r" / "latest.json"
    sources = [{**SOURCES[0], "quiet_for": "2s"}, SOURCES[1]]
    spec = pod_spec(
        f"{{python}} {script} {{resume_step}} {latest}",
        max_trainer_restarts=2,
        checkpoints={"sources": sources, "keep_last": 2, "pod_retention_every": 1},
    )
    proc = start_pod(tmp_path, spec, generation=1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "trainer exited 3; restart 1 from step 5" in out, out
    assert "restart 2" not in out, out  # the restarted trainer loaded step 5 and went on
    assert store.read_pointer().step == 12  # type: ignore[union-attr]
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "pod/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [*range(1, 11), *range(6, 13)]


def test_crash_loop_on_the_pod_gives_up(tmp_path: Path, store: CheckpointStore) -> None:
    spec = pod_spec("{python} -c 'import sys; sys.exit(5)' {resume_step}", max_trainer_restarts=1)
    proc = start_pod(tmp_path, spec, generation=1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, out
    hb = store.read_heartbeat()
    assert hb is not None and hb.phase == "failed" and "exited 5" in hb.message


def test_pod_refuses_to_start_on_bad_environment(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "respawn.pod"],
        cwd=tmp_path / "d",
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=30,
    )
    assert proc.returncode == 2
    assert "missing environment: RESPAWN_STORE" in proc.stdout


def test_manual_files_survive_bootstrap_pull(tmp_path: Path, store: CheckpointStore) -> None:
    # A step pushed by hand (`respawn ckpt push`) is what a new pod restores.
    files = make_step(
        tmp_path,
        5,
        {
            "outputs/checkpoints/step_5/trainer_state.json": json.dumps(
                {"step": 5, "state": 42}
            ).encode(),
            "outputs/weights/step_5/STABLE": b"ok",
        },
    )
    store.publish(5, files, generation=0, writer="cli")
    proc = start_pod(tmp_path, pod_spec(TOY % (6, "0")), generation=1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    line = json.loads((tmp_path / "pod/metrics.jsonl").read_text().splitlines()[0])
    assert line["step"] == 6


def test_hung_trainer_is_restarted_then_given_up(tmp_path: Path, store: CheckpointStore) -> None:
    # A trainer that never writes a step: the watchdog restarts it, then gives up.
    spec = pod_spec(
        "{python} -c 'import time; time.sleep(60)' {resume_step}",
        hang_after="0.5s",
        max_trainer_restarts=1,
        term_grace="1s",
    )
    proc = start_pod(tmp_path, spec, generation=1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, out
    assert "no new step for 0s: restarting the trainer" in out or "no new step for 1s" in out
    hb = store.read_heartbeat()
    assert hb is not None and hb.phase == "failed" and "hung 2 times" in hb.message
    assert not session_alive(proc.pid)


def test_nothing_verifies_reports_failure(tmp_path: Path, store: CheckpointStore) -> None:
    files = make_step(tmp_path, 5, {"outputs/weights/step_5/STABLE": b"ok"})
    store.publish(5, files, generation=0, writer="cli")
    key = store.keys.object_key(store.read_manifest(5), "outputs/weights/step_5/STABLE")  # type: ignore[arg-type]
    store.backend.write_bytes(key, b"KO")
    proc = start_pod(tmp_path, pod_spec(TOY % (6, "0")), generation=1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2, out
    hb = store.read_heartbeat()
    assert hb is not None and hb.phase == "failed" and "verifies" in hb.message


def test_onstart_script_delivers_sigterm_to_the_bootstrap(
    tmp_path: Path, store: CheckpointStore
) -> None:
    # onstart.sh must exec the bootstrap: a reclaim signals only the container's PID 1.
    disk = tmp_path / "workspace"
    disk.mkdir()
    env = {
        **os.environ,
        "RESPAWN_STORE": f"file://{tmp_path / 'store'}",
        "RESPAWN_RUN": "r",
        "RESPAWN_GENERATION": "1",
        "RESPAWN_POD": pod_spec(TOY % (400, "0.05")).model_dump_json(),
        "PYTHONPATH": str(ROOT),
        "RESPAWN_WORKDIR": str(disk),
        "RESPAWN_LOG_DIR": str(tmp_path / "log"),
        "RESPAWN_POD_BIN": str(Path(sys.executable).parent / "respawn-pod"),
        # The toy trainer is imported from this checkout: the test's own interpreter runs it.
        "RESPAWN_TRAINER_PYTHON": sys.executable,
    }
    proc = subprocess.Popen(
        ["bash", str(ROOT / "pod_image" / "onstart.sh")], env=env, start_new_session=True
    )
    try:
        wait_for(lambda: (p := store.read_pointer()) is not None and p.step >= 5)
        proc.send_signal(signal.SIGTERM)  # to the script's PID only, as docker stop does
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (tmp_path / "log" / "pod.log").read_text()
    assert "SIGTERM, checkpointed step" in log
    hb = store.read_heartbeat()
    assert hb is not None and hb.phase == "exiting"
    assert store.read_pointer().step == hb.published_step  # type: ignore[union-attr]


def test_pod_applies_retention_only_every_n_publishes(
    tmp_path: Path, store: CheckpointStore
) -> None:
    """The controller applies retention every tick; the pod's own pass is a safety net, not a
    store-wide listing after every publish."""
    spec = pod_spec(TOY % (30, "0.02")).model_copy(
        update={
            "checkpoints": pod_spec(TOY % (30, "0.02")).checkpoints.model_copy(
                update={"pod_retention_every": 4}
            )
        }
    )
    proc = start_pod(tmp_path, spec, generation=1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    published = [line for line in out.splitlines() if "published step" in line]
    passes = [line for line in out.splitlines() if "retention removed" in line]
    assert len(published) >= 4, out
    assert len(passes) <= len(published) // 4, "retention ran more often than every 4 publishes"
    assert len(store.manifested_steps()) <= 2 + 3  # keep_last, plus up to 3 publishes since
