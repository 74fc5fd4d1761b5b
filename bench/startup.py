"""`respawn --help` start-up time against a bare `python -c pass`, measured in the same run.

    .venv/bin/python bench/startup.py [--runs 15]

Prints the median of each and their ratio. Cloud SDKs (wandb, vastai, b2sdk) must not
be imported for --help; the ratio shows what start-up costs beyond the interpreter itself.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def median_seconds(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=15)
    runs = p.parse_args().runs
    base = median_seconds([sys.executable, "-c", "pass"], runs)
    helpt = median_seconds([sys.executable, "-m", "respawn", "--help"], runs)
    imp = median_seconds(
        [sys.executable, "-c", "import wandb, vastai, b2sdk.v2"], max(3, runs // 3)
    )
    print(f"python -c pass                : {base * 1000:7.1f} ms  (baseline)")
    print(f"respawn --help                : {helpt * 1000:7.1f} ms  ratio {helpt / base:5.2f}x")
    print(f"import wandb,vastai,b2sdk  : {imp * 1000:7.1f} ms  ratio {imp / base:5.2f}x")
    print("(the last line is what lazy imports keep out of --help and local-only ticks)")


if __name__ == "__main__":
    main()
