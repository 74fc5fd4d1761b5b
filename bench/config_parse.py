"""Parsing a 50-run fleet config against the old way of reading it (the pure-Python loader,
the text parsed twice: once for data, once for line numbers), measured in the same run.

    .venv/bin/python -m bench.config_parse [--runs 50] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from bench.tick import fleet
from respawn.controller.config import parse_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        doc = fleet(Path(tmp), args.runs).model_dump(mode="json", exclude_none=True)
    text = yaml.safe_dump({k: doc[k] for k in ("store", "providers", "runs")})
    old, new = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        yaml.load(text, Loader=yaml.SafeLoader)
        yaml.compose(text, Loader=yaml.SafeLoader)
        old.append(time.perf_counter() - t)
        t = time.perf_counter()
        parse_config(text)
        new.append(time.perf_counter() - t)
    med = statistics.median
    print(f"{args.runs}-run config, {len(text)} bytes, {args.repeats} repeats (median)")
    print(f"pure-Python loader, parsed twice (baseline): {med(old) * 1000:7.1f} ms")
    print(f"parse_config (loader + validation)         : {med(new) * 1000:7.1f} ms")
    print(f"ratio                                      : {med(new) / med(old):7.2f}x")


if __name__ == "__main__":
    main()
