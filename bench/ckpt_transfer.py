"""Push and pull of a synthetic multi-file checkpoint on the file:// store, against `cp -r`.

    .venv/bin/python bench/ckpt_transfer.py [--gb 1.0] [--files 24] [--dir /tmp]

Measured in the same run, same disk: `cp -r` of the tree (the floor for moving these bytes),
then `respawn` push (sha1 of every byte + fsync + atomic rename + manifest + pointer) and pull
(copy + verify every sha1 + atomic placement). Then a second step where most bytes are
unchanged, which the store links instead of copying. Prints each as a ratio against cp -r.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from respawn.store.disk import LocalFile
from respawn.store.store import CheckpointStore


def make_tree(root: Path, total: int, files: int) -> list[LocalFile]:
    # Four big weight shards (80% of the bytes) and many small state files (20%).
    big, small = int(total * 0.8) // 4, int(total * 0.2) // (files - 4)
    sizes = [big] * 4 + [small] * (files - 4)
    out = []
    for i, size in enumerate(sizes):
        p = root / "outputs" / ("weights" if i < 4 else "checkpoints") / f"shard_{i:03d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            left = size
            while left:
                n = min(left, 16 << 20)
                f.write(os.urandom(n))
                left -= n
        out.append(LocalFile(p.relative_to(root).as_posix(), p, size))
    return out


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def drop(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=1.0)
    p.add_argument("--files", type=int, default=24)
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="respawn-bench-", dir=args.dir))
    try:
        total = int(args.gb * (1 << 30))
        src = work / "src"
        files = make_tree(src, total, args.files)
        nbytes = sum(f.size for f in files)

        def cp_r(n: int) -> float:
            subprocess.run(["sync"], check=True)
            return timed(
                lambda: subprocess.run(["cp", "-r", str(src), str(work / f"cp{n}")], check=True)
            )

        cp = cp_r(1)
        subprocess.run(["sync"], check=True)
        store = CheckpointStore.open(f"file://{work / 'store'}", "bench")
        push = timed(lambda: store.publish(1, files, generation=1, writer="bench"))
        subprocess.run(["sync"], check=True)
        pull = timed(lambda: store.pull(work / "restore", quiet=True))
        cp = min(cp, cp_r(2))  # the baseline gets its best of two
        # A durable copy: what push must at least do before it may write the manifest.
        cp_sync = timed(
            lambda: subprocess.run(
                f"cp -r '{src}' '{work / 'cp3'}' && sync", shell=True, check=True
            )
        )

        # Step 2: rewrite the small files (20% of the bytes), keep the big shards.
        for f in files[4:]:
            f.abs.write_bytes(os.urandom(f.size))
        res = None

        def push2() -> None:
            nonlocal res
            res = store.publish(2, files, generation=1, writer="bench")

        subprocess.run(["sync"], check=True)
        push_delta = timed(push2)
        assert res is not None
        gib = nbytes / (1 << 30)

        def row(label: str, secs: float, note: str = "") -> None:
            print(
                f"{label:<22}: {secs:6.2f} s  {gib / secs:6.2f} GiB/s",
                f"ratio {secs / cp:5.2f}x  {note}",
            )

        print(f"tree: {gib:.2f} GiB in {len(files)} files, on {args.dir}")
        row("cp -r", cp, "(baseline)")
        row("cp -r && sync", cp_sync, "(a durable copy)")
        row("push (full)", push)
        row("pull (verify sha1)", pull)
        sent = res.bytes_sent / (1 << 20)
        row("push (80% unchanged)", push_delta, f"sent {sent:.0f} of {nbytes / (1 << 20):.0f} MiB")
    finally:
        drop(work)


if __name__ == "__main__":
    main()
