"""Reports of a tick: a table on stdout, one JSON document (--json), a GitHub step summary."""

from __future__ import annotations

import json
import os
from typing import Any

from respawn.controller.model import Health, RunReport, describe
from respawn.controller.redact import NO_REDACTION, Redactor, code_span, one_line

NEEDS_HUMAN = {Health.HALTED, Health.UNKNOWN}


def to_json(reports: list[RunReport], redact: Redactor = NO_REDACTION) -> dict[str, Any]:
    runs: list[Any] = []
    for r in reports:
        v = r.plan.verdict
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
            }
        )
    return {"runs": redact.deep(runs)}


def exit_code(reports: list[RunReport]) -> int:
    bad = any(r.failed or r.plan.verdict.health in NEEDS_HUMAN for r in reports)
    return 1 if bad else 0


def to_text(reports: list[RunReport], redact: Redactor = NO_REDACTION) -> str:
    """For a terminal: every piece that came from outside (a reason quoting a provider or a
    heartbeat, an instance id) is redacted, then stripped of escape sequences, one line."""

    def safe(text: str) -> str:
        return one_line(redact(text))

    lines = []
    for r in reports:
        v = r.plan.verdict
        step = "-" if v.step is None else str(v.step)
        lines.append(f"{r.run:<20} {v.health.value:<10} step {step:<8} {safe(v.reason)}")
        for i in r.observation.instances:
            market = {True: " spot", False: " on-demand"}.get(i.interruptible, "")  # type: ignore[arg-type]
            lines.append(
                f"  instance {safe(f'{i.provider}:{i.id} {i.name}')} {i.state.value}{market}"
            )
        if r.results:
            for res in r.results:
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

    rows = ["| run | health | step | reason | actions |", "| --- | --- | --- | --- | --- |"]
    for r in reports:
        v = r.plan.verdict
        acts = (
            "<br>".join(
                ("✅ " if res.ok else "❌ ")
                + safe(describe(res.action) + (f" — {res.detail}" if res.detail else ""))
                for res in r.results
            )
            or "<br>".join(safe(describe(a)) for a in r.plan.actions)
            or "—"
        )
        reason = safe(v.reason)
        rows.append(
            f"| {r.run} | {v.health.value} | {v.step if v.step is not None else '—'} "
            f"| {reason} | {acts} |"
        )
    return "## respawn\n\n" + "\n".join(rows) + "\n"


def write_step_summary(reports: list[RunReport], redact: Redactor = NO_REDACTION) -> None:
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a") as f:
            f.write(to_markdown(reports, redact))


def dumps(reports: list[RunReport], redact: Redactor = NO_REDACTION) -> str:
    return json.dumps(to_json(reports, redact), indent=2)
