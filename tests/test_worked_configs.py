"""Every worked config of docs/protect-your-run.md, end to end (issue 20.4).

The guide's own `runs:` entry (its sources, command shape, resume style) drives the controller
with the local provider and a file:// store; the trainer is tests/fakes/layout_trainer.py,
which writes exactly that trainer's layout. Generation 1 is SIGKILLed (nothing saved),
generation 2 gets a spot reclaim's SIGTERM (saves and exits), generation 3 finishes: each
resumes where the last published step left it and every loss equals the uninterrupted run's.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from respawn.controller.config import FleetConfig
from respawn.controller.model import Health
from respawn.controller.reconcile import tick
from respawn.controller.stores import open_run_store
from respawn.examples.demo import read_metrics
from respawn.provisioning.local import LocalProvider
from tests.fakes.layout_trainer import trajectory
from tests.test_docs import WORKED, worked_runs

TRAINER = Path(__file__).resolve().parent / "fakes" / "layout_trainer.py"
TARGET = 30
DEADLINE = 120.0

# The guide's commands, with the trainer swapped for the fake of the same layout.
SWAPS = {
    "prime-rl": [("uv run rl @ configs/math/rl.toml", "{python} %s prime-rl"), ("50", "5")],
    "hf-trainer": [("{python} train.py", "{python} %s hf"), ("--save_steps 500", "--save_steps 5")],
    "pytorch": [("{python} train.py", "{python} %s pytorch"), ("100000", str(TARGET))],
    "nanogpt": [("{python} train.py config/train_gpt2.py", "{python} %s nanogpt")],
    "lightning": [("{python} train.py", "{python} %s lightning")],
}


def guide_run(name: str) -> dict[str, Any]:
    (run,) = yaml.safe_load(worked_runs()[WORKED.index(name)])
    return run  # type: ignore[no-any-return]


def fleet_for(name: str, tmp: Path) -> FleetConfig:
    run = guide_run(name)
    pod = run["pod"]
    for key in ("command", "fresh_command"):
        if key in pod:
            for old, new in SWAPS[name]:
                assert old in pod[key], (name, old)
                pod[key] = pod[key].replace(old, new.replace("%s", str(TRAINER)))
    for source in pod["checkpoints"]["sources"]:
        if "quiet_for" in source:
            source["quiet_for"] = "0.4s"  # minutes in the guide; the fake writes in microseconds
    for key in ("image", "secret_env", "hang_after", "watch_gpus"):
        pod.pop(key, None)
    pod.update(
        workdir=".",
        env={"LAYOUT_TARGET": str(TARGET), "LAYOUT_STEP_SECONDS": "0.25"},
        sync_interval="0.2s",
        heartbeat_interval="0.3s",
        term_grace="5s",
    )
    run.pop("wandb", None)
    run.update(
        target_step=TARGET,
        health={
            "startup_grace": "20s",
            "stall_after": "15s",
            "dead_after": "5s",
            "listing_grace": "1s",  # the local provider lists at once
        },
        resources={"gpu_count": 0, "max_price_per_hour": 1},
        providers=["local"],
        budget={"max_launches_per_day": 6, "max_spend_per_day": 1},
    )
    return FleetConfig.model_validate(
        {
            "fleet_id": "docs",
            "store": {"url": f"file://{tmp / 'store'}"},
            "providers": {"local": {"state_dir": str(tmp / "local"), "keep_disks": True}},
            "runs": [run],
        }
    )


def metrics(disk: Path) -> list[dict[str, float]]:
    return read_metrics(disk / "metrics.jsonl")


class Scenario:
    def __init__(self, fleet: FleetConfig) -> None:
        self.fleet = fleet
        self.run = fleet.runs[0]
        self.store = open_run_store(fleet.store, self.run.name)
        assert fleet.providers.local is not None
        self.provider = LocalProvider(
            fleet.providers.local.state_dir, term_grace=5, keep_disks=True
        )
        self.provider.fleet = fleet.fleet
        self.deadline = time.monotonic() + DEADLINE
        self.disks: dict[int, Path] = {}
        self.last_tick = 0.0

    def tick(self) -> Health:
        report = tick(self.fleet)[0]
        self.last_tick = time.monotonic()
        for inst in self.provider.list_instances(self.run.name):
            rec = self.provider.record(inst.id)
            if rec:
                self.disks.setdefault(inst.generation, Path(str(rec["disk"])))
        return report.plan.verdict.health

    def live(self, generation: int) -> str | None:
        for inst in self.provider.list_instances(self.run.name):
            if inst.generation == generation:
                return inst.id
        return None

    def pointer(self) -> int | None:
        p = self.store.read_pointer()
        return p.step if p else None

    def wait(self, what: str, cond: Any) -> Any:
        while time.monotonic() < self.deadline:
            got = cond()
            if got:
                return got
            if time.monotonic() - self.last_tick > 1.0:
                self.tick()
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; disks {self.disks}")

    def trained(self, generation: int) -> int:
        rows = metrics(self.disks[generation]) if generation in self.disks else []
        return int(rows[-1]["step"]) if rows else 0

    def reclaim(self, generation: int, sig: int) -> None:
        victim = self.live(generation)
        assert victim is not None
        self.provider.signal(victim, sig)  # every process of the instance, as a reclaim does
        self.wait("the instance to go", lambda: self.live(generation) is None)

    def cleanup(self) -> None:
        for inst in self.provider.list_instances(self.run.name):
            self.provider.terminate(inst.id)


def play(name: str, tmp: Path) -> None:
    sc = Scenario(fleet_for(name, tmp))
    try:
        sc.tick()
        sc.wait("generation 1", lambda: 1 in sc.disks)
        # SIGKILL with steps trained past the last published one: those are lost.
        first = sc.wait(
            "a published step with later steps trained",
            lambda: (p := sc.pointer()) is not None and sc.trained(1) >= p + 2 and p,
        )
        sc.reclaim(1, signal.SIGKILL)
        killed_published = sc.pointer()
        assert killed_published is not None and killed_published >= first
        sc.wait("generation 2", lambda: 2 in sc.disks and sc.live(2))
        sc.wait(
            "generation 2 to train past its resume",
            lambda: sc.trained(2) >= killed_published + 3,
        )
        # A spot reclaim's SIGTERM: the trainer saves its current step, the pod publishes it.
        sc.reclaim(2, signal.SIGTERM)
        termed = sc.pointer()
        g2 = [int(m["step"]) for m in metrics(sc.disks[2])]
        assert termed == g2[-1], f"SIGTERM's step {g2[-1]} was not published ({termed})"
        sc.wait("the run to finish", lambda: sc.tick() == Health.FINISHED and not sc.live(3))
    finally:
        sc.cleanup()
    assert sc.pointer() == TARGET
    g2_steps = [int(m["step"]) for m in metrics(sc.disks[2])]
    g3_steps = [int(m["step"]) for m in metrics(sc.disks[3])]
    assert g2_steps[0] == killed_published + 1, (g2_steps[:3], killed_published)
    assert g3_steps[0] == termed + 1 and g3_steps[-1] == TARGET, (g3_steps[:3], termed)
    reference = trajectory(TARGET)
    for gen, disk in sc.disks.items():
        for m in metrics(disk):
            assert m["loss"] == reference[int(m["step"]) - 1], (gen, m)


@pytest.mark.parametrize(
    "name",
    [
        "nanogpt",
        pytest.param("lightning", marks=pytest.mark.slow),
        pytest.param("prime-rl", marks=pytest.mark.slow),
        pytest.param("hf-trainer", marks=pytest.mark.slow),
        pytest.param("pytorch", marks=pytest.mark.slow),
    ],
)
def test_worked_config_survives_sigkill_and_sigterm(name: str, tmp_path: Path) -> None:
    play(name, tmp_path)


def test_every_worked_config_has_an_end_to_end_run() -> None:
    assert sorted(SWAPS) == sorted(WORKED)
