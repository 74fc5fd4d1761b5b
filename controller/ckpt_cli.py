"""`respawn ckpt ls|push|pull|gc`: the checkpoint store by hand."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from respawn.controller.exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError
from respawn.controller.redact import one_line
from respawn.controller.report import when
from respawn.store.backend import StoreConfigError
from respawn.store.disk import LocalFile, complete_steps
from respawn.store.progress import TransferProgress, human_bytes
from respawn.store.schema import Heartbeat
from respawn.store.store import CheckpointStore, StoreError


def _store(args: argparse.Namespace, create: bool) -> CheckpointStore:
    if args.store is not None:
        return CheckpointStore.open(args.store, args.run, create=create)
    if args.config is not None:
        settings = _config(args).store
        return CheckpointStore.open(
            settings.url, args.run, credential_envs=settings.credential_envs, create=create
        )
    raise UsageError("name the store: --store URL, or -c FLEET.yaml")


def _config(args: argparse.Namespace) -> Any:
    from respawn.controller.config import load_config

    return load_config(args.config)


def _files_under(root: Path, base: Path) -> list[LocalFile]:
    """Regular files under root, named relative to base (symlinks are never published)."""
    if not root.is_dir() or root.is_symlink():
        raise UsageError(f"--dir {root}: not a directory")
    out = []
    for dirpath, _dirs, names in os.walk(root):
        for name in sorted(names):
            p = Path(dirpath) / name
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode):
                print(f"skipping {p}: not a regular file", file=sys.stderr)
                continue
            out.append(LocalFile(p.relative_to(base).as_posix(), p, st.st_size))
    if not out:
        raise UsageError(f"--dir {root}: holds no files")
    return out


def _push_files(args: argparse.Namespace) -> list[LocalFile]:
    dirs: list[Path] = args.dir or []
    workdir: Path | None = args.workdir
    if not dirs:
        if args.config is None:
            raise UsageError(
                "push needs --dir DIR (repeatable), or -c FLEET.yaml to use the run's sources"
            )
        pod = _config(args).run(args.run).pod
        base = (workdir or Path(pod.workdir)).resolve()
        steps = {s.step: s for s in complete_steps(base, pod.checkpoints.sources, time.time())}
        if args.step not in steps:
            raise UsageError(
                f"step {args.step} is not complete under {base} (the run's checkpoints.sources: "
                + ", ".join(s.path for s in pod.checkpoints.sources)
                + "); pass --workdir where the trainer wrote it"
            )
        return list(steps[args.step].files)
    if len(dirs) > 1 and workdir is None:
        raise UsageError(
            "several --dir need --workdir: the store names files relative to it, as the pod's "
            "sources do (e.g. --workdir . --dir outputs/weights/step_20 --dir ...)"
        )
    if workdir is None:
        return _files_under(dirs[0], dirs[0])
    base = workdir.resolve()
    out: list[LocalFile] = []
    for d in dirs:
        if not d.resolve().is_relative_to(base):
            raise UsageError(f"--dir {d}: not inside --workdir {workdir}")
        out += _files_under(d, base)
    return out


def run_ckpt(args: argparse.Namespace) -> int:
    try:
        # Only push writes: the others must not create a store directory for a typo.
        store = _store(args, create=args.ckpt_command == "push")
        if args.ckpt_command == "ls" and not store.exists():
            print(
                f"respawn ckpt: run {args.run!r} has nothing in {store.backend.url} "
                "(check --run and the store URL)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        match args.ckpt_command:
            case "ls":
                return _ls(store, args.json, getattr(args, "verify", False))
            case "push":
                files = _push_files(args)
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
                    print(f"rejected step {step}: {one_line(why)}", file=sys.stderr)
                for path, other in result.healed:
                    print(
                        f"{path}: its own copy is corrupt; restored from {other}", file=sys.stderr
                    )
                print(f"restored step {result.step} into {args.dest}")
            case "gc":
                gone = store.gc(args.keep_last, keep_every=args.keep_every)
                print("deleted steps: " + (", ".join(map(str, gone)) if gone else "none"))
    except ValueError as e:
        raise UsageError(str(e)) from e
    except StoreConfigError as e:  # a missing store, bucket or key: bad config, exit 2
        print(f"respawn ckpt: {e}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as e:
        print(f"respawn ckpt: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _heartbeat(store: CheckpointStore) -> tuple[Heartbeat | None, str | None]:
    try:
        return store.read_heartbeat(), None
    except StoreError as e:
        return None, str(e)


def _ls(store: CheckpointStore, as_json: bool, verify: bool) -> int:
    # Each read is a round trip to a bucket: the independent ones go at once, then every
    # step's manifest at once (bounded), so a long history costs a few round trips.
    with ThreadPoolExecutor(max_workers=5) as pool:
        pointer_f = pool.submit(store.pointer_or_error)
        heartbeat_f = pool.submit(_heartbeat, store)
        quarantined_f = pool.submit(store.quarantined)
        refs_f = pool.submit(store.manifest_refs)
        repairs_f = pool.submit(store.repairs)
    pointer, pointer_error = pointer_f.result()
    heartbeat, heartbeat_error = heartbeat_f.result()
    quarantined = quarantined_f.result()
    refs = refs_f.result()
    chosen = {
        step: pointer.manifest
        if pointer is not None and pointer.step == step
        else refs[step][0].key
        for step in refs
    }
    manifests = store.read_manifests(list(chosen.values()))
    rows: list[dict[str, Any]] = []
    for step in sorted(refs):
        keys = [r.key for r in refs[step]]
        key = chosen[step]
        row: dict[str, Any] = {
            "step": step,
            "manifest": key,
            "latest": pointer is not None and pointer.step == step,
            "quarantined": key in quarantined,
            "copies": len(keys),
        }
        m = manifests[key]
        if isinstance(m, StoreError):
            m, row["error"] = None, str(m)
        if m is not None:
            row |= {"files": len(m.files), "bytes": m.total_bytes}
            row["created_at"] = m.created_at.isoformat()
            row["generation"] = m.generation
        if verify:
            why = row.get("error") or store.verify(key)
            row["verified"] = why is None
            if why:
                row["why"] = why
        rows.append(row)
    repairs = [r.model_dump(mode="json", by_alias=True) for r in repairs_f.result()]
    failed = verify and any(not r["verified"] for r in rows if not r["quarantined"])
    if as_json:
        doc = {
            "pointer": pointer.model_dump(mode="json", by_alias=True) if pointer else None,
            "pointer_error": pointer_error,
            "heartbeat": heartbeat.model_dump(mode="json", by_alias=True) if heartbeat else None,
            "heartbeat_error": heartbeat_error,
            "steps": rows,
            "quarantined": [q.model_dump(mode="json", by_alias=True) for q in quarantined.values()],
            "repairs": repairs,
        }
        print(json.dumps(doc, indent=2))
        return EXIT_FAILED if failed else EXIT_OK
    for r in rows:
        mark = "*" if r["latest"] else " "
        size = human_bytes(r["bytes"]) if "bytes" in r else "?"
        line = f"{mark} step {r['step']:>8}  {r.get('files', '?'):>4} files  {size:>10}"
        made = r.get("created_at")
        line += f"  {when(datetime.fromisoformat(made)) if made else r.get('error', '')}"
        if r["quarantined"]:
            line += "  QUARANTINED"
        if verify:
            line += "  verified" if r["verified"] else f"  FAILS: {r['why']}"
        print(line)
    if pointer:
        print(
            f"latest.json → step {pointer.step} (generation {pointer.generation}, "
            f"{one_line(pointer.writer, 200)}, {when(pointer.written_at)})"
        )
    else:
        print(f"latest.json: {pointer_error or 'none'}")
    if heartbeat:
        print(
            f"heartbeat: {heartbeat.phase} step {'-' if heartbeat.step is None else heartbeat.step}"
            f" g{heartbeat.generation} at {when(heartbeat.at)}"
        )
    elif heartbeat_error:
        print(f"heartbeat: {heartbeat_error}")
    for q in quarantined.values():
        # Pod-written, like the repair records: one line each, never a workflow command.
        print(one_line(f"quarantined: step {q.step} {q.manifest} ({q.reason}) by g{q.generation}"))
    for ev in repairs[-10:]:
        print(
            one_line(
                f"repair: {ev['at']} {ev['kind']} step {ev['step']} g{ev['generation']}: "
                f"{ev['detail']}"
            )
        )
    return EXIT_FAILED if failed else EXIT_OK
