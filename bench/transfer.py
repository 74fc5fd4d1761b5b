"""Push of a page-cached step to a file:// store against `cp -r && sync` of the same tree, and
a push where every file changed (same sizes) against a first push, measured in the same run
on the same disk (these machines are noisy: only the ratios mean anything).

    .venv/bin/python -m bench.transfer [--size 256M|2G] [--files 8] [--repeats 3] [--dir /tmp]

The every-file-changed push is the third of a series whose every step changes every file (the
store has learnt by then that these files change, and sends each in one hashing pass); the
first push sends the same step into an empty store, and `cp -r && sync` copies it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from respawn.store.disk import LocalFile
from respawn.store.file_backend import FileBackend
from respawn.store.store import CheckpointStore


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].isalpha() else int(text)


def make_step(root: Path, step: int, total: int, files: int) -> list[LocalFile]:
    out = []
    for i in range(files):
        p = root / f"step_{step}" / f"shard_{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            left = total // files
            while left:
                n = min(left, 8 << 20)
                f.write(os.urandom(n))  # incompressible, different every step
                left -= n
        out.append(LocalFile(f"step_{step}/{p.name}", p, p.stat().st_size))
    return out


def evict(root: Path) -> None:
    """Drop this bench's own earlier files from the page cache (after a sync, so they are
    clean): otherwise the measure that runs while they fill memory pays for reclaiming it."""
    os.sync()
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def settle(base: Path, step: list[LocalFile]) -> None:
    """The same start for every measure: nothing dirty, nothing of this bench cached but the
    step about to be moved."""
    evict(base)
    warm(step)


def warm(files: list[LocalFile]) -> None:
    """Page-cache the step (the measure is the store, not the disk's read speed), with
    nothing dirty left to flush."""
    for lf in files:
        with open(lf.abs, "rb") as f:
            while f.read(8 << 20):
                pass
    os.sync()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="256M", help="bytes per step, e.g. 256M (default) or 2G")
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = p.parse_args()
    total = parse_size(args.size)
    cp, first, steady = [], [], []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        src = base / "src"
        for r in range(args.repeats):
            shutil.rmtree(src, ignore_errors=True)
            steps = {s: make_step(src, s, total, args.files) for s in (1, 2, 3)}
            # All three measures move step 3's files, one after another, on the same disk.
            store_dir = base / f"store{r}"
            store = CheckpointStore(FileBackend.from_url(f"file://{store_dir}"), "bench")
            store.publish(1, steps[1], 1, "bench")
            store.publish(2, steps[2], 1, "bench")  # every file changed: learnt
            settle(base, steps[3])
            t = time.perf_counter()
            store.publish(3, steps[3], 1, "bench")
            steady.append(time.perf_counter() - t)
            shutil.rmtree(store_dir)
            fresh_dir = base / f"fresh{r}"
            fresh = CheckpointStore(FileBackend.from_url(f"file://{fresh_dir}"), "bench")
            settle(base, steps[3])
            t = time.perf_counter()
            fresh.publish(3, steps[3], 1, "bench")
            first.append(time.perf_counter() - t)
            shutil.rmtree(fresh_dir)
            dst = base / f"cp{r}"
            settle(base, steps[3])
            t = time.perf_counter()
            subprocess.run(["sh", "-c", f"cp -r {src / 'step_3'} {dst} && sync"], check=True)
            cp.append(time.perf_counter() - t)
            shutil.rmtree(dst)
    med = statistics.median
    print(f"{total / (1 << 20):.0f} MiB in {args.files} files, {args.repeats} repeats (min/median)")
    print(f"cp -r && sync (baseline)     : {min(cp):6.2f} / {med(cp):.2f} s")
    print(f"first push                   : {min(first):6.2f} / {med(first):.2f} s")
    print(f"push, every file changed     : {min(steady):6.2f} / {med(steady):.2f} s")
    print(
        f"ratio first push / cp        : {min(first) / min(cp):6.2f}x (min), "
        f"{med(first) / med(cp):.2f}x (median)"
    )
    print(
        f"ratio all-changed / first    : {min(steady) / min(first):6.2f}x (min), "
        f"{med(steady) / med(first):.2f}x (median)"
    )


if __name__ == "__main__":
    main()
