"""Reports of a tick: a table on stdout, one JSON document (--json), a GitHub step summary."""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

from respawn.controller.classify import ago
from respawn.controller.cost import generation_costs, spend_in_window
from respawn.controller.model import Alert, Health, Notify, RunReport, describe, repair_line
from respawn.controller.notify import annotation
from respawn.controller.redact import NO_REDACTION, Redactor, code_span, one_line

NEEDS_HUMAN = {Health.HALTED, Health.UNKNOWN}


def when(at: datetime) -> str:
    """The one time format of human output: UTC, to the second."""
    return f"{at:%Y-%m-%d %H:%M:%S}Z"


def tick_lag(r: RunReport) -> str:
    """How long before this tick the controller last ticked for the run: the schedule is
    best-effort, and a lag far above the cron interval means ticks were dropped."""
    if r.previous_tick is None or r.now is None:
        return "no earlier tick recorded"
    return f"previous tick {ago(r.now - r.previous_tick)} ago ({when(r.previous_tick)})"


def store_notes(r: RunReport) -> list[str]:
    """The store's own repairs as warnings: each quarantined step (until a person deletes it)
    and each repair record new since the last tick. Pod-written text: redact and clean it."""
    seen = r.observation.store_repairs
    notes = [
        f"step {s} quarantined: it failed verification and is kept for inspection "
        f"(respawn ckpt ls --run {r.run})"
        for s in seen.quarantined_steps
    ]
    notes += [
        "repair: " + repair_line(e.kind, e.step, e.generation, e.writer, e.detail) for e in seen.new
    ]
    if seen.unread:
        notes.append(f"repair: {seen.unread} more repair records not read")
    return notes


def to_json(reports: list[RunReport], redact: Redactor = NO_REDACTION) -> dict[str, Any]:
    runs: list[Any] = []
    for r in reports:
        v = r.plan.verdict
        told = r.notified
        if r.results:
            actions = [
                {**res.action.model_dump(mode="json"), "ok": res.ok, "detail": res.detail}
                for res in r.results
            ]
        else:
            detail = "planned (dry run)" if r.dry_run else "planned"
            actions = [
                {**a.model_dump(mode="json"), "ok": None, "detail": detail} for a in r.plan.actions
            ]
        runs.append(
            {
                "run": r.run,
                "health": v.health.value,
                "reason": v.reason,
                "step": v.step,
                "generation": r.plan.ledger.generation,
                "cost": _cost(r),
                "previous_tick_at": r.previous_tick.isoformat() if r.previous_tick else None,
                "tick_lag_s": (
                    round((r.now - r.previous_tick).total_seconds())
                    if r.previous_tick and r.now
                    else None
                ),
                "instances": [
                    i.model_dump(
                        mode="json",
                        include={
                            "provider",
                            "id",
                            "name",
                            "generation",
                            "state",
                            "price_per_hour",
                            "interruptible",
                        },
                    )
                    for i in r.observation.instances
                ],
                "actions": actions,
                "notified": None
                if told is None
                else {**told.action.model_dump(mode="json"), "ok": told.ok, "detail": told.detail},
                "skipped": r.skipped,
                "warnings": list(r.observation.warnings),
                "quarantined_steps": list(r.observation.store_repairs.quarantined_steps),
                "repairs": [
                    e.model_dump(mode="json", exclude={"schema_"})
                    for e in r.observation.store_repairs.new
                ],
                "wandb": [
                    s.model_dump(mode="json", include={"run_id", "url", "state", "step", "error"})
                    for s in r.observation.wandb
                ],
            }
        )
    return {"runs": redact.deep(runs)}


def _cost(r: RunReport) -> dict[str, Any]:
    """Spend by generation and in total (`controller/cost.py`: the budget breaker's figure)."""
    now = r.now
    if now is None:
        return {"total": 0.0, "last_24h": 0.0, "generations": []}
    costs = generation_costs(r.plan.ledger.launches, now)
    return {
        "total": round(sum(c.dollars for c in costs), 4),
        "last_24h": round(spend_in_window(r.plan.ledger.launches, now), 4),
        "generations": [
            {
                "generation": c.generation,
                "price_per_hour": c.price_per_hour,
                "hours": round(c.hours, 4),
                "dollars": round(c.dollars, 4),
            }
            for c in costs
        ],
    }


def spent(r: RunReport) -> str:
    cost = _cost(r)
    return f"${cost['total']:.2f} (24h ${cost['last_24h']:.2f})"


def _needs_human(r: RunReport) -> bool:
    health = r.plan.verdict.health
    if health is Health.HALTED:
        # A halted run fails the workflow once, when it halts: not every tick after.
        return r.observation.ledger.notified is not Health.HALTED
    halted_now = r.plan.ledger.halted is not None and r.observation.ledger.halted is None
    return health in NEEDS_HUMAN or halted_now


def exit_code(reports: list[RunReport]) -> int:
    bad = any(r.failed or _needs_human(r) for r in reports)
    return 1 if bad else 0


def annotation_lines(reports: list[RunReport], redact: Redactor = NO_REDACTION) -> list[str]:
    """GitHub annotations for the notifications this tick sent (once per change of state)."""
    return [
        annotation(r.notified.action, redact)
        for r in reports
        if r.notified is not None and isinstance(r.notified.action, Notify)
    ]


def to_text(reports: list[RunReport], redact: Redactor = NO_REDACTION) -> str:
    """For a terminal: every piece that came from outside (a reason quoting a provider or a
    heartbeat, an instance id) is redacted, then stripped of escape sequences, one line."""

    def safe(text: str) -> str:
        return one_line(redact(text))

    lines = [f"{'RUN':<20} {'HEALTH':<10} {'STEP':<13} REASON"] if reports else []
    for r in reports:
        v = r.plan.verdict
        step = "-" if v.step is None else str(v.step)
        lines.append(f"{r.run:<20} {v.health.value:<10} step {step:<8} {safe(v.reason)}")
        lines.append(f"  {tick_lag(r)}; spent {spent(r)}")
        for i in r.observation.instances:
            market = {True: " spot", False: " on-demand"}.get(i.interruptible, "")  # type: ignore[arg-type]
            lines.append(
                f"  instance {safe(f'{i.provider}:{i.id} {i.name}')} {i.state.value}{market}"
            )
        lines += [f"  warning: {safe(w)}" for w in [*r.observation.warnings, *store_notes(r)]]
        for w in r.observation.wandb:
            seen = w.error or f"{w.state}, step {'-' if w.step is None else w.step}"
            lines.append(f"  W&B {safe(w.url)} ({safe(seen)})")
        every = [*r.results, *([r.notified] if r.notified else [])]
        if every:
            for res in every:
                mark = "ok " if res.ok else "FAILED "
                extra = f" — {res.detail}" if res.detail else ""
                lines.append(f"  {mark}{safe(describe(res.action) + extra)}")
        else:
            tag = "would " if r.dry_run else "plan: "
            lines += [f"  {tag}{safe(describe(a))}" for a in r.plan.actions]
    return "\n".join(lines)


def to_markdown(reports: list[RunReport], redact: Redactor = NO_REDACTION) -> str:
    """For the GitHub step summary: untrusted text goes in code spans, never as Markdown."""

    def safe(text: str) -> str:
        return code_span(redact(text))

    rows = [
        "| run | health | step | reason | actions | spent | tick lag |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in reports:
        v = r.plan.verdict
        acts = (
            "<br>".join(
                _mark(res.ok, res.action)
                + safe(describe(res.action) + (f" — {res.detail}" if res.detail else ""))
                for res in [*r.results, *([r.notified] if r.notified else [])]
            )
            or "<br>".join(safe(describe(a)) for a in r.plan.actions)
            or "—"
        )
        reason = safe(v.reason)
        rows.append(
            f"| {r.run} | {v.health.value} | {v.step if v.step is not None else '—'} "
            f"| {reason} | {acts} | {spent(r)} | {tick_lag(r)} |"
        )
    warnings = [f"- ⚠️ {r.run}: {safe(note)}" for r in reports for note in store_notes(r)]
    tail = "\n\n" + "\n".join(warnings) if warnings else ""
    return "## respawn\n\n" + "\n".join(rows) + tail + "\n"


def _mark(ok: bool, action: object) -> str:
    if not ok:
        return "❌ "
    return "⚠️ " if isinstance(action, Alert | Notify) else "✅ "


def write_step_summary(reports: list[RunReport], redact: Redactor = NO_REDACTION) -> None:
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a") as f:
            f.write(to_markdown(reports, redact))


def dumps(reports: list[RunReport], redact: Redactor = NO_REDACTION) -> str:
    return json.dumps(to_json(reports, redact), indent=2)
