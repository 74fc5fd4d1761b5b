"""End to end through a cloud API: the controller rents from (fake) Vast through the real
vastai SDK, the fake "boots" the instance by running the pod bootstrap with exactly the
environment the create request carried, and the run trains, is preempted, and resumes.

This proves the launch request alone is enough for a pod to find its store, restore the right
step and publish: nothing reaches the pod except through the cloud API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from respawn.controller.config import load_config
from respawn.controller.reconcile import tick
from respawn.controller.stores import open_run_store
from respawn.examples import toy_trainer
from respawn.provisioning import calls
from respawn.provisioning import vast as vast_adapter
from tests.conftest import ROOT, wait_for
from tests.fakes.http import Reply
from tests.fakes.vast import FakeVast

TOY = (
    "{python} -m respawn.examples.toy_trainer --resume-step {resume_step}"
    " --target-step 30 --ckpt-every 5 --seed 11 --step-seconds 0.05"
)


class BootingVast(FakeVast):
    """A fake Vast whose instances really run: the pod bootstrap as a local process."""

    def __init__(self, disks: Path) -> None:
        super().__init__()
        self.disks = disks
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        reply = super().handle(method, path, query, body)
        if self.route(method, path, body) == "create" and reply.status == 200:
            iid = reply.doc["new_contract"]
            disk = self.disks / str(iid)
            disk.mkdir(parents=True)
            env = {**os.environ, "PYTHONPATH": str(ROOT), **body["env"]}
            with open(disk / "pod.log", "wb") as log:
                self.procs[iid] = subprocess.Popen(
                    [sys.executable, "-m", "respawn.pod"],
                    cwd=disk,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.instances[iid]["actual_status"] = "running"
        if self.route(method, path, body) == "destroy":
            self.kill(int(path.rstrip("/").rsplit("/", 1)[1]), signal.SIGTERM)
        return reply

    def kill(self, iid: int, sig: int) -> None:
        proc = self.procs.pop(iid, None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)

    def preempt(self, iid: int) -> None:
        self.kill(iid, signal.SIGKILL)  # the host is gone, no SIGTERM
        self.outbid(iid)


@pytest.fixture
def vast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BootingVast]:
    monkeypatch.setattr(calls, "BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(vast_adapter, "PACE_SECONDS", {})
    fake = BootingVast(tmp_path / "hosts")
    fake.url = fake.start()  # type: ignore[attr-defined]
    monkeypatch.setenv("VAST_API_KEY", fake.api_key)
    yield fake
    for iid in list(fake.procs):
        fake.kill(iid, signal.SIGKILL)
    fake.stop()


def metrics(disk: Path) -> list[dict[str, Any]]:
    path = disk / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_rent_preempt_resume_finish_through_the_vast_api(tmp_path: Path, vast: BootingVast) -> None:
    doc = {
        "store": {"url": f"file://{tmp_path / 'store'}"},
        "providers": {"vast": {"server_url": vast.url, "pace": False}},  # type: ignore[attr-defined]
        "runs": [
            {
                "name": "toy",
                "target_step": 30,
                "health": {"startup_grace": "1m", "stall_after": "1m", "dead_after": "1m"},
                "pod": {
                    "image": "ghcr.io/lab/respawn-pod:1",
                    "command": TOY,
                    "checkpoints": {
                        "sources": [
                            {"path": "outputs/checkpoints/step_{step}", "quiet_for": "0.2s"},
                            {"path": "outputs/weights/step_{step}", "marker": "STABLE"},
                        ]
                    },
                    "sync_interval": "0.1s",
                    "heartbeat_interval": "0.2s",
                    "term_grace": "3s",
                },
                "resources": {
                    "gpus": ["RTX_4090"],
                    "gpu_count": 1,
                    "disk_gb": 100,
                    "max_price_per_hour": 1.0,
                },
                "providers": ["vast"],
                "budget": {"max_launches_per_day": 4, "max_spend_per_day": 10},
            }
        ],
    }
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(doc))
    fleet = load_config(tmp_path / "fleet.yaml")
    store = open_run_store(fleet.store, "toy")

    assert tick(fleet)[0].results[0].ok  # rent g1
    (g1,) = vast.procs
    wait_for(lambda: (p := store.read_pointer()) is not None and p.step >= 10, timeout=30)
    vast.preempt(g1)
    published = store.read_pointer().step  # type: ignore[union-attr]

    # The listing says g1 is paused, but its heartbeat changed since the last tick: two
    # signals disagree, so nothing is destroyed or rented yet.
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown"
    assert [a.kind for a in report.plan.actions] == ["alert"]
    time.sleep(0.5)  # > 2 heartbeat intervals: the heartbeat stayed still, the two agree
    report = tick(fleet)[0]  # g1 is paused (outbid): dead → destroy it, rent g2
    assert report.plan.verdict.health.value == "dead"
    assert [r.action.kind for r in report.results] == ["terminate", "provision"]
    (g2,) = vast.procs
    wait_for(lambda: (p := store.read_pointer()) is not None and p.step == 30, timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        report = tick(fleet)[0]
        if report.plan.verdict.health.value == "finished" and not vast.instances:
            break
        time.sleep(0.2)
    assert report.plan.verdict.health.value == "finished"
    assert vast.instances == {} and vast.procs == {}

    resumed = metrics(vast.disks / str(g2))
    assert resumed[0]["step"] == published + 1 and resumed[-1]["step"] == 30
    # The resumed trajectory equals an uninterrupted run's, step for step.
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    args = ["--workdir", str(reference_dir), "--target-step", "30", "--seed", "11"]
    toy_trainer.main(args)
    reference = {m["step"]: m["loss"] for m in metrics(reference_dir)}
    assert [m["loss"] for m in resumed] == [reference[m["step"]] for m in resumed]
