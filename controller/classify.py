"""classify: (run config, observation, now) → health and a one-line reason.

Pure: no I/O, no clock reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta

from respawn.controller.config import RunConfig
from respawn.controller.model import (
    Health,
    HeartbeatMark,
    Observation,
    ProgressMark,
    Verdict,
)
from respawn.controller.wandb_health import degenerate, wandb_note, wandb_step
from respawn.provisioning.base import Instance, InstanceState, winner_order
from respawn.store.schema import Heartbeat

# Ticks on which the listing says "gone" while the heartbeat still changes, before the
# listing is believed anyway (a pod that writes but no cloud lists: replaced, and fenced).
DOUBT_TICKS = 3
_ALIVENESS = {
    InstanceState.RUNNING: 3,
    InstanceState.PENDING: 2,
    InstanceState.STOPPED: 1,
    InstanceState.TERMINATED: 0,
}


def ago(delta: timedelta) -> str:
    s = max(0, int(delta.total_seconds()))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _step(step: int | None) -> str:
    return "-" if step is None else str(step)


def extended(run: RunConfig, obs: Observation) -> bool:
    """A finished run whose target_step was raised above both the target it finished under
    and its last checkpoint: the next tick launches it again."""
    target, ledger = run.target_step, obs.ledger
    if target is None or (obs.pointer is not None and obs.pointer.step >= target):
        return False
    return ledger.finished_target is None or target > ledger.finished_target


def observed_step(obs: Observation) -> int | None:
    """The newest step anything reports: the pointer, the current generation's heartbeat, W&B."""
    steps = [s for s in [wandb_step(obs)] if s is not None]
    if obs.pointer is not None:
        steps.append(obs.pointer.step)
    hb = obs.heartbeat
    if hb is not None and hb.generation == obs.ledger.generation:
        steps += [s for s in (hb.step, hb.published_step) if s is not None]
    return max(steps) if steps else None


def progress_mark(obs: Observation, now: datetime) -> ProgressMark | None:
    step, prev = observed_step(obs), obs.ledger.progress
    if step is None:
        return prev
    if prev is None or step > prev.step:
        return ProgressMark(step=step, at=now)
    return prev


def merge_rows(rows: Iterable[Instance]) -> tuple[Instance, ...]:
    """One row per instance. A listing that shows an instance twice with different states
    (paging under change, eventual consistency) is read as its most alive state: an instance
    is never destroyed as its own duplicate or as dead while any row says it runs."""
    merged: dict[tuple[str, str], Instance] = {}
    for row in rows:
        key = (row.provider, row.id)
        seen = merged.get(key)
        if seen is None or _ALIVENESS[row.state] > _ALIVENESS[seen.state]:
            merged[key] = row
    return tuple(merged.values())


def current_instances(obs: Observation) -> list[Instance]:
    """Live instances of the current generation, the one to keep first: the same rule
    (`winner_order`, earliest created) that settles a launch race."""
    gen = obs.ledger.generation
    live = [i for i in merge_rows(obs.instances) if i.generation == gen and i.live]
    return sorted(live, key=winner_order)


def fencing_generation(obs: Observation) -> tuple[int, str]:
    """The newest generation any signal has seen, and which signal: the ledger, the pointer,
    the heartbeat, the instances' names. A pod fences itself below this, so a new generation
    must be allocated above it."""
    sources = [(obs.ledger.generation, "the ledger")]
    # Pointer and heartbeat are written by pods: above a ledger this controller signed, their
    # generation is a forgery, not a sign that the ledger was lost.
    pointer_gen = obs.pointer.generation if obs.pointer is not None else obs.pointer_generation
    if obs.pointer_generation is not None:
        pointer_gen = max(pointer_gen or 0, obs.pointer_generation)
    if pointer_gen is not None and not obs.ledger_signed:
        sources.append((pointer_gen, "latest.json"))
    if obs.heartbeat is not None and not obs.ledger_signed:
        sources.append((obs.heartbeat.generation, "heartbeat.json"))
    # The fence is written by the controller right after its ledger, but plain (pods read
    # it): trusted like the pointer.
    if obs.fence_generation is not None and not obs.ledger_signed:
        sources.append((obs.fence_generation, "control/fence.json"))
    sources += [(i.generation, f"instance {i.name}") for i in obs.instances if i.billing]
    return max(sources, key=lambda s: s[0])


def unpublished_gap(run: RunConfig, obs: Observation, hb: Heartbeat) -> tuple[bool, str] | None:
    """Why a pod's `finished` does not finish the run: (steps exist only on its disk, why).
    Finished means the pointer names a verified step at or past both the trainer's newest
    step and target_step."""
    have = obs.pointer.step if obs.pointer is not None else None
    last = max((s for s in (hb.step, hb.published_step) if s is not None), default=None)
    if last is not None and (have is None or have < last):
        return True, f"its step {last} is not in the store (newest published: {_step(have)})"
    if run.target_step is not None and (have is None or have < run.target_step):
        return (
            False,
            f"the store's newest step {_step(have)} is below target_step {run.target_step}",
        )
    return None


def heartbeat_digest(hb: Heartbeat) -> str:
    return hashlib.sha256(hb.model_dump_json().encode()).hexdigest()[:16]


def heartbeat_mark(obs: Observation, now: datetime) -> HeartbeatMark | None:
    """When the controller first saw the current heartbeat's content: its age, judged by
    the controller's clock whatever the pod's clock says."""
    hb = obs.heartbeat
    if hb is None:
        return obs.ledger.heartbeat_seen
    prev, digest = obs.ledger.heartbeat_seen, heartbeat_digest(hb)
    if prev is not None and prev.digest == digest and prev.generation == hb.generation:
        return prev
    return HeartbeatMark(generation=hb.generation, digest=digest, at=now)


def breaker_halt(obs: Observation) -> str | None:
    """The ledger's halt by a breaker, unless a person resumed the run after it."""
    ledger, order = obs.ledger, obs.halt
    if ledger.halted is None:
        return None
    resumed = order is not None and not order.halted
    if resumed and (ledger.halted_at is None or order.at > ledger.halted_at):  # type: ignore[union-attr]
        return None
    return ledger.halted


def classify(run: RunConfig, obs: Observation, now: datetime) -> Verdict:
    step = observed_step(obs)
    progress = progress_mark(obs, now)
    seen = heartbeat_mark(obs, now)

    note = wandb_note(obs, now)

    def verdict(health: Health, reason: str, doubts: int = 0) -> Verdict:
        return Verdict(
            health=health,
            reason=reason + note,
            step=step,
            progress=progress,
            heartbeat_seen=seen,
            doubts=doubts,
        )

    if obs.errors:
        return Verdict(
            health=Health.UNKNOWN,
            reason="observation failed: " + "; ".join(obs.errors),
            step=step,
            progress=obs.ledger.progress,
            heartbeat_seen=obs.ledger.heartbeat_seen,
            doubts=obs.ledger.doubts,
            ledger_trusted=obs.ledger_state == "ok",
        )
    ledger = obs.ledger
    fence, source = fencing_generation(obs)
    if obs.halt is not None and obs.halt.halted:
        stopped = verdict(Health.STOPPED, f"stopped by hand: {obs.halt.reason}")
        return stopped.model_copy(update={"ledger_trusted": fence <= ledger.generation})
    if fence > ledger.generation:
        what = "there is no ledger" if obs.ledger_state == "missing" else "the ledger says"
        return Verdict(
            health=Health.UNKNOWN,
            reason=(
                f"{what} g{ledger.generation} but {source} is at g{fence}: the ledger was lost "
                f"or rolled back; nothing is changed until `respawn ledger repair --run {run.name}`"
            ),
            step=step,
            progress=ledger.progress,
            ledger_trusted=False,
        )
    halted = breaker_halt(obs)
    if halted:
        return verdict(Health.HALTED, halted)
    target = run.target_step
    extending = ledger.finished_at is not None and extended(run, obs)
    if ledger.finished_at is not None and not extending:
        return verdict(Health.FINISHED, f"finished at step {_step(step)}")
    if extending:
        return verdict(
            Health.DEAD,
            f"target_step raised to {target} (checkpoint at step {_step(step)}): "
            "extending the finished run",
        )
    gen = ledger.generation
    hb = obs.heartbeat if obs.heartbeat and obs.heartbeat.generation == gen else None
    if hb is not None and hb.phase == "finished":
        gap = unpublished_gap(run, obs, hb)
        if gap is None:
            return verdict(
                Health.FINISHED, f"g{gen} trainer exited cleanly at step {_step(hb.step)}"
            )
        if not gap[0]:
            # All published, below target_step. A trainer stopped by a signal (it saved and
            # exited 0) goes on from its checkpoint on a new instance; one whose own target
            # is below target_step stops at the same step again. So: relaunch once, and halt
            # when a generation stops cleanly where the last one did — unless a person
            # resumed the run after this was first seen (their call).
            have = obs.pointer.step if obs.pointer is not None else None
            again = ledger.early_exit_step is not None and ledger.early_exit_step == have
            order = obs.halt
            tried = order is not None and not order.halted and seen is not None
            fatal = again and not (tried and order.at > seen.at)  # type: ignore[union-attr]
            why = f"g{gen} trainer exited cleanly, but {gap[1]}"
            if fatal:
                why += (
                    ": it stopped at this step twice, a new instance would stop the same way; "
                    "raise the trainer's own target or lower target_step, then "
                    f"`respawn resume --run {run.name}`"
                )
            else:
                why += ": relaunching once (a trainer stopped by a signal goes on from there)"
            return verdict(Health.DEAD, why).model_copy(
                update={"fatal": fatal, "early_exit_step": have}
            )
        # Only the instance's disk holds those steps: it is kept while its pod may publish.
        waited = now - seen.at if seen is not None else timedelta(0)
        if current_instances(obs) and waited < run.health.finish_grace:
            return verdict(
                Health.HEALTHY,
                f"g{gen} trainer exited, but {gap[1]}: keeping its instance up to "
                f"{ago(run.health.finish_grace - waited)} more for its pod to publish",
            )
        why = "its instance is gone" if not current_instances(obs) else "finish_grace is over"
        if target is not None and obs.pointer is not None and obs.pointer.step >= target:
            # Past the target anyway: a new instance would only resume and exit again.
            return verdict(
                Health.FINISHED,
                f"checkpoint step {obs.pointer.step} reached target {target}; {gap[1]} ({why})",
            )
        return verdict(Health.DEAD, f"g{gen} trainer exited, but {gap[1]}; {why}")
    if target is not None and obs.pointer is not None and obs.pointer.step >= target:
        # The trainer may still be saving, evaluating or pushing after its last checkpoint:
        # it gets finish_grace to exit by itself before its instance is terminated.
        reached = progress.at if progress is not None and progress.step >= target else now
        left = run.health.finish_grace - (now - reached)
        if current_instances(obs) and left > timedelta(0):
            return verdict(
                Health.HEALTHY,
                f"checkpoint step {obs.pointer.step} reached target {target}; waiting up to "
                f"{ago(left)} for the trainer to exit",
            )
        return verdict(
            Health.FINISHED, f"checkpoint step {obs.pointer.step} reached target {target}"
        )
    if hb is not None and hb.phase == "failed":
        # Before "no live instance": a pod that failed says why, even once it is gone.
        why = f"g{gen} pod reported failure: {hb.message or 'no message'}"
        # A person who resumed the run after this failure was first seen has looked at it:
        # the next launch is theirs to try.
        order = obs.halt
        acknowledged = order is not None and not order.halted and seen is not None
        fatal = hb.will_repeat and not (acknowledged and order.at > seen.at)  # type: ignore[union-attr]
        if fatal:
            why += " (a new instance would fail the same way)"
        return verdict(Health.DEAD, why).model_copy(update={"fatal": fatal})
    if gen == 0:
        return verdict(Health.NEW, "never launched")
    bad = degenerate(run.health.degenerate, obs)
    if bad is not None:
        reason, since, at = bad
        return verdict(Health.DEGENERATE, reason).model_copy(
            update={"degenerate_since": since, "wandb_step": at}
        )
    current = current_instances(obs)
    if not current:
        mine = [i for i in obs.instances if i.generation == gen]
        state = f" (it is {mine[0].state.value})" if mine else ""
        gone = f"no live instance of generation {gen}{state}"
        launch = ledger.launch_of(gen)
        # A person's order given since the launch (`terminate` destroyed it) is no lag.
        ordered = obs.halt is not None and launch is not None and obs.halt.at >= launch.at
        # Only before any listing showed it: once listed, its absence is news, not lag.
        if (
            launch is not None
            and launch.listed_at is None
            and launch.error is None
            and not mine
            and not ordered
        ):
            # Listings lag behind a create (eventual consistency): an instance that was just
            # launched and is not listed at all is not yet missing.
            young, grace = now - launch.at, run.health.listing_grace
            if young < grace:
                return verdict(
                    Health.STARTING,
                    f"g{gen} launched {ago(young)} ago and not listed yet: waiting up to "
                    f"{ago(grace)} for the listing (health.listing_grace)",
                )
        beating = (
            hb is not None
            and seen is not None
            and hb.phase in ("restoring", "training", "publishing")
            and now - seen.at < 2 * run.pod.heartbeat_interval
        )
        if beating:
            # Two signals before a launch: the listing says gone, the heartbeat still moves.
            doubts = ledger.doubts + 1
            if doubts < DOUBT_TICKS:
                return verdict(
                    Health.UNKNOWN,
                    f"{gone}, but its heartbeat still changes: waiting for the two to agree "
                    f"(tick {doubts} of {DOUBT_TICKS}; ends by itself)",
                    doubts=doubts,
                )
            gone += f" for {doubts} ticks, though its heartbeat still changes"
        return verdict(Health.DEAD, gone)

    launch = ledger.launch_of(gen)
    launched_at = launch.at if launch else current[0].created_at or now
    # A trainer restarted in place starts over: it gets the startup grace again from then.
    restart = next((r for r in reversed(ledger.restarts) if r.generation == gen), None)
    if restart is not None and restart.at > launched_at:
        launched_at = restart.at
    since_launch = now - launched_at
    policy = run.health

    if hb is None:
        if since_launch < policy.startup_grace:
            return verdict(
                Health.STARTING, f"g{gen} launched {ago(since_launch)} ago, no heartbeat yet"
            )
        return verdict(
            Health.DEAD, f"g{gen} sent no heartbeat within the startup grace ({ago(since_launch)})"
        )
    silent = now - seen.at if seen is not None else timedelta(0)
    if silent > policy.dead_after:
        return verdict(
            Health.DEAD, f"no heartbeat from g{gen} for {ago(silent)} (unchanged since then)"
        )

    if hb.phase == "publishing":
        # The trainer is done; the pod retries its last steps and gives up by itself after
        # finish_grace (then `failed`): its instance, whose disk holds them, is kept.
        return verdict(Health.HEALTHY, f"g{gen} {hb.message or 'publishing its last steps'}")
    # What the pod says while training: a checkpoint layout that never completes (nothing
    # published while W&B shows progress) is named here rather than found at the next loss.
    said = f"; pod: {hb.message}" if hb.phase == "training" and hb.message else ""
    if progress is None or progress.at <= launched_at:
        if since_launch < policy.startup_grace:
            what = (
                f"restoring step {_step(hb.restoring_step)}"
                if hb.phase == "restoring"
                else hb.phase
            )
            return verdict(Health.STARTING, f"g{gen} up {ago(since_launch)}, {what}")
        return verdict(
            Health.STALLED,
            f"no step progress since g{gen} launched {ago(since_launch)} ago{said}",
        )
    idle = now - progress.at
    if idle > policy.stall_after:
        return verdict(Health.STALLED, f"step {progress.step} unchanged for {ago(idle)}{said}")
    return verdict(Health.HEALTHY, f"step {progress.step}, progressed {ago(idle)} ago{said}")
