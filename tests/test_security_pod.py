"""What a pod hands its trainer and what it trusts from the store (issue 12.8, 12.9): the
trainer (arbitrary user code, often with network access) never sees the store key; a pointer
written by anyone holding that key cannot steer the W&B run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from respawn.contract.pod import PodEnv
from respawn.controller.config import PodSpec, parse_config
from respawn.controller.launch import launch_env
from respawn.store.store import CheckpointStore
from tests.conftest import ROOT, make_step
from tests.test_config import GOOD

DUMP = (
    "{python} -c \"import os,json,sys; json.dump(dict(os.environ), open('env.json','w'))\""
    " {resume_step}"
)


def _run_pod(tmp: Path, extra_env: dict[str, str], **spec: object) -> dict[str, str]:
    pod = PodSpec.model_validate(
        {
            "command": DUMP,
            "checkpoints": {"sources": [{"path": "ck/step_{step}", "marker": "DONE"}]},
            "sync_interval": "0.1s",
            "heartbeat_interval": "0.2s",
            **spec,
        }
    )
    disk = tmp / "disk"
    disk.mkdir()
    env = {
        **os.environ,
        "RESPAWN_STORE": f"file://{tmp / 'store'}",
        "RESPAWN_RUN": "r",
        "RESPAWN_GENERATION": "1",
        "RESPAWN_POD": pod.model_dump_json(),
        "PYTHONPATH": str(ROOT),
        **extra_env,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "respawn.pod"],
        cwd=disk,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((disk / "env.json").read_text())  # type: ignore[no-any-return]


def test_trainer_never_sees_the_store_key(tmp_path: Path) -> None:
    seen = _run_pod(
        tmp_path,
        {
            "B2_APPLICATION_KEY_ID": "0012345",
            "B2_APPLICATION_KEY": "K001storekeystorekey",
            "RUNPOD_API_KEY": "rpa_instance_key",
            "HF_TOKEN": "hf_configured_secret",
        },
        env={"LR": "0.1"},
        secret_env=["HF_TOKEN"],
    )
    assert "B2_APPLICATION_KEY" not in seen and "B2_APPLICATION_KEY_ID" not in seen
    assert "RUNPOD_API_KEY" not in seen
    assert seen["HF_TOKEN"] == "hf_configured_secret"  # a secret the config passes on purpose
    assert seen["WANDB_RESUME"] == "allow" and seen["WANDB_RUN_ID"] == "r"


def test_pointer_cannot_choose_the_wandb_run(tmp_path: Path) -> None:
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    files = make_step(tmp_path, 5, {"ck/step_5/DONE": b"", "ck/step_5/w": b"x"})
    # Whoever holds the store key writes a pointer naming their own W&B run.
    store.publish(5, files, generation=1, writer="attacker", wandb_run_id="attacker-run")
    seen = _run_pod(tmp_path, {})
    assert seen["WANDB_RUN_ID"] == "r"


def _b2_fleet(**store: str) -> str:
    doc = yaml.safe_load(GOOD)
    doc["store"] = {"url": "b2://bucket-x/fleet", **store}
    return yaml.safe_dump(doc)


ENVIRON = {
    "B2_APPLICATION_KEY_ID": "ctl-key-id",
    "B2_APPLICATION_KEY": "ctl-key-secret",
    "POD_B2_KEY_ID": "pod-key-id",
    "POD_B2_KEY": "pod-key-secret",
    "MY_B2_ID": "ctl-key-id",
    "MY_B2": "ctl-key-secret",
}


def _pod_env() -> PodEnv:
    return PodEnv(store="b2://bucket-x/fleet", run="toy", generation=1, writer="w")


def test_pods_get_the_pod_key_not_the_controller_key() -> None:
    fleet = parse_config(_b2_fleet(pod_key_id_env="POD_B2_KEY_ID", pod_key_env="POD_B2_KEY"))
    env, secrets = launch_env(fleet, fleet.runs[0], _pod_env(), ENVIRON)
    assert env["B2_APPLICATION_KEY_ID"] == "pod-key-id"
    assert env["B2_APPLICATION_KEY"] == "pod-key-secret"
    assert "ctl-key-secret" not in env.values()
    assert "pod-key-secret" in secrets  # redacted from anything a failed launch reports


def test_store_key_travels_only_under_the_pod_names() -> None:
    # The controller's own variable names were passed too, so the trainer got the key twice.
    fleet = parse_config(_b2_fleet(key_id_env="MY_B2_ID", key_env="MY_B2"))
    env, _ = launch_env(fleet, fleet.runs[0], _pod_env(), ENVIRON)
    assert "MY_B2" not in env and "MY_B2_ID" not in env
    assert env["B2_APPLICATION_KEY"] == "ctl-key-secret"
