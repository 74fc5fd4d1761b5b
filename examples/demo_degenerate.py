"""`respawn demo --scenario degenerate`: the circuit breaker on this machine.

The toy trainer's reward drops to 0 at step 18 (prime-rl's inference server dying while
training "continues"). Its metrics go to a local W&B stand-in (examples/wandb_local.py), which
the controller reads through the real `wandb.Api`. After 4 logged zero-reward steps the
controller stops the instance, rolls `latest.json` back to the newest step published before
the streak (15), and launches generation 2 from there; the run then finishes. Exit 0 only if
that is exactly what happened and the loss trajectory equals an uninterrupted run's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from respawn.controller.config import FleetConfig
from respawn.controller.ledger import read_ledger
from respawn.controller.model import Health, Rollback, Terminate
from respawn.examples.demo import DEADLINE_SECONDS, TICK_SECONDS, Demo, demo_config, read_metrics
from respawn.examples.wandb_local import API_KEY, LocalWandb
from respawn.provisioning.base import parse_instance_name

ZERO_FROM = 18
STREAK = 4
KEY_ENV = "RESPAWN_DEMO_WANDB_KEY"  # the stand-in's key: never the user's WANDB_API_KEY
WANDB_RUN = "toy-1"


def degenerate_config(base: Path, wandb_url: str) -> FleetConfig:
    doc = demo_config(base).model_dump(mode="json", exclude_none=True)
    run = doc["runs"][0]
    run["pod"]["command"] += f" --zero-reward-from {ZERO_FROM}"
    run["wandb"] = {
        "entity": "demo",
        "project": "toy",
        "run_id": WANDB_RUN,
        "api_key_env": KEY_ENV,
        "base_url": wandb_url,
    }
    run["health"]["degenerate"] = {
        "metric": "reward",
        "condition": "== 0",
        "steps": STREAK,
        "max_rollbacks": 2,
        "window": "1h",
    }
    return FleetConfig.model_validate(doc)


class DegenerateDemo(Demo):
    def __init__(self, base: Path) -> None:
        # wandb's own files stay in the demo directory; set before wandb is first imported.
        for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
            os.environ.setdefault(name, str(base / "wandb"))
        (base / "wandb").mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        os.environ[KEY_ENV] = API_KEY
        self.wandb = LocalWandb(entity="demo")
        url = self.wandb.start()
        self.wandb.add_run("toy", WANDB_RUN)
        super().__init__(base, degenerate_config(base, url))
        self.logged: dict[int, int] = {}  # generation → metric lines sent to W&B
        self.stopped: set[int] = set()  # generations the controller terminated
        self.rollbacks: list[int] = []

    def pump(self) -> None:
        """The trainer's wandb.log: new metric lines of every running generation go to W&B."""
        for gen, disk in self.disks.items():
            if gen in self.stopped:
                continue  # a terminated pod logs nothing more
            rows = read_metrics(disk / "metrics.jsonl")
            for row in rows[self.logged.get(gen, 0) :]:
                self.wandb.log(
                    "toy",
                    WANDB_RUN,
                    {"_step": int(row["step"]), "reward": row["reward"], "loss": row["loss"]},
                    heartbeat_at=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                )
            self.logged[gen] = len(rows)

    def step(self) -> Health:
        self.pump()
        report = self.tick()
        for res in report.results:
            a = res.action
            if isinstance(a, Terminate):
                parsed = parse_instance_name(a.name)
                if parsed:
                    self.stopped.add(parsed[1])
            if isinstance(a, Rollback):
                self.log(
                    "rollback" if res.ok else "rollback FAILED", a.to_step, a.generation, a.reason
                )
                if res.ok:
                    self.rollbacks.append(a.to_step)
        self.watch_pointer()
        return report.plan.verdict.health

    def play(self, reference: subprocess.Popen[bytes]) -> int:
        deadline = time.monotonic() + DEADLINE_SECONDS
        self.log("reward will drop to 0", ZERO_FROM, 1, f"W&B run {WANDB_RUN} (local stand-in)")
        finished = False
        while time.monotonic() < deadline:
            health = self.step()
            if health is Health.FINISHED and not self.live_instances():
                finished = True
                break
            time.sleep(TICK_SECONDS)
        reference.wait(timeout=max(1.0, deadline - time.monotonic()))
        self.wandb.stop()
        return self.verify(finished)

    def verify(self, finished: bool) -> int:
        ledger = read_ledger(self.store)
        pointer = self.store.read_pointer()
        target = self.run.target_step
        every = 5  # --ckpt-every of examples/local.yaml
        expected = (ZERO_FROM - 1) // every * every
        ref = {
            int(m["step"]): m["loss"]
            for m in read_metrics(self.base / "reference" / "metrics.jsonl")
        }
        g2 = read_metrics(self.disks[2] / "metrics.jsonl") if 2 in self.disks else []
        resumed_from = int(g2[0]["step"]) - 1 if g2 else None
        mismatches = [
            (gen, int(m["step"]))
            for gen, disk in self.disks.items()
            for m in read_metrics(disk / "metrics.jsonl")
            if ref.get(int(m["step"])) != m["loss"]
        ]
        checks = [
            ("the run finished and the controller saw it", finished),
            (
                f"one rollback, to step {expected} (before the streak at {ZERO_FROM})",
                self.rollbacks == [expected],
            ),
            ("the ledger records it", [(r.to_step) for r in ledger.rollbacks] == [expected]),
            (f"generation 2 resumed at step {resumed_from}", resumed_from == expected),
            ("reward is back after the resume", bool(g2) and all(m["reward"] > 0 for m in g2)),
            (
                f"checkpoint pointer reached the target step {target}",
                pointer is not None and pointer.step == target,
            ),
            ("loss trajectory equals an uninterrupted run's", bool(ref) and not mismatches),
            ("no process of the run is left", not self.live_instances()),
            ("exactly two launches", ledger.generation == 2),
        ]
        print()
        for text, ok in checks:
            print(f"  {'✓' if ok else '✗'} {text}")
        ok = all(ok for _, ok in checks)
        print("\ndemo " + ("passed" if ok else "FAILED"))
        if not ok:
            print(f"ledger events: {[e.reason for e in ledger.events]}", file=sys.stderr)
        return 0 if ok else 1
