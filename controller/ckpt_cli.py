"""`respawn ckpt ls|push|pull|gc`: the checkpoint store by hand."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from respawn.controller.exits import EXIT_FAILED, EXIT_OK, UsageError
from respawn.store.disk import LocalFile
from respawn.store.progress import TransferProgress, human_bytes
from respawn.store.store import CheckpointStore, StoreError


def _store(args: argparse.Namespace) -> CheckpointStore:
    if args.store is not None:
        return CheckpointStore.open(args.store, args.run)
    if args.config is not None:
        from respawn.controller.config import load_config
        from respawn.controller.stores import open_run_store

        return open_run_store(load_config(args.config).store, args.run)
    raise UsageError("name the store: --store URL, or -c FLEET.yaml")


def _files_of(root: Path) -> list[LocalFile]:
    if not root.is_dir():
        raise UsageError(f"--dir {root}: not a directory")
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in sorted(names):
            p = Path(dirpath) / name
            out.append(LocalFile(p.relative_to(root).as_posix(), p, p.stat().st_size))
    if not out:
        raise UsageError(f"--dir {root}: holds no files")
    return out


def run_ckpt(args: argparse.Namespace) -> int:
    try:
        store = _store(args)
        match args.ckpt_command:
            case "ls":
                return _ls(store, args.json)
            case "push":
                files = _files_of(args.dir)
                gen = args.generation if args.generation is not None else store.current_generation()
                bar = TransferProgress(f"push step {args.step}", sum(f.size for f in files))
                res = store.publish(
                    args.step, files, gen, writer=f"cli:{os.getpid()}", progress=bar
                )
                bar.finish()
                print(
                    f"published step {args.step}: {human_bytes(res.bytes_sent)} sent, "
                    f"{human_bytes(res.bytes_copied)} unchanged (copied in the store)"
                )
            case "pull":
                result = store.pull(args.dest)
                if result is None:
                    print(f"run {args.run} has no checkpoint yet", file=sys.stderr)
                    return EXIT_FAILED
                for step, why in result.rejected:
                    print(f"rejected step {step}: {why}", file=sys.stderr)
                print(f"restored step {result.step} into {args.dest}")
            case "gc":
                gone = store.gc(args.keep_last, keep_every=args.keep_every)
                print("deleted steps: " + (", ".join(map(str, gone)) if gone else "none"))
    except ValueError as e:
        raise UsageError(str(e)) from e
    except StoreError as e:
        print(f"respawn ckpt: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _ls(store: CheckpointStore, as_json: bool) -> int:
    pointer = store.read_pointer()
    heartbeat = store.read_heartbeat()
    rows = []
    for step in store.manifested_steps():
        m = store.read_manifest(step)
        if m is not None:
            rows.append(
                {
                    "step": step,
                    "files": len(m.files),
                    "bytes": m.total_bytes,
                    "created_at": m.created_at.isoformat(),
                    "latest": pointer is not None and pointer.step == step,
                }
            )
    if as_json:
        print(
            json.dumps(
                {
                    "pointer": pointer.model_dump(mode="json", by_alias=True) if pointer else None,
                    "heartbeat": heartbeat.model_dump(mode="json", by_alias=True)
                    if heartbeat
                    else None,
                    "steps": rows,
                },
                indent=2,
            )
        )
        return EXIT_OK
    for r in rows:
        mark = "*" if r["latest"] else " "
        print(
            f"{mark} step {r['step']:>8}  {r['files']:>4} files  {human_bytes(r['bytes']):>10}"
            f"  {r['created_at']}"
        )
    if pointer:
        print(
            f"latest.json → step {pointer.step} (generation {pointer.generation}, "
            f"{pointer.writer}, {pointer.written_at:%Y-%m-%d %H:%M:%S}Z)"
        )
    else:
        print("latest.json: none")
    if heartbeat:
        print(
            f"heartbeat: {heartbeat.phase} step {heartbeat.step} g{heartbeat.generation} "
            f"at {heartbeat.at:%Y-%m-%d %H:%M:%S}Z"
        )
    return EXIT_OK
