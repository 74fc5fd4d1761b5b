"""`ckpt ls`, `ckpt gc` and `ckpt pull` over a run with a long history, every backend call
answering after an injected latency (a remote bucket), against one such call measured in the
same run (these machines are noisy: only ratios mean anything).

    .venv/bin/python -m bench.store_history --steps 100 --latency 0.2 [--repeats 3]

For each operation: wall time (min / median), the calls it made, their sequential sum (what
one call after another would cost), and the wall time in round trips (wall / one call): an
operation whose round trips grow with the history is the slow kind this bench is for.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from respawn.controller.ckpt_cli import _ls
from respawn.store.backend import ObjectInfo
from respawn.store.disk import LocalFile
from respawn.store.file_backend import FileBackend
from respawn.store.store import CheckpointStore

RUN = "bench"


class SlowBackend:
    """Wraps a backend; every call sleeps `latency` first and is counted by name."""

    def __init__(self, inner: FileBackend, latency: float) -> None:
        self.inner = inner
        self.latency = latency
        self.url = inner.url
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _hit(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1
        time.sleep(self.latency)

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes | None:
        self._hit("read")
        return self.inner.read_bytes(key, max_bytes)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._hit("write")
        self.inner.write_bytes(key, data)

    def upload(self, key: str, src: Path, size: int, progress: Any = None, sha1: Any = None) -> Any:
        self._hit("upload")
        return self.inner.upload(key, src, size, progress, sha1)

    def download(self, key: str, dst: Path, progress: Any = None) -> Any:
        self._hit("download")
        return self.inner.download(key, dst, progress)

    def copy(self, src_key: str, dst_key: str, sha1: str, size: int) -> bool:
        self._hit("copy")
        return self.inner.copy(src_key, dst_key, sha1, size)

    def list(self, prefix: str) -> list[ObjectInfo]:
        self._hit("list")
        return self.inner.list(prefix)

    def list_leftovers(self, prefix: str) -> list[ObjectInfo]:
        self._hit("list")
        return self.inner.list_leftovers(prefix)

    def delete(self, keys: list[str]) -> None:
        self._hit("delete")
        self.inner.delete(keys)


def build_history(root: Path, steps: int) -> None:
    """A run with `steps` published steps of two small files each (no latency)."""
    store = CheckpointStore(FileBackend.from_url(f"file://{root}"), RUN)
    work = root.parent / "work"
    for step in range(1, steps + 1):
        files = []
        for name in ("model.bin", "optim.bin"):
            p = work / f"step_{step}" / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(f"{name} {step}".encode() * 64)
            files.append(LocalFile(f"step_{step}/{name}", p, p.stat().st_size))
        store.publish(step, files, generation=1, writer="bench")


def timed(
    template: Path, scratch: Path, latency: float, op: Callable[[CheckpointStore, Path], object]
) -> tuple[float, Counter[str]]:
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(template, scratch / "store")
    slow = SlowBackend(FileBackend.from_url(f"file://{scratch / 'store'}"), latency)
    store = CheckpointStore(slow, RUN)  # type: ignore[arg-type]
    t = time.perf_counter()
    op(store, scratch)
    return time.perf_counter() - t, slow.calls


def op_ls(store: CheckpointStore, _scratch: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        _ls(store, as_json=False, verify=False)


def op_gc(store: CheckpointStore, _scratch: Path) -> None:
    gone = store.gc(keep_last=2)
    assert gone, "gc deleted nothing"


def op_pull(store: CheckpointStore, scratch: Path) -> None:
    result = store.pull(scratch / "dest", quiet=True)
    assert result is not None and not result.fell_back


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "template" / "store"
        build_history(template, args.steps)
        # Baseline: one call through the same wrapper, measured now.
        one: list[float] = []
        for _ in range(args.repeats):
            slow = SlowBackend(FileBackend.from_url(f"file://{template}"), args.latency)
            t = time.perf_counter()
            slow.read_bytes(f"{RUN}/latest.json")
            one.append(time.perf_counter() - t)
        call = statistics.median(one)
        print(
            f"{args.steps} steps, {args.latency * 1000:.0f} ms per backend call, "
            f"{args.repeats} repeats; baseline: one call = {call * 1000:.0f} ms"
        )
        print(
            f"{'op':<10}{'min s':>8}{'median s':>10}{'calls':>7}{'seq. sum s':>12}"
            f"{'round trips':>13}  calls by kind"
        )
        for name, op in (("ckpt ls", op_ls), ("ckpt gc", op_gc), ("ckpt pull", op_pull)):
            walls, calls = [], Counter[str]()
            for _ in range(args.repeats):
                wall, calls = timed(template, Path(tmp) / "scratch", args.latency, op)
                walls.append(wall)
            n = sum(calls.values())
            kinds = " ".join(f"{k}={v}" for k, v in sorted(calls.items()))
            print(
                f"{name:<10}{min(walls):8.2f}{statistics.median(walls):10.2f}{n:7d}"
                f"{n * call:12.2f}{statistics.median(walls) / call:13.1f}  {kinds}"
            )


if __name__ == "__main__":
    main()
