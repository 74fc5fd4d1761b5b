"""What the W&B signal means for a run's health. Pure: no I/O, no clock (`now` is an argument).

W&B is one signal among three (pointer, pod heartbeat, W&B). Its `state` lags and lies (a
reclaimed pod's run shows "running" for minutes), so it only ever adds to a reason; its `_step`
counts as progress; and the circuit-breaker metric is the one judgement only W&B can make.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta

from respawn.controller.config import DegenerateRule, RunConfig
from respawn.controller.model import Ledger, Observation, WandbRunSignal


def primary_run_id(run: RunConfig, ledger: Ledger) -> str:
    """The W&B run the trainer logs to: fixed in the config, else the one respawn gave the
    first pod (the ledger remembers it), else the pod's default (the run name).

    Never the pointer's `wandb_run_id`: any pod key writes latest.json, and the id steers
    both the next pod's W&B run and the signals the run's health is judged by (issue 19.5)."""
    ref = run.wandb
    return (ref.run_id if ref else None) or ledger.wandb_run_id or run.name


def watched_run_ids(run: RunConfig, ledger: Ledger) -> list[str]:
    if run.wandb is None:
        return []
    ids = [primary_run_id(run, ledger), *run.wandb.also_watch]
    return list(dict.fromkeys(ids))


_OPS = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def holds(rule: DegenerateRule, value: float) -> bool:
    if rule.condition.startswith("is"):
        return math.isnan(value)
    m = re.match(r"^(==|!=|<=|>=|<|>)\s*(\S+)$", rule.condition)
    assert m is not None, rule.condition  # the config validated it
    # NaN compares false with everything: a NaN reward is caught by its own `is nan` rule.
    return not math.isnan(value) and _OPS[m.group(1)](value, float(m.group(2)))


def rolled_back_through(ledger: Ledger) -> int | None:
    """W&B rows at or below this step belong to a streak already rolled back: W&B keeps a
    resumed run's old rows (and drops re-logged steps below its last one)."""
    steps = [r.wandb_step for r in ledger.rollbacks if r.wandb_step is not None]
    return max(steps) if steps else None


def usable(obs: Observation) -> list[WandbRunSignal]:
    return [s for s in obs.wandb if s.error is None]


def wandb_step(obs: Observation) -> int | None:
    """The newest W&B `_step` that says something about this generation."""
    floor = rolled_back_through(obs.ledger)
    steps = [
        s.step for s in usable(obs) if s.step is not None and (floor is None or s.step > floor)
    ]
    return max(steps) if steps else None


def streak(rule: DegenerateRule, sig: WandbRunSignal, after: int | None) -> tuple[int, int]:
    """(first step, length) of the run of rows at the end of the tail meeting the condition."""
    rows = [(s, v) for s, v in sig.tail if after is None or s > after]
    n, start = 0, -1
    for s, v in reversed(rows):
        if not holds(rule, v):
            break
        n, start = n + 1, s
    return start, n


def degenerate(rule: DegenerateRule | None, obs: Observation) -> tuple[str, int, int] | None:
    """(reason, streak start, W&B step) when any watched W&B run is degenerate (worst of)."""
    if rule is None:
        return None
    after = rolled_back_through(obs.ledger)
    worst: tuple[int, int, WandbRunSignal] | None = None
    for sig in usable(obs):
        start, n = streak(rule, sig, after)
        if n >= rule.steps and (worst is None or n > worst[1]):
            worst = (start, n, sig)
    if worst is None:
        return None
    start, n, sig = worst
    reason = (
        f"{rule.metric} {rule.condition} for {n} logged steps since W&B step {start} "
        f"(run {sig.run_id}; health.degenerate.steps={rule.steps})"
    )
    return reason, start, max(s for s, _ in sig.tail)


def rollback_target(
    published: tuple[int, ...], streak_start: int, pointer_step: int | None
) -> int | None:
    """The newest published step from before the streak began, never above the pointer: the
    steps above it are the leftovers of an earlier rollback (the bad streak's manifests stay in
    the store until the resumed run publishes those steps again)."""
    before = [
        s for s in published if s < streak_start and (pointer_step is None or s <= pointer_step)
    ]
    return max(before) if before else None


def rollbacks_in_window(rule: DegenerateRule, ledger: Ledger, now: datetime) -> int:
    return sum(1 for r in ledger.rollbacks if now - r.at < rule.window)


def _ago(delta: timedelta) -> str:
    s = max(0, int(delta.total_seconds()))  # W&B's clock may run ahead of ours
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def wandb_note(obs: Observation, now: datetime) -> str:
    """A clause for the verdict's reason: which W&B run is behind, or that W&B is unknown."""
    sigs = obs.wandb
    if not sigs:
        return ""
    down = [s for s in sigs if s.error is not None]
    if len(down) == len(sigs):
        return f"; W&B unknown ({down[0].error})"
    parts = []
    if len(sigs) > 1:
        seen = [s for s in usable(obs) if s.heartbeat_at is not None]
        if seen:
            behind = min(seen, key=lambda s: s.heartbeat_at or now)
            if any(s.heartbeat_at != behind.heartbeat_at for s in seen):
                assert behind.heartbeat_at is not None
                parts.append(
                    f"W&B run {behind.run_id} is behind (step {behind.step}, "
                    f"last heartbeat {_ago(now - behind.heartbeat_at)} ago)"
                )
    for s in down:
        parts.append(f"W&B run {s.run_id} unknown")
    states = {s.state for s in usable(obs)}
    if states and states != {"running"}:
        parts.append("W&B state " + "/".join(sorted(x or "?" for x in states)))
    return "; " + "; ".join(parts) if parts else ""
