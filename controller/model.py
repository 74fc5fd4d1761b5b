"""Frozen domain objects of one controller tick: ledger, observation, verdict, plan."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from respawn.provisioning.base import Instance
from respawn.store.schema import Heartbeat, LatestPointer, RepairEvent
from respawn.store.strict import Generation, Name, Step, Text, Version

#: What a ledger read from the store may hold of each list: the writer keeps far fewer
#: (MAX_LEDGER_LAUNCHES, MAX_LEDGER_EVENTS), so more is not a ledger this code wrote.
MAX_LEDGER_ITEMS = 1000
#: No offer costs more than this an hour: a higher recorded price is not a real launch.
MAX_PRICE_PER_HOUR = 1e6


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Health(StrEnum):
    NEW = "new"  # never launched: the next tick launches generation 1
    STARTING = "starting"
    HEALTHY = "healthy"
    STALLED = "stalled"
    DEAD = "dead"
    DEGENERATE = "degenerate"
    FINISHED = "finished"
    HALTED = "halted"  # the controller halted it (a breaker): a person must look
    STOPPED = "stopped"  # a person halted it (`respawn terminate`): nothing to report
    UNKNOWN = "unknown"


# -- the ledger: the controller's only memory between stateless ticks ----------------------

#: Why a generation ended, in the words `respawn history` shows.
EndReason = Literal[
    "preempted", "dead", "stalled", "rolled back", "finished", "stopped", "halted", "replaced"
]


#: `end_detail` is kept this short in the ledger.
END_DETAIL_CHARS = 300


def _short(text: str) -> str:
    return text if len(text) <= END_DETAIL_CHARS else text[: END_DETAIL_CHARS - 1] + "…"


#: Cut when a ledger is validated: the controller validates what it writes after redacting
#: it (`act.save_ledger`), so a secret is masked whole before any of it is cut.
Detail = Annotated[str, AfterValidator(_short)]


class LaunchRecord(_Frozen):
    generation: Generation
    at: AwareDatetime
    provider: Name | None = None
    instance_id: Name | None = None
    price_per_hour: float = Field(0.0, ge=0, le=MAX_PRICE_PER_HOUR)
    market: Name | None = None  # interruptible | on_demand
    resume_step: Step | None = None
    error: Text | None = None
    # What became of the generation (`respawn history`): written by decide, never by a pod.
    ended_at: AwareDatetime | None = None
    end_reason: EndReason | None = None
    end_detail: Detail | None = None
    first_progress_at: AwareDatetime | None = Field(
        None, description="when the controller first saw this generation pass its resume step"
    )
    last_step: Step | None = Field(None, description="the newest step seen while it was current")
    last_progress_at: AwareDatetime | None = None
    listed_at: AwareDatetime | None = Field(
        None, description="when a listing first showed its instance (a later absence is no lag)"
    )


class RestartRecord(_Frozen):
    """A restart of the trainer in place (the instance stays)."""

    generation: Generation
    at: AwareDatetime
    provider: Name
    instance_id: Name


class ProgressMark(_Frozen):
    """The highest step seen and when it was first seen: how 'no progress for X' is known."""

    step: Step
    at: AwareDatetime


class HeartbeatMark(_Frozen):
    """The heartbeat's content as last seen and when the controller first saw that content:
    its age is judged by the controller's clock, never by the pod's `at`."""

    generation: Generation
    digest: Name
    at: AwareDatetime


class RollbackRecord(_Frozen):
    """The only way the pointer moves back: decided here, carried out by `act`."""

    at: AwareDatetime
    from_step: Step | None
    to_step: Step
    wandb_step: Step | None = Field(
        None, description="W&B's step at the rollback: rows up to it are the old, bad streak"
    )
    reason: Text


class LedgerEvent(_Frozen):
    at: AwareDatetime
    health: Health
    reason: Text
    actions: tuple[Text, ...] = Field((), max_length=MAX_LEDGER_ITEMS)


class Ledger(_Frozen):
    """Written by the controller only (a person's halt is the separate `HaltOrder`)."""

    schema_: int = Field(1, alias="schema", ge=0, le=1000)
    run: Name
    # Bumped by every write; a tick writes only over the version it read (stale writes fail).
    version: Version = 0
    generation: Generation = 0
    launches: tuple[LaunchRecord, ...] = Field((), max_length=MAX_LEDGER_ITEMS)
    restarts: tuple[RestartRecord, ...] = Field((), max_length=MAX_LEDGER_ITEMS)
    progress: ProgressMark | None = None
    heartbeat_seen: HeartbeatMark | None = None
    # Consecutive ticks on which the listing and the heartbeat disagreed about liveness.
    doubts: Version = 0
    halted: Text | None = None  # by a breaker (crash loop, budget)
    # The published step at which a trainer last exited cleanly below target_step: a second
    # clean exit there halts the run (it would stop the same way on any instance).
    early_exit_step: Step | None = None
    halted_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None
    # The target_step the run finished under: raising it above this extends the run.
    finished_target: Step | None = None
    events: tuple[LedgerEvent, ...] = Field((), max_length=MAX_LEDGER_ITEMS)
    rollbacks: tuple[RollbackRecord, ...] = Field((), max_length=MAX_LEDGER_ITEMS)
    wandb_run_id: Name | None = None
    notified: Health | None = Field(None, description="the state a person was last told of")
    repairs_seen: Name | None = Field(
        None, description="the newest store repair record already made a ledger event"
    )

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    def launch_of(self, generation: int) -> LaunchRecord | None:
        return next((lr for lr in reversed(self.launches) if lr.generation == generation), None)


MAX_LEDGER_LAUNCHES = 50
MAX_LEDGER_EVENTS = 50


class HaltOrder(_Frozen):
    """What a person said (`respawn terminate` / `respawn resume`), kept apart from the
    ledger so that no tick can overwrite it."""

    halted: bool
    reason: Text = ""
    at: AwareDatetime
    # A resume that lifted a stop by hand: when that stop was ordered. A terminate and a
    # resume between two ticks leave no tick that saw the run stopped; with this the
    # generation the person stopped ends in `history` as stopped, not preempted.
    stopped_at: AwareDatetime | None = None


class BreakerHalt(_Frozen):
    """The last halt a breaker made, kept apart from the ledger (`control/breaker.json`), so
    that a ledger lost or put back older cannot take the halt with it."""

    halted: str
    at: datetime


LedgerState = Literal["ok", "missing", "unreadable"]


# -- observation ---------------------------------------------------------------------------


class WandbRunSignal(_Frozen):
    """One W&B run as W&B reports it. `error` set means this signal is unknown this tick."""

    run_id: str
    url: str
    state: str | None = None
    heartbeat_at: datetime | None = None
    step: int | None = None
    runtime: float | None = None
    tail: tuple[tuple[int, float], ...] = Field((), description="(step, value) of the metric")
    error: str | None = None


class StoreRepairs(_Frozen):
    """What the store healed on its own (issue 8.5): pod-written, so shown as untrusted text."""

    quarantined_steps: tuple[int, ...] = Field(
        (), description="steps with a quarantined manifest, from the listing alone"
    )
    new: tuple[RepairEvent, ...] = Field(
        (), description="repair records newer than the ledger's `repairs_seen`, oldest first"
    )
    unread: int = Field(0, description="newer records not read this tick (too many at once)")
    newest: str | None = Field(None, description="the newest record's name: the next mark")


class Observation(_Frozen):
    """Everything one tick learned about a run. `errors` non-empty means it is incomplete."""

    run: str
    pointer: LatestPointer | None = None
    heartbeat: Heartbeat | None = None
    instances: tuple[Instance, ...] = ()
    ledger: Ledger
    ledger_state: LedgerState = "ok"
    ledger_signed: bool = Field(
        False, description="the ledger verified against this controller's signature"
    )
    pointer_generation: int | None = Field(
        None,
        description="latest.json's generation as read, also when the pointer itself is not "
        "acted on (no manifest): a fencing signal, never a step",
    )
    halt: HaltOrder | None = None
    errors: tuple[str, ...] = ()
    shell_access: bool = Field(
        False, description="the current instance's provider can reach into it (restart in place)"
    )
    wandb: tuple[WandbRunSignal, ...] = ()
    published_steps: tuple[int, ...] | None = Field(
        None, description="manifested steps, read only when a rollback may be needed"
    )
    warnings: tuple[str, ...] = ()
    store_repairs: StoreRepairs = StoreRepairs()
    fence_generation: int | None = Field(
        None, description="control/fence.json's generation as read: a fencing signal"
    )
    pointer_lost: str | None = Field(
        None,
        description="latest.json is missing or unreadable (why) while the run has manifests: "
        "the pointer is rebuilt from them, never taken for a fresh run",
    )


class Verdict(_Frozen):
    health: Health
    reason: str
    step: int | None = None
    progress: ProgressMark | None = None
    heartbeat_seen: HeartbeatMark | None = None
    doubts: int = 0
    # False when the ledger could not be trusted (unreadable, lost, behind the other signals):
    # it is then never overwritten, only rebuilt by `respawn ledger repair`.
    ledger_trusted: bool = True
    degenerate_since: int | None = Field(None, description="first W&B step of the bad streak")
    wandb_step: int | None = None
    fatal: bool = Field(False, description="dead, and a new instance would fail the same way")
    early_exit_step: int | None = Field(
        None, description="the trainer exited cleanly below target_step, at this published step"
    )


# -- plan ----------------------------------------------------------------------------------


class Provision(_Frozen):
    kind: Literal["provision"] = "provision"
    generation: int
    resume_step: int | None
    reason: str
    wandb_run_id: str | None = None


class Rollback(_Frozen):
    kind: Literal["rollback"] = "rollback"
    to_step: int
    generation: int = Field(description="the generation the rolled-back pointer belongs to")
    reason: str


class Notify(_Frozen):
    kind: Literal["notify"] = "notify"
    level: Literal["error", "warning", "notice"]
    message: str


class Terminate(_Frozen):
    kind: Literal["terminate"] = "terminate"
    provider: str
    instance_id: str
    name: str
    reason: str


class RestartInPlace(_Frozen):
    kind: Literal["restart"] = "restart"
    provider: str
    instance_id: str
    reason: str
    host_keys: tuple[str, ...] = Field((), description="the only SSH host keys trusted")


class Alert(_Frozen):
    kind: Literal["alert"] = "alert"
    message: str


class RepairPointer(_Frozen):
    """Rebuild a lost or unreadable latest.json from the newest step whose manifest
    verifies against the store's listing (`CheckpointStore.rebuild_pointer`)."""

    kind: Literal["repair-pointer"] = "repair-pointer"
    generation: int = Field(description="the generation the rebuilt pointer is written as")
    reason: str


class Halt(_Frozen):
    kind: Literal["halt"] = "halt"
    reason: str


Action = Annotated[
    Provision | Terminate | RestartInPlace | Rollback | RepairPointer | Alert | Halt | Notify,
    Field(discriminator="kind"),
]


class Plan(_Frozen):
    verdict: Verdict
    actions: tuple[Action, ...] = ()
    ledger: Ledger
    notify: Notify | None = Field(None, description="sent after the actions, once per change")

    @property
    def destructive(self) -> bool:
        return any(isinstance(a, Terminate | Provision) for a in self.actions)


class ActionResult(_Frozen):
    action: Action
    ok: bool
    detail: str = ""


class RunReport(_Frozen):
    """What one tick saw, decided and did for one run."""

    run: str
    observation: Observation
    plan: Plan
    results: tuple[ActionResult, ...] = ()
    dry_run: bool = False
    skipped: str | None = Field(None, description="why this tick did not act (another holds it)")
    # When the controller ticked for this run before this tick (None: never, or unreadable).
    previous_tick: datetime | None = None
    now: datetime | None = None
    notified: ActionResult | None = Field(None, description="the plan's notification, if sent")

    @property
    def failed(self) -> bool:
        return any(not r.ok for r in self.results) or (
            self.notified is not None and not self.notified.ok
        )


def describe(action: Action) -> str:
    match action:
        case Provision():
            if action.resume_step is None:
                return f"provision g{action.generation} (fresh start, no checkpoint yet)"
            return f"provision g{action.generation} (resume step {action.resume_step})"
        case Terminate():
            return f"terminate {action.provider}:{action.instance_id} ({action.name})"
        case RestartInPlace():
            return f"restart trainer on {action.provider}:{action.instance_id}"
        case Alert():
            return f"alert: {action.message}"
        case Halt():
            return f"halt: {action.reason}"
        case Rollback():
            return f"roll the pointer back to step {action.to_step}"
        case Notify():
            return f"notify ({action.level}): {action.message}"
        case RepairPointer():
            return f"rebuild latest.json from the newest verified manifest ({action.reason})"
    raise AssertionError(action)


def repair_line(kind: str, step: int | None, generation: int, writer: str, detail: str) -> str:
    """One store repair in words (pod-written: the caller redacts and cleans it)."""
    what = f"step {step} quarantined" if kind == "quarantined" else kind
    if kind != "quarantined" and step is not None:
        what += f" at step {step}"
    return f"{what} by g{generation} ({writer})" + (f": {detail}" if detail else "")
