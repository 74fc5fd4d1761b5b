"""`respawn history`: every generation of a run, what it ran on, what it cost, why it ended."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from respawn.controller.exits import EXIT_FAILED, EXIT_OK
from respawn.controller.history import RunHistory, history
from respawn.controller.redact import Redactor, one_line


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    from datetime import timedelta

    from respawn.controller.classify import ago

    return ago(timedelta(seconds=seconds))


def to_text(hist: RunHistory, redact: Redactor) -> str:
    from respawn.controller.report import when

    head = (
        f"run {hist.run}: {len(hist.generations)} generations, ${hist.total_cost:.2f} spent, "
        f"{_span(hist.total_downtime_s)} down, {hist.total_steps_lost} steps lost"
    )
    if hist.finished_at is not None:
        head += f", finished {when(hist.finished_at)}"
    if hist.halted:
        head += f", halted: {hist.halted}"
    lines = [
        one_line(redact(head), 2000),
        f"{'GEN':<5} {'INSTANCE':<24} {'MARKET':<11} {'$/H':>7} {'STARTED':<20} "
        f"{'ENDED':<20} {'WHY':<13} {'STEPS':<15} {'LOST':>5} {'DOWN':>6} {'COST':>8}",
    ]

    def safe(text: str, limit: int = 500) -> str:  # a provider's words: one clean line
        return one_line(redact(text), limit)

    for g in hist.generations:
        where = safe(f"{g.provider}:{g.instance_id}", 24) if g.instance_id else "(none)"
        steps = f"{'start' if g.resume_step is None else g.resume_step}→" + (
            "-" if g.last_step is None else str(g.last_step)
        )
        why = g.end_reason or ("running" if g.instance_id else "-")
        row = (
            f"g{g.generation:<4} {where:<24} {safe(g.market or '-'):<11} "
            f"{g.price_per_hour:>7.3f} {when(g.started_at):<20} "
            f"{(when(g.ended_at) if g.ended_at else '-'):<20} {why:<13} {steps:<15} "
            f"{'-' if g.steps_lost is None else g.steps_lost:>5} {_span(g.downtime_s):>6} "
            f"{f'${g.cost:.2f}':>8}"
        )
        lines.append(row)
        if g.error:
            lines.append("      launch failed: " + safe(g.error))
    return "\n".join(lines)


def cmd_history(args: argparse.Namespace, fleet: object, redact: Redactor) -> int:
    from respawn.controller.config import FleetConfig
    from respawn.controller.ledger import find_ledger
    from respawn.controller.stores import open_run_store
    from respawn.store.backend import StoreError
    from respawn.store.schema import utcnow

    assert isinstance(fleet, FleetConfig)
    run = fleet.run(args.run)
    now = utcnow()
    try:
        ledger = find_ledger(open_run_store(fleet.store, run.name, read_only=True))
    except StoreError as e:
        print(
            redact(f"respawn history: cannot read the ledger of {run.name}: {e}"), file=sys.stderr
        )
        return EXIT_FAILED
    if ledger is None:
        print(f"run {run.name} has no history yet: it was never launched")
        return EXIT_OK
    hist = history(ledger, now)
    if args.json:
        print(json.dumps(redact.deep(hist.model_dump(mode="json")), indent=2))
    else:
        print(to_text(hist, redact))
    if args.plot is not None:
        from respawn.controller.plot import write_plot

        write_plot(hist, now, Path(args.plot))
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK
