"""The trainer's output reaches the user (issue 21.4): the pod uploads the tail of its trainer's
output to `RUN/logs/gNNNNNN.log` on the heartbeat's cadence and once more on its way out, with
every secret it holds masked; `respawn logs` shows it, follows it, and still shows it once the
instance is gone, for any generation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from respawn.contract.pod import PodEnv
from respawn.controller.config import PodSpec, parse_config
from respawn.controller.launch import launch_env
from respawn.pod.logtail import pod_secrets
from respawn.store.store import CheckpointStore
from tests.conftest import ROOT, run_cli, wait_for
from tests.test_pod import start_pod

HF_TOKEN = "hf_trainer_secret_value"
WANDB_KEY = "wandb-team-key-0123456789"
FOLLOW = ("--follow-rounds", "1")  # one poll after the first read, then exit

TRAINER = """
import os, signal, sys, time
from pathlib import Path

def term(*_):
    print("caught SIGTERM, saving", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, term)
print("step 1 loss 0.50", flush=True)
print("hub token " + os.environ["HF_TOKEN"], flush=True)
print("wandb key " + os.environ["TEAM_WANDB_KEY"], flush=True)
while not Path("go").exists():
    time.sleep(0.05)
print("step 2 loss 0.25 (printed later)", flush=True)
while True:
    time.sleep(0.05)
"""


def _fleet(tmp: Path) -> Path:
    cfg = tmp / "fleet.yaml"
    cfg.write_text(
        f"""
store: {{url: "file://{tmp / "store"}"}}
providers: {{local: {{state_dir: {tmp / "local"}}}}}
runs:
  - name: r
    target_step: 1000
    pod:
      command: "{{python}} {tmp / "trainer.py"} {{resume_step}}"
      checkpoints: {{sources: [{{path: "s_{{step}}", marker: OK}}]}}
      secret_env: [HF_TOKEN]
      sync_interval: 0.1s
      heartbeat_interval: 0.2s
      term_grace: 5s
    wandb: {{entity: e, project: p, api_key_env: TEAM_WANDB_KEY}}
    resources: {{max_price_per_hour: 5}}
    providers: [local]
    budget: {{max_launches_per_day: 3, max_spend_per_day: 100}}
"""
    )
    (tmp / "trainer.py").write_text(TRAINER)
    return cfg


def _start_pod(
    tmp: Path, cfg: Path, generation: int, command: str | None = None
) -> subprocess.Popen[str]:
    """A pod started with the environment the controller's launch gives it."""
    fleet = parse_config(cfg.read_text())
    run = fleet.runs[0]
    pod = run.pod if command is None else run.pod.model_copy(update={"command": command})
    pod_env = PodEnv(
        store=fleet.store.url,
        run="r",
        generation=generation,
        writer=f"w{generation}",
        pod_inline=pod.model_dump_json(),
    )
    environ = {"HF_TOKEN": HF_TOKEN, "TEAM_WANDB_KEY": WANDB_KEY}
    env, _ = launch_env(fleet, run, pod_env, environ)
    disk = tmp / f"disk{generation}"
    disk.mkdir()
    return subprocess.Popen(
        [sys.executable, "-m", "respawn.pod"],
        cwd=disk,
        env={
            **os.environ,
            **env,
            "PYTHONPATH": str(ROOT),
            "RESPAWN_PIDFILE": str(disk / "supervisor.pid"),
        },
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _log(store: CheckpointStore, generation: int) -> str:
    data = store.backend.read_bytes(store.keys.log(generation))
    return "" if data is None else data.decode()


def test_trainer_output_reaches_the_store_and_respawn_logs_masked_followed_and_after_exit(
    tmp_path: Path,
) -> None:
    cfg = _fleet(tmp_path)
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    pod = _start_pod(tmp_path, cfg, 1)
    try:
        # Uploaded while the trainer runs, on the heartbeat's cadence.
        wait_for(lambda: "wandb key" in _log(store, 1), timeout=30)
        uploaded = _log(store, 1)
        assert "step 1 loss 0.50" in uploaded
        assert HF_TOKEN not in uploaded and WANDB_KEY not in uploaded
        assert "hub token ***" in uploaded and "wandb key ***" in uploaded

        shown = run_cli("logs", "-c", str(cfg), "--run", "r")
        assert shown.returncode == 0, shown.stderr
        assert "step 1 loss 0.50" in shown.stdout and "hub token ***" in shown.stdout
        assert HF_TOKEN not in shown.stdout + shown.stderr

        # Following: the lines printed after the first read arrive, once each.
        follow = subprocess.Popen(
            [sys.executable, "-m", "respawn", "logs", "-c", str(cfg), "--run", "r", "-f", *FOLLOW],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert follow.stdout is not None
        first: list[str] = []
        while not any("wandb key" in line for line in first):
            line = follow.stdout.readline()
            assert line, "respawn logs -f ended before printing the log"
            first.append(line)
        assert not any("printed later" in line for line in first)
        (tmp_path / "disk1" / "go").touch()
        rest, err = follow.communicate(timeout=60)
        assert follow.returncode == 0, err
        followed = "".join(first) + rest
        assert followed.count("step 2 loss 0.25 (printed later)") == 1, followed
        assert followed.count("step 1 loss 0.50") == 1, followed

        # The last words, said after SIGTERM, are uploaded on the way out.
        os.killpg(pod.pid, signal.SIGTERM)
        pod.communicate(timeout=30)
    finally:
        if pod.poll() is None:
            os.killpg(pod.pid, signal.SIGKILL)
    assert "caught SIGTERM, saving" in _log(store, 1)

    # The instance is gone; its log is still there.
    gone = run_cli("logs", "-c", str(cfg), "--run", "r")
    assert gone.returncode == 0, gone.stderr
    assert "caught SIGTERM, saving" in gone.stdout and "hub token ***" in gone.stdout


def test_a_short_lived_trainer_is_uploaded_on_exit_and_older_generations_stay_selectable(
    tmp_path: Path,
) -> None:
    cfg = _fleet(tmp_path)
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    for gen in (1, 2):
        # Exits at once, long before a heartbeat-cadence upload: only the final one carries it.
        command = f"{{python}} -c \"print('generation {gen} was here')\" {{resume_step}}"
        fleet_cfg = cfg.read_text().replace("heartbeat_interval: 0.2s", "heartbeat_interval: 10m")
        cfg.write_text(fleet_cfg)
        pod = _start_pod(tmp_path, cfg, gen, command=command)
        out, _ = pod.communicate(timeout=60)
        assert pod.returncode == 0, out
    newest = run_cli("logs", "-c", str(cfg), "--run", "r")
    assert newest.returncode == 0, newest.stderr
    assert "generation 2 was here" in newest.stdout
    assert "generation 1" not in newest.stdout
    older = run_cli("logs", "-c", str(cfg), "--run", "r", "--generation", "1")
    assert older.returncode == 0, older.stderr
    assert "generation 1 was here" in older.stdout
    missing = run_cli("logs", "-c", str(cfg), "--run", "r", "--generation", "7")
    assert missing.returncode != 0
    assert "g1, g2" in missing.stderr and "Traceback" not in missing.stderr
    assert store.log_generations() == [1, 2]


def test_the_pod_masks_its_store_key_and_cloud_keys_too() -> None:
    # The trainer never gets these (`trainer_environment`), but a config may pass one on
    # purpose, and a trainer may find one elsewhere: the tail masks whatever the pod holds.
    environ = {
        "B2_APPLICATION_KEY_ID": "0012345abcdef",
        "B2_APPLICATION_KEY": "K001storekeystorekey",
        "RUNPOD_API_KEY": "rpa_instance_key",
        "WANDB_API_KEY": "wandb-default-name-key",
        "HF_TOKEN": "hf_configured_secret",
        "LR": "0.1000000",
    }
    secrets = set(pod_secrets(environ, ("HF_TOKEN",)))
    assert secrets == set(environ.values()) - {"0.1000000"}


SILENT_AFTER_HELLO = """
import sys, time
from pathlib import Path

print("hello from the trainer", flush=True)
step = int(sys.argv[1])
while True:
    step += 1
    d = Path("ck") / f"step_{step}"
    d.mkdir(parents=True)
    (d / "w").write_text(str(step))
    (d / "DONE").touch()
    time.sleep(0.2)
"""


def test_a_failing_log_upload_never_stops_training_and_is_retried(tmp_path: Path) -> None:
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    # The logs folder cannot be made: every upload of the log fails like a store refusing it.
    blocker = tmp_path / "store" / "r" / "logs"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    (tmp_path / "trainer.py").write_text(SILENT_AFTER_HELLO)
    spec = PodSpec.model_validate(
        {
            "command": f"{{python}} {tmp_path / 'trainer.py'} {{resume_step}}",
            "checkpoints": {"sources": [{"path": "ck/step_{step}", "marker": "DONE"}]},
            "sync_interval": "0.1s",
            "heartbeat_interval": "0.2s",
            "term_grace": "5s",
        }
    )
    pod = start_pod(tmp_path, spec)
    try:
        wait_for(lambda: (p := store.read_pointer()) is not None and p.step >= 3, timeout=30)
        beat = store.read_heartbeat()
        assert beat is not None and beat.phase == "training"
        blocker.unlink()
        # Nothing new was printed since: the failed upload itself is tried again.
        wait_for(lambda: "hello from the trainer" in _log(store, 1), timeout=30)
        os.killpg(pod.pid, signal.SIGTERM)
        out, _ = pod.communicate(timeout=30)
    finally:
        if pod.poll() is None:
            os.killpg(pod.pid, signal.SIGKILL)
    assert "uploading the trainer's log failed (will retry)" in out


def test_a_hostile_log_is_shown_inert_and_an_oversized_one_is_refused(tmp_path: Path) -> None:
    """The logs key is pod-writable: what `respawn logs` prints from it can drive neither the
    terminal nor the GitHub runner, and a log no pod of ours could have written (over its cap)
    is refused with a reason, never read into memory whole."""
    cfg = _fleet(tmp_path)
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    hostile = b"\x1b]0;pwned\x07title\n::stop-commands::tok\n::error::forged\nplain line\n"
    store.backend.write_bytes(store.keys.log(1), hostile)
    shown = run_cli("logs", "-c", str(cfg), "--run", "r")
    assert shown.returncode == 0, shown.stderr
    assert "plain line" in shown.stdout
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert not any(line.startswith("::") for line in shown.stdout.splitlines())
    store.backend.write_bytes(store.keys.log(2), b"x" * (1024 * 1024))
    big = run_cli("logs", "-c", str(cfg), "--run", "r")
    assert big.returncode != 0 and "Traceback" not in big.stderr
    assert "g000002.log" in big.stderr and "bytes" in big.stderr


def test_following_a_log_of_repeated_lines_shows_each_new_line_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Progress bars and blank lines repeat: the window slides by whole lines, and a line equal
    to an older one is still new."""
    import argparse

    from respawn.controller.logs_cli import cmd_logs
    from respawn.controller.redact import Redactor

    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    key = store.keys.log(1)
    store.backend.write_bytes(key, b"\n" * 5000 + b"epoch 1\n")
    later = [b"\n" * 4998 + b"epoch 1\n\n\nepoch 1\n", b"\n" * 4990 + b"epoch 1\n\n\nepoch 1\n"]

    def sleep(_s: float) -> None:  # the pod uploads a new tail between two polls
        store.backend.write_bytes(key, later.pop(0))

    args = argparse.Namespace(generation=None, follow=True, follow_rounds=2)
    assert cmd_logs(args, store, Redactor([]), sleep=sleep) == 0
    out = capsys.readouterr().out.splitlines()
    assert out.count("epoch 1") == 2 and len(out) == 5000 + 1 + 3


def test_follow_waits_for_the_first_log_of_a_run_just_launched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`respawn logs -f` right after the first launch (no pod has uploaded yet) exited 1 with
    "no pod has uploaded a log yet": following a run is exactly what one does then."""
    import argparse

    from respawn.controller.logs_cli import cmd_logs
    from respawn.controller.redact import Redactor

    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")

    def sleep(_s: float) -> None:  # the pod's first upload lands between two polls
        store.backend.write_bytes(store.keys.log(1), b"step 1\n")

    args = argparse.Namespace(generation=None, follow=True, follow_rounds=2)
    assert cmd_logs(args, store, Redactor([]), sleep=sleep) == 0
    captured = capsys.readouterr()
    assert "step 1" in captured.out.splitlines()
    assert "waiting" in captured.err

    # Without -f it still says so at once.
    empty = CheckpointStore.open(f"file://{tmp_path / 'empty'}", "r")
    args = argparse.Namespace(generation=None, follow=False, follow_rounds=None)
    assert cmd_logs(args, empty, Redactor([]), sleep=sleep) == 1
