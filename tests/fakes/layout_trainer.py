"""A trainer that checkpoints exactly like a real one does on disk, without torch.

`python layout_trainer.py LAYOUT [flags of that trainer]`, LAYOUT one of the worked configs of
docs/protect-your-run.md: `prime-rl`, `hf`, `pytorch`, `nanogpt`, `lightning`. The flags are the
ones the guide's commands pass. Its state is one integer advanced by toy_trainer's recurrence
(copied: this stands for the user's code, which imports nothing of respawn), so a resumed run
reproduces the uninterrupted run's losses exactly. Metrics: `metrics.jsonl`, one
{"step", "loss"} line per step. SIGTERM: save at the end of the current step, exit 0.
Environment: LAYOUT_TARGET (last step), LAYOUT_STEP_SECONDS (sleep per step).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

MOD = 2**31 - 1
SEED = 11


def advance(state: int, step: int) -> int:
    return (state * 48271 + SEED * 7919 + step) % MOD


def loss_at(state: int, step: int) -> float:
    return round(2.0 * math.exp(-step / 40.0) + (state % 1000) / 10000.0, 12)


def trajectory(steps: int) -> list[float]:
    state, out = (SEED * 2654435761) % MOD, []
    for step in range(1, steps + 1):
        state = advance(state, step)
        out.append(loss_at(state, step))
    return out


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _doc(step: int, state: int) -> bytes:
    return json.dumps({"step": step, "state": state}).encode() + b"\0" * 2048


def _read(path: Path) -> tuple[int, int]:
    doc = json.loads(path.read_bytes().rstrip(b"\0"))
    return int(doc["step"]), int(doc["state"])


class Layout:
    """save(step, state) writes one checkpoint; load() -> (step, state) or None (fresh)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def every(self) -> int:
        return 5

    def save(self, step: int, state: int) -> None:
        raise NotImplementedError

    def load(self) -> tuple[int, int] | None:
        raise NotImplementedError


class PrimeRL(Layout):
    """outputs/checkpoints/step_N, outputs/run_default/checkpoints/step_N (quiet), and
    outputs/weights/step_N with STABLE last."""

    def every(self) -> int:
        return self.args.ckpt_interval

    def save(self, step: int, state: int) -> None:
        _write(Path(f"outputs/checkpoints/step_{step}/trainer/rank_0.pt"), _doc(step, state))
        _write(Path(f"outputs/run_default/checkpoints/step_{step}/progress.pt"), _doc(step, 0))
        _write(Path(f"outputs/weights/step_{step}/model.safetensors"), _doc(step, state))
        _write(Path(f"outputs/weights/step_{step}/STABLE"), b"")

    def load(self) -> tuple[int, int] | None:
        n = self.args.ckpt_resume_step
        if not n:
            return None
        return _read(Path(f"outputs/checkpoints/step_{n}/trainer/rank_0.pt"))


class HF(Layout):
    """OUTPUT_DIR/checkpoint-N/: weights, optimizer, then trainer_state.json last;
    save_total_limit rotates old ones."""

    def every(self) -> int:
        return self.args.save_steps

    def save(self, step: int, state: int) -> None:
        d = Path(self.args.output_dir) / f"checkpoint-{step}"
        _write(d / "model.safetensors", _doc(step, state))
        _write(d / "optimizer.pt", b"o" * 1024)
        _write(d / "trainer_state.json", json.dumps({"global_step": step, "s": state}).encode())
        kept = sorted(Path(self.args.output_dir).glob("checkpoint-*"), key=_suffix_step)
        for old in kept[: -self.args.save_total_limit]:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()

    def load(self) -> tuple[int, int] | None:
        if not self.args.resume_from_checkpoint:
            return None
        doc = json.loads(
            (Path(self.args.resume_from_checkpoint) / "trainer_state.json").read_text()
        )
        return int(doc["global_step"]), int(doc["s"])


class PyTorch(Layout):
    """ckpt/step_N/state.pt (written whole, then renamed), then DONE."""

    def save(self, step: int, state: int) -> None:
        d = Path(f"ckpt/step_{step}")
        _write(d / "state.pt.tmp", _doc(step, state))
        os.replace(d / "state.pt.tmp", d / "state.pt")
        _write(d / "DONE", b"")

    def load(self) -> tuple[int, int] | None:
        n = self.args.resume_step
        return _read(Path(f"ckpt/step_{n}/state.pt")) if n else None


class NanoGPT(Layout):
    """out/ckpt.pt overwritten in place on every save (iter_num inside), then the sidecar
    out/ckpt.json; `--init_from resume` loads out/ckpt.pt."""

    def every(self) -> int:
        return self.args.eval_interval

    def save(self, step: int, state: int) -> None:
        out = Path(self.args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "ckpt.pt", "wb") as f:  # in place: same file, truncated and rewritten
            f.write(_doc(step, state))
        _write(out / "ckpt.json", json.dumps({"iter_num": step}).encode())

    def load(self) -> tuple[int, int] | None:
        if self.args.init_from != "resume":
            return None
        return _read(Path(self.args.out_dir) / "ckpt.pt")


class Lightning(Layout):
    """checkpoints/step=N.ckpt (one file per step, top 2 kept), then checkpoints/last.ckpt
    (a copy); `--ckpt_path last` resumes from last.ckpt when it exists."""

    def save(self, step: int, state: int) -> None:
        d = Path("checkpoints")
        _write(d / f"step={step}.ckpt", _doc(step, state))
        _write(d / "last.ckpt", _doc(step, state))
        for old in sorted(d.glob("step=*.ckpt"), key=_suffix_step)[:-2]:
            old.unlink()

    def load(self) -> tuple[int, int] | None:
        last = Path("checkpoints/last.ckpt")
        if self.args.ckpt_path != "last" or not last.exists():
            return None
        return _read(last)


def _suffix_step(p: Path) -> int:
    digits = "".join(c for c in p.name.rsplit("-", 1)[-1].rsplit("=", 1)[-1] if c.isdigit())
    return int(digits or 0)


LAYOUTS: dict[str, type[Layout]] = {
    "prime-rl": PrimeRL,
    "hf": HF,
    "pytorch": PyTorch,
    "nanogpt": NanoGPT,
    "lightning": Lightning,
}


def parse(argv: list[str]) -> tuple[str, argparse.Namespace]:
    p = argparse.ArgumentParser()
    p.add_argument("layout", choices=sorted(LAYOUTS))
    p.add_argument("--ckpt.interval", dest="ckpt_interval", type=int, default=5)
    p.add_argument("--ckpt.resume-step", dest="ckpt_resume_step", type=int, default=0)
    p.add_argument("--output_dir", default="out")
    p.add_argument("--save_steps", type=int, default=5)
    p.add_argument("--save_total_limit", type=int, default=3)
    p.add_argument("--resume_from_checkpoint")
    p.add_argument("--resume-step", dest="resume_step", type=int, default=0)
    p.add_argument("--target-step", dest="target_step", type=int)
    p.add_argument("--out_dir", default="out")
    p.add_argument("--init_from", default="scratch")
    p.add_argument("--eval_interval", type=int, default=5)
    p.add_argument("--ckpt_path")
    args, _unknown = p.parse_known_args(argv)  # the rest of a real trainer's flags
    return args.layout, args


def main(argv: list[str]) -> int:
    name, args = parse(argv)
    layout = LAYOUTS[name](args)
    target = int(os.environ.get("LAYOUT_TARGET") or args.target_step or 30)
    pause = float(os.environ.get("LAYOUT_STEP_SECONDS", "0.05"))
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    loaded = layout.load()
    done, state = loaded if loaded else (0, (SEED * 2654435761) % MOD)
    print(f"layout_trainer {name}: starting after step {done}", flush=True)
    with open("metrics.jsonl", "a") as metrics:
        for step in range(done + 1, target + 1):
            state = advance(state, step)
            metrics.write(json.dumps({"step": step, "loss": loss_at(state, step)}) + "\n")
            metrics.flush()
            time.sleep(pause)
            if step % layout.every() == 0 or step == target or stop:
                layout.save(step, state)
            if stop:
                print(f"layout_trainer: SIGTERM, checkpointed step {step}", flush=True)
                return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
