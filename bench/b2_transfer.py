"""Push and pull of a synthetic multi-file checkpoint on B2 (b2sdk's simulator, in memory).

    .venv/bin/python bench/b2_transfer.py [--mb 64] [--files 24]

Baseline, measured in the same run: the same files through b2sdk directly (upload_local_file /
download_file_by_name().save_to, same worker count) with no protocol around them. Then respawn's
push (files + manifest + pointer) and pull (download + sha1 verify of every file), as ratios
against that. Finally a second step where 80% of the bytes are unchanged: it prints the bytes
sent from the pod against the bytes in the step (the rest is copied server-side).
The simulator's part size is raised to B2's real minimum (5 MB) so large files go multi-part.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from b2sdk.v2 import B2Api, B2HttpApiConfig, InMemoryAccountInfo, RawSimulator

from respawn.store.b2_backend import B2Backend
from respawn.store.disk import LocalFile
from respawn.store.store import CheckpointStore

WORKERS = 8


class RealisticSimulator(RawSimulator):
    MIN_PART_SIZE = 5 << 20


def make_api() -> B2Api:
    api = B2Api(
        InMemoryAccountInfo(),
        api_config=B2HttpApiConfig(_raw_api_class=RealisticSimulator),
        max_upload_workers=WORKERS,
        max_copy_workers=WORKERS,
        max_download_workers=WORKERS,
        max_download_streams_per_file=WORKERS,
    )
    sim = api.session.raw_api
    api.authorize_account("production", *sim.create_account())
    api.create_bucket("respawn-bench", "allPrivate")
    return api


def make_tree(root: Path, total: int, files: int) -> list[LocalFile]:
    big, small = int(total * 0.8) // 4, int(total * 0.2) // (files - 4)
    out = []
    for i, size in enumerate([big] * 4 + [small] * (files - 4)):
        p = root / f"shard_{i:03d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
        out.append(LocalFile(p.name, p, size))
    return out


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=64)
    p.add_argument("--files", type=int, default=24)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="respawn-b2-bench-") as tmp:
        work = Path(tmp)
        files = make_tree(work / "src", args.mb << 20, args.files)
        nbytes = sum(f.size for f in files)

        raw_api = make_api()
        bucket = raw_api.get_bucket_by_name("respawn-bench")

        # The baseline gets the same file-level concurrency as the store (4 files at once).
        def raw_up() -> None:
            with ThreadPoolExecutor(4) as pool:
                list(
                    pool.map(lambda f: bucket.upload_local_file(str(f.abs), f"raw/{f.rel}"), files)
                )

        def raw_down() -> None:
            (work / "raw").mkdir()

            def one(f: LocalFile) -> None:
                bucket.download_file_by_name(f"raw/{f.rel}").save_to(str(work / "raw" / f.rel))

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(one, files))

        up, down = timed(raw_up), timed(raw_down)

        store = CheckpointStore(B2Backend(make_api(), "respawn-bench", "x"), "bench", workers=4)
        push = timed(lambda: store.publish(1, files, generation=1, writer="bench"))
        pull = timed(lambda: store.pull(work / "restore", quiet=True))
        for f in files[4:]:  # rewrite the small files: 20% of the bytes
            f.abs.write_bytes(os.urandom(f.size))
        result = store.publish(2, files, generation=1, writer="bench")

        mib = nbytes / (1 << 20)
        print(f"checkpoint: {mib:.0f} MiB in {len(files)} files (4 large, multi-part)")
        print(f"b2sdk upload, no protocol   : {up:6.2f} s  (baseline)")
        print(f"respawn push                : {push:6.2f} s  ratio {push / up:5.2f}x")
        print(f"b2sdk download, no verify   : {down:6.2f} s  (baseline)")
        print(f"respawn pull (sha1 verify)  : {pull:6.2f} s  ratio {pull / down:5.2f}x")
        sent = result.bytes_sent / (1 << 20)
        print(
            f"step 2 (80% unchanged)      : sent {sent:.0f} MiB of {mib:.0f} MiB "
            f"({100 * result.bytes_sent / nbytes:.0f}%), "
            f"{result.bytes_copied / (1 << 20):.0f} MiB copied server-side"
        )


if __name__ == "__main__":
    main()
