"""A small deterministic trainer laid out like prime-rl, for the demo and the tests.

Its state is one integer advanced by a fixed recurrence; its loss is a function of that state
and the step. So a run resumed from a checkpoint reproduces the uninterrupted loss trajectory
exactly, and a resume from the wrong step or a corrupted state does not.

Checkpoint layout (prime-rl-like, two sources):
  outputs/checkpoints/step_{step}/   trainer state + rng shard, complete by quiescence
  outputs/weights/step_{step}/       weights, complete when STABLE exists (written last)
Metrics go to metrics.jsonl, one {"step", "loss", "reward", "pid"} line per step.
`--zero-reward-from N` stands for prime-rl's silent failure: the inference server dies and the
reward is 0 from step N on. Only a fresh start has it (a resumed run's server is a new one).

Stdlib only: it stands for the user's trainer, which knows nothing of respawn.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

MOD = 2**31 - 1
WEIGHTS_BYTES = 64 * 1024
FROZEN_BYTES = 256 * 1024  # never changes: the store links it instead of sending it again


def advance(state: int, step: int, seed: int) -> int:
    return (state * 48271 + seed * 7919 + step) % MOD


def loss_at(state: int, step: int) -> float:
    return round(2.0 * math.exp(-step / 40.0) + (state % 1000) / 10000.0, 12)


def initial_state(seed: int) -> int:
    return (seed * 2654435761) % MOD or 1


def trajectory(seed: int, steps: int) -> list[float]:
    """The uninterrupted run's losses for steps 1..steps."""
    state, out = initial_state(seed), []
    for step in range(1, steps + 1):
        state = advance(state, step, seed)
        out.append(loss_at(state, step))
    return out


def _blob(seed: int, step: int, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{step}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def save(workdir: Path, step: int, state: int, seed: int) -> None:
    ckpt = workdir / "outputs" / "checkpoints" / f"step_{step}"
    weights = workdir / "outputs" / "weights" / f"step_{step}"
    ckpt.mkdir(parents=True, exist_ok=True)
    weights.mkdir(parents=True, exist_ok=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": step, "state": state}))
    (ckpt / "rng.bin").write_bytes(_blob(seed, step, 4096))
    (weights / "frozen_embeddings.bin").write_bytes(_blob(seed, 0, FROZEN_BYTES))
    (weights / "model.bin").write_bytes(_blob(seed, step, WEIGHTS_BYTES))
    (weights / "STABLE").write_text("ok\n")


def load(workdir: Path, step: int) -> int:
    ckpt = workdir / "outputs" / "checkpoints" / f"step_{step}" / "trainer_state.json"
    doc = json.loads(ckpt.read_text())
    if doc["step"] != step:
        raise SystemExit(f"checkpoint {ckpt} holds step {doc['step']}, not {step}")
    return int(doc["state"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("."))
    p.add_argument("--resume-step", type=int, default=0)
    p.add_argument("--target-step", type=int, required=True)
    p.add_argument("--ckpt-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-seconds", type=float, default=0.0)
    p.add_argument("--zero-reward-from", type=int, help="reward 0 from this step (fresh starts)")
    args = p.parse_args(argv)

    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    workdir: Path = args.workdir
    state = load(workdir, args.resume_step) if args.resume_step else initial_state(args.seed)
    broken_from = args.zero_reward_from if not args.resume_step else None
    with open(workdir / "metrics.jsonl", "a") as metrics:
        for step in range(args.resume_step + 1, args.target_step + 1):
            state = advance(state, step, args.seed)
            reward = 0.0 if broken_from is not None and step >= broken_from else 1.0
            row = {"step": step, "loss": loss_at(state, step), "reward": reward, "pid": os.getpid()}
            metrics.write(json.dumps(row))
            metrics.write("\n")
            metrics.flush()
            if args.step_seconds:
                time.sleep(args.step_seconds)
            if step % args.ckpt_every == 0 or step == args.target_step or stop:
                save(workdir, step, state, args.seed)
            if stop:
                print(f"toy_trainer: SIGTERM, checkpointed step {step}", flush=True)
                return 0
    print(f"toy_trainer: reached step {args.target_step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
