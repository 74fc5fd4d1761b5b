"""A controller tick over many healthy runs, with every store call and every provider listing
answering after an injected latency, against the sequential sum of those calls measured in the
same run (these machines are noisy: only the ratio means anything).

    .venv/bin/python -m bench.tick --runs 50 --latency 0.2 [--repeats 3]

Prints min/median wall time of a `status` tick and its ratio to the sequential sum of the
latencies it paid (the time a tick that made one call after another would take).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from respawn.controller.config import FleetConfig
from respawn.controller.reconcile import Mode, tick
from respawn.provisioning.local import LocalProvider
from respawn.store.file_backend import FileBackend


class Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def hit(self, latency: float) -> None:
        with self.lock:
            self.calls += 1
        time.sleep(latency)


@contextmanager
def latency(seconds: float, counter: Counter) -> Iterator[None]:
    """Every store read/write/list and every provider listing pays `seconds`."""
    patched: list[tuple[type, str, Any]] = []
    for cls, names in (
        (FileBackend, ("read_bytes", "write_bytes", "list", "delete", "copy")),
        (LocalProvider, ("list_all",)),
    ):
        for name in names:
            orig = getattr(cls, name)

            def slow(self: object, *a: Any, _orig: Any = orig, **kw: Any) -> Any:
                counter.hit(seconds)
                return _orig(self, *a, **kw)

            patched.append((cls, name, orig))
            setattr(cls, name, slow)
    try:
        yield
    finally:
        for cls, name, orig in patched:
            setattr(cls, name, orig)


def fleet(base: Path, runs: int) -> FleetConfig:
    run = {
        "pod": {
            "command": "train --resume {resume_step}",
            "checkpoints": {"sources": [{"path": "ckpt/step_{step}", "marker": "DONE"}]},
        },
        "resources": {"max_price_per_hour": 1},
        "providers": ["local"],
        "budget": {"max_spend_per_day": 10},
    }
    doc = {
        "store": {"url": f"file://{base / 'store'}"},
        "providers": {"local": {"state_dir": str(base / "instances")}},
        "runs": [{**run, "name": f"run-{i:03d}"} for i in range(runs)],
    }
    return FleetConfig.model_validate(yaml.safe_load(yaml.safe_dump(doc)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = fleet(Path(tmp), args.runs)
        walls, sums = [], []
        for _ in range(args.repeats):
            counter = Counter()
            with latency(args.latency, counter):
                t = time.perf_counter()
                reports = tick(config, mode=Mode.OBSERVE)
                walls.append(time.perf_counter() - t)
            sums.append(counter.calls * args.latency)
            assert len(reports) == args.runs
    wall, seq = statistics.median(walls), statistics.median(sums)
    print(f"{args.runs} runs, {args.latency * 1000:.0f} ms per call, {args.repeats} repeats")
    print(f"calls per tick          : {sums[0] / args.latency:.0f}")
    print(f"sequential sum          : {seq:7.2f} s  (baseline)")
    print(f"tick (min / median)     : {min(walls):7.2f} s / {wall:.2f} s")
    print(f"ratio tick / sequential : {wall / seq:7.3f}")


if __name__ == "__main__":
    main()
