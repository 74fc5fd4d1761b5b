"""What a run has cost: each generation's instance price × the time it billed. Pure.

One figure for every reader: `respawn status`, `respawn history`, `--json`, the step summary
and the budget breaker. The price is the one the provider's read-back confirmed at launch
(Vast's `dph_total` includes the disk; RunPod's `costPerHr`), kept in the ledger. A generation
bills from its launch until the controller saw it end (`LaunchRecord.ended_at`: terminated,
replaced, finished), else until the next launch, else until now.

A generation's claim is saved before its create, at the run's max_price_per_hour; the
outcome (the instance and its price, or the error) is saved after. A claim whose outcome
never reached the ledger (the tick lost the run mid-launch, or died) is billed and counted
as a launch at that ceiling: what the create may have rented is never left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from respawn.controller.model import LaunchRecord


class GenerationCost(BaseModel):
    model_config = ConfigDict(frozen=True)

    generation: int
    start: datetime
    end: datetime
    price_per_hour: float
    dollars: float

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600


def billed_until(lr: LaunchRecord, following: LaunchRecord | None, now: datetime) -> datetime:
    if lr.ended_at is not None:
        return lr.ended_at
    if following is not None:
        return following.at
    return now


def rented(lr: LaunchRecord) -> bool:
    """The launch may have rented an instance: it has one, or no outcome was recorded."""
    return lr.instance_id is not None or lr.error is None


def generation_costs(launches: Sequence[LaunchRecord], now: datetime) -> list[GenerationCost]:
    """One entry per launch that may have rented an instance (`rented`), oldest first."""
    ordered = sorted(launches, key=lambda lr: (lr.at, lr.generation))
    out = []
    for i, lr in enumerate(ordered):
        if not rented(lr):
            continue  # it failed: nothing was rented
        end = max(lr.at, billed_until(lr, ordered[i + 1] if i + 1 < len(ordered) else None, now))
        hours = (end - lr.at).total_seconds() / 3600
        out.append(
            GenerationCost(
                generation=lr.generation,
                start=lr.at,
                end=end,
                price_per_hour=lr.price_per_hour,
                dollars=lr.price_per_hour * hours,
            )
        )
    return out


def total_spend(launches: Sequence[LaunchRecord], now: datetime) -> float:
    return sum(c.dollars for c in generation_costs(launches, now))


def spend_in_window(
    launches: Sequence[LaunchRecord], now: datetime, window: timedelta = timedelta(days=1)
) -> float:
    """$ billed inside the last `window` (the budget's rolling 24 h)."""
    since = now - window
    total = 0.0
    for c in generation_costs(launches, now):
        start, end = max(c.start, since), c.end
        if end > start:
            total += c.price_per_hour * (end - start).total_seconds() / 3600
    return total
