"""bench/tick.py with W&B in the tick: one status tick over 50 runs, with W&B, the provider
and the store each answering every call in 200 ms, against the sum of those latencies done one
after another.

    .venv/bin/python bench/tick_wandb.py [--runs 50] [--latency 0.2]

W&B is the loopback stand-in (examples/wandb_local.py) read through the real `wandb.Api`; the
store is a file store and the provider the local one, each delayed per call. The issue's bar:
the tick takes ≤ 3 s, because observations run concurrently. Prints both and their ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="respawn-bench-"))
for _name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
    os.environ[_name] = str(_TMP)
os.environ["WANDB_ERROR_REPORTING"] = "false"
os.environ["WANDB_SILENT"] = "true"

from respawn.controller import reconcile  # noqa: E402
from respawn.controller.config import FleetConfig  # noqa: E402
from respawn.controller.reconcile import Mode, tick  # noqa: E402
from respawn.examples.wandb_local import API_KEY, LocalWandb  # noqa: E402
from respawn.provisioning.base import Instance  # noqa: E402
from respawn.provisioning.local import LocalProvider  # noqa: E402
from respawn.store.file_backend import FileBackend  # noqa: E402


class Calls:
    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def add(self) -> None:
        with self.lock:
            self.n += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--latency", type=float, default=0.2)
    args = p.parse_args()
    delay, calls = args.latency, Calls()

    class SlowStore(FileBackend):
        def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes | None:
            calls.add()
            time.sleep(delay)
            return super().read_bytes(key, max_bytes)

    class SlowProvider(LocalProvider):
        def list_all(self) -> list[Instance]:
            calls.add()
            time.sleep(delay)
            return super().list_all()

    wandb = LocalWandb(entity="bench")
    wandb.delay = delay
    url = wandb.start()
    os.environ["BENCH_WANDB_KEY"] = API_KEY
    names = [f"run-{i:02d}" for i in range(args.runs)]
    for name in names:
        wandb.add_run("p", name)
        wandb.log("p", name, {"reward": 1.0})
    run = {
        "wandb": {
            "entity": "bench",
            "project": "p",
            "base_url": url,
            "api_key_env": "BENCH_WANDB_KEY",
        },
        "pod": {
            "command": "train {resume_step}",
            "checkpoints": {"sources": [{"path": "s_{step}", "marker": "OK"}]},
        },
        "resources": {"gpu_count": 0, "max_price_per_hour": 1},
        "providers": ["local"],
        "budget": {"max_launches_per_day": 4, "max_spend_per_day": 1},
    }
    fleet = FleetConfig.model_validate(
        {
            "store": {"url": f"file://{_TMP / 'store'}"},
            "providers": {"local": {"state_dir": str(_TMP / "local")}},
            "runs": [{**run, "name": n} for n in names],
        }
    )
    reconcile.open_backend = lambda url, creds: SlowStore(Path(url[len("file://") :]))  # type: ignore[assignment]
    reconcile.open_providers = lambda fleet, names: {"local": SlowProvider(_TMP / "local")}  # type: ignore[assignment]

    tick(fleet, mode=Mode.OBSERVE)  # warm-up: wandb-core starts once per process
    calls.n, before = 0, len(wandb.queries)
    t = time.perf_counter()
    reports = tick(fleet, mode=Mode.OBSERVE)
    took = time.perf_counter() - t
    wandb_calls = len(wandb.queries) - before
    sequential = (calls.n + wandb_calls) * delay
    wandb.stop()
    ok = all(r.observation.wandb and r.observation.wandb[0].error is None for r in reports)
    print(f"runs                 : {len(reports)} (W&B read for all: {ok})")
    print(
        f"calls                : {calls.n} store/provider + {wandb_calls} W&B, "
        f"{delay * 1000:.0f} ms each"
    )
    print(f"sequential sum       : {sequential:6.2f} s")
    print(f"one tick (concurrent): {took:6.2f} s   ratio {sequential / took:5.1f}x faster")
    print(f"issue's bar (<= 3 s) : {'met' if took <= 3 else 'MISSED'}")


if __name__ == "__main__":
    main()
