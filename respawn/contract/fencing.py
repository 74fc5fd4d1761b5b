"""The fence: which generation owns a run (`RUN/control/fence.json`, `docs/contracts.md`).

The controller writes it whenever it claims a generation (before a launch, before a
rollback), right after its ledger. A pod reads it before it writes: a pod whose generation
is below the fence's stops writing. It is plain JSON (pods cannot verify the controller's
signature); a pod-written fence can stall pods, never resume a halted run or unfence one,
since the controller's ledger still decides every launch. A fence more than
`MAX_FENCE_AHEAD` generations above a writer's own is ignored (with a warning): no controller
claims that many while the writer lives, so it can only be made up. The controller puts a
made-up fence back at its ledger's generation at its next acting tick.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

FENCE_SCHEMA = 1
#: A writer obeys a fence at most this many generations above its own. The controller claims
#: at most one generation per run and tick, and a claim above a live pod's generation comes
#: with that pod's termination, so a real fence this far ahead (a thousand ticks of failed
#: launches while the pod lived on) does not happen; a pod-written one (plain JSON, or a
#: forged unsigned ledger in a store from before the fence) would stall the honest pod.
MAX_FENCE_AHEAD = 1000


class Fence(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    schema_: int = Field(FENCE_SCHEMA, alias="schema")
    run: str = Field(min_length=1, max_length=256)
    # Bounded: a generation is a launch count, never a 5,000-digit number.
    generation: int = Field(ge=0, le=10**12)
    at: datetime

    @field_validator("at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("needs a timezone (e.g. 2026-01-01T00:00:00Z)")
        return v
