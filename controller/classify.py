"""classify: (run config, observation, now) → health and a one-line reason.

Pure: no I/O, no clock reads.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from respawn.controller.config import RunConfig
from respawn.controller.model import Health, Observation, ProgressMark, Verdict
from respawn.provisioning.base import Instance


def ago(delta: timedelta) -> str:
    s = max(0, int(delta.total_seconds()))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def observed_step(obs: Observation) -> int | None:
    """The newest step anything reports: the pointer, or the current generation's heartbeat."""
    steps = []
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


def current_instances(obs: Observation) -> list[Instance]:
    """Live instances of the newest generation, newest first."""
    gen = obs.ledger.generation
    live = [i for i in obs.instances if i.generation == gen and i.live]
    return sorted(live, key=lambda i: (i.created_at is not None, i.created_at), reverse=True)


def classify(run: RunConfig, obs: Observation, now: datetime) -> Verdict:
    step = observed_step(obs)
    progress = progress_mark(obs, now)

    def verdict(health: Health, reason: str) -> Verdict:
        return Verdict(health=health, reason=reason, step=step, progress=progress)

    if obs.errors:
        return Verdict(
            health=Health.UNKNOWN,
            reason="observation failed: " + "; ".join(obs.errors),
            step=step,
            progress=obs.ledger.progress,
        )
    ledger = obs.ledger
    if ledger.halted:
        return verdict(Health.HALTED, ledger.halted)
    if ledger.finished_at is not None:
        return verdict(Health.FINISHED, f"finished at step {step}")
    target = run.target_step
    if target is not None and obs.pointer is not None and obs.pointer.step >= target:
        return verdict(
            Health.FINISHED, f"checkpoint step {obs.pointer.step} reached target {target}"
        )

    gen = ledger.generation
    hb = obs.heartbeat if obs.heartbeat and obs.heartbeat.generation == gen else None
    if hb is not None and hb.phase == "finished":
        return verdict(Health.FINISHED, f"g{gen} trainer exited cleanly at step {hb.step}")
    if gen == 0:
        return verdict(Health.DEAD, "never launched")
    current = current_instances(obs)
    if not current:
        mine = [i for i in obs.instances if i.generation == gen]
        state = f" (it is {mine[0].state.value})" if mine else ""
        return verdict(Health.DEAD, f"no live instance of generation {gen}{state}")

    launch = ledger.launch_of(gen)
    launched_at = launch.at if launch else current[0].created_at or now
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
    if hb.phase == "failed":
        return verdict(Health.DEAD, f"g{gen} pod reported failure: {hb.message or 'no message'}")
    silent = now - hb.at
    if silent > policy.dead_after:
        return verdict(Health.DEAD, f"no heartbeat from g{gen} for {ago(silent)}")

    if progress is None or progress.at <= launched_at:
        if since_launch < policy.startup_grace:
            what = f"restoring step {hb.restoring_step}" if hb.phase == "restoring" else hb.phase
            return verdict(Health.STARTING, f"g{gen} up {ago(since_launch)}, {what}")
        return verdict(
            Health.STALLED, f"no step progress since g{gen} launched {ago(since_launch)} ago"
        )
    idle = now - progress.at
    if idle > policy.stall_after:
        return verdict(Health.STALLED, f"step {progress.step} unchanged for {ago(idle)}")
    return verdict(Health.HEALTHY, f"step {progress.step}, progressed {ago(idle)} ago")
