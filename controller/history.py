"""A run's history, generation by generation, from the ledger alone. Pure.

Every figure comes from the controller's own records (`LaunchRecord`): when each generation
was launched, on what and at what price, the newest step the controller saw it reach, and
when and why it ended. Steps lost are the steps a generation reached beyond the step its
successor resumed from; downtime is the time from a generation's last progress to its
successor's first progress past its resume step.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from respawn.controller.cost import generation_costs
from respawn.controller.model import LaunchRecord, Ledger


class GenerationRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    generation: int
    provider: str | None
    instance_id: str | None
    market: str | None
    price_per_hour: float
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    end_detail: str | None
    resume_step: int | None
    last_step: int | None
    last_progress_at: datetime | None
    steps_lost: int | None
    downtime_s: float | None
    cost: float
    error: str | None = None


class RunHistory(BaseModel):
    model_config = ConfigDict(frozen=True)

    run: str
    generations: tuple[GenerationRow, ...]
    total_cost: float
    total_downtime_s: float
    total_steps_lost: int
    finished_at: datetime | None = None
    halted: str | None = None


def _steps_lost(lr: LaunchRecord, following: LaunchRecord | None) -> int | None:
    if following is None or lr.last_step is None:
        return None
    resumed = following.resume_step if following.resume_step is not None else 0
    return max(0, lr.last_step - resumed)


def _downtime(lr: LaunchRecord, following: LaunchRecord | None, now: datetime) -> float | None:
    """From this generation's last progress (or its end) to the next one's first progress
    (or now, while it has made none)."""
    if following is None:
        return None
    left = lr.last_progress_at or lr.ended_at or following.at
    back = following.first_progress_at or now
    return max(0.0, (back - left).total_seconds())


def history(ledger: Ledger, now: datetime) -> RunHistory:
    launches = sorted(ledger.launches, key=lambda lr: (lr.at, lr.generation))
    costs = {c.generation: c for c in generation_costs(launches, now)}
    rows = []
    for i, lr in enumerate(launches):
        following = next((n for n in launches[i + 1 :] if n.instance_id is not None), None)
        cost = costs.get(lr.generation)
        rows.append(
            GenerationRow(
                generation=lr.generation,
                provider=lr.provider,
                instance_id=lr.instance_id,
                market=lr.market,
                price_per_hour=lr.price_per_hour,
                started_at=lr.at,
                ended_at=lr.ended_at or (cost.end if cost and following else None),
                end_reason=lr.end_reason
                or ("launch failed" if lr.instance_id is None and lr.error else None),
                end_detail=lr.end_detail,
                resume_step=lr.resume_step,
                last_step=lr.last_step,
                last_progress_at=lr.last_progress_at,
                steps_lost=_steps_lost(lr, following) if lr.instance_id else None,
                downtime_s=_downtime(lr, following, now) if lr.instance_id else None,
                cost=cost.dollars if cost else 0.0,
                error=lr.error,
            )
        )
    return RunHistory(
        run=ledger.run,
        generations=tuple(rows),
        total_cost=sum(r.cost for r in rows),
        total_downtime_s=sum(r.downtime_s or 0.0 for r in rows),
        total_steps_lost=sum(r.steps_lost or 0 for r in rows),
        finished_at=ledger.finished_at,
        halted=ledger.halted,
    )
