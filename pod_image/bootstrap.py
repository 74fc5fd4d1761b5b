"""Pod bootstrap: the first thing an instance runs (`respawn-pod`, or `python -m respawn.pod`).

read latest.json → pull + verify that checkpoint only (falling back to an older step that
verifies) → export WANDB_RUN_ID / WANDB_RESUME=allow → run the trainer with {resume_step}
under the supervisor.

Everything arrives in the environment the provider passed at launch: the `PodEnv` of
`respawn.contract.pod` (store URL, run, generation, the pod spec's sha256), plus the secrets
the config names.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from respawn.contract.pod import (
    ENV_INSTANCE_ID,
    ENV_STORE_KEY,
    ENV_STORE_KEY_ID,
    PodEnv,
    PodEnvError,
    PodSpec,
)
from respawn.pod.context import PodContext
from respawn.pod.hostkeys import host_key_fingerprints
from respawn.pod.supervisor import Supervisor
from respawn.store.backend import CorruptError
from respawn.store.schema import Heartbeat, utcnow
from respawn.store.store import CheckpointStore, FencedError, NothingVerifiesError, StoreError

log = logging.getLogger("respawn.pod")


class BootstrapError(Exception):
    pass


class SpecRefusedError(BootstrapError):
    """The generation's pod spec cannot be honoured by this pod (an image older than the
    controller, a spec changed by someone else): every instance of it would refuse it too."""

    def __init__(self, message: str, store: CheckpointStore, pod_env: PodEnv) -> None:
        super().__init__(message)
        self.store, self.pod_env = store, pod_env

    def report(self) -> None:
        """A `failed` heartbeat that will repeat: the controller halts the run with the reason
        instead of paying for instances that all refuse the same spec."""
        try:
            hb = Heartbeat(
                run=self.pod_env.run,
                generation=self.pod_env.generation,
                writer=self.pod_env.writer,
                at=utcnow(),
                phase="failed",
                message=str(self)[:500],
                will_repeat=True,
            )
            self.store.write_heartbeat(hb)
        except (StoreError, ValueError) as e:
            log.warning("could not report the failure: %s", e)


#: What the pod side needs and the trainer must not see: the store key (it can rewrite every
#: checkpoint of the run) and the instance's own cloud API keys (RunPod and Vast inject one).
POD_ONLY_ENV = frozenset(
    {ENV_STORE_KEY_ID, ENV_STORE_KEY, "RUNPOD_API_KEY", "CONTAINER_API_KEY", "VAST_API_KEY"}
)


def trainer_environment(env: Mapping[str, str], pod: PodSpec, wandb_id: str) -> dict[str, str]:
    """The image's environment, `pod.env`, the configured secrets and the W&B variables —
    without the pod-only credentials (unless the config passes one on purpose)."""
    wanted = set(pod.env) | set(pod.secret_env)
    out = {k: v for k, v in env.items() if k in wanted or k not in POD_ONLY_ENV}
    out.update(WANDB_RESUME="allow", WANDB_RUN_ID=wandb_id)
    return out


def context_from_env(env: Mapping[str, str]) -> PodContext:
    try:
        pod_env = PodEnv.from_env(env)
    except PodEnvError as e:
        raise BootstrapError(str(e)) from None
    # The pod's key may lack delete: retention is the controller's (docs/keys.md).
    store = CheckpointStore.open(pod_env.store, pod_env.run, require_delete=False)
    stored = None if pod_env.pod_inline else store.read_pod_spec(pod_env.generation)
    try:
        pod = pod_env.pod_spec(stored)
    except PodEnvError as e:
        raise SpecRefusedError(str(e), store, pod_env) from None
    writer = pod_env.writer
    if writer == "pod":
        writer = env.get(ENV_INSTANCE_ID) or f"pod:{os.getpid()}"
    workdir = Path(pod.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return PodContext(
        store=store,
        run=pod_env.run,
        generation=pod_env.generation,
        writer=writer,
        workdir=workdir,
        pod=pod,
        wandb_run_id=pod_env.wandb_run_id,
        ssh_host_keys=host_key_fingerprints(),
    )


def restore(ctx: PodContext) -> tuple[int | None, str | None]:
    """Pull the newest verified checkpoint into the workdir; return (step, W&B run id)."""
    policy = ctx.pod.checkpoints
    ctx.store.read_deadline_s = policy.restore_deadline.total_seconds()
    try:
        pointer = ctx.store.patiently(ctx.store.read_pointer)
    except CorruptError as e:
        # Rebuilt by the pull below from the newest step that verifies.
        log.warning("%s: rebuilding it", e)
        pointer = None
        unreadable = True
    else:
        unreadable = False
    step = pointer.step if pointer else None
    if pointer is None and not unreadable:
        # A lost pointer is not a fresh run: the pull below restores the newest step that
        # verifies and rebuilds the pointer, unless the config asks for a fresh start.
        manifests = (
            [] if policy.fresh_without_pointer else ctx.store.patiently(ctx.store.manifested_steps)
        )
        if not manifests:
            ctx.store.write_heartbeat(ctx.heartbeat("restoring"))
            log.info("no checkpoint yet: starting fresh")
            return None, ctx.wandb_run_id
        log.warning(
            "latest.json is missing but steps %s have manifests: rebuilding it", manifests[-3:]
        )
        step = manifests[-1]
    ctx.store.write_heartbeat(ctx.heartbeat("restoring", restoring_step=step, step=step))
    # Only files under this pod's checkpoint sources are restored (a bucket writer must not
    # replace train.py in the workdir), and this generation heals what it finds: a corrupt
    # step is quarantined and the pointer moved to what was restored.
    result = ctx.store.pull(
        ctx.workdir,
        progress_stream=sys.stdout,
        sources=policy.sources,
        repair_as=(ctx.generation, ctx.writer),
        fresh_without_pointer=policy.fresh_without_pointer,
    )
    if result is None:  # the manifests went (retention) between the listing and the pull
        log.info("no checkpoint yet: starting fresh")
        return None, ctx.wandb_run_id
    for step, why in result.rejected:
        log.warning("step %d rejected: %s", step, why)
    for path, other in result.healed:
        log.warning("%s was corrupt; restored from the intact copy %s", path, other)
    log.info(
        "restored step %d (%d files, %d B)",
        result.step,
        len(result.manifest.files),
        result.manifest.total_bytes,
    )
    # Never the pointer's W&B id: anyone holding the store key could point this run's metrics
    # (and the W&B key that logs them) at another run.
    return result.step, ctx.wandb_run_id


def restore_twice(ctx: PodContext) -> tuple[int | None, str | None]:
    """`restore`, tried again once after a pause when nothing verified: a failure reported as
    one that will repeat halts the run, so a store outage that outlasted the backend's own
    retries must not pass for corrupt checkpoints."""
    try:
        return restore(ctx)
    except NothingVerifiesError as e:
        pause = min(60.0, 10 * ctx.pod.sync_interval.total_seconds())
        log.warning("%s; trying once more in %.0fs", e, pause)
        time.sleep(pause)
        return restore(ctx)


def _report_failure(ctx: PodContext, message: str, will_repeat: bool = False) -> None:
    """A `failed` heartbeat: the controller replaces the instance instead of waiting, or halts
    the run at once when another instance would fail the same way (`will_repeat`)."""
    try:
        hb = ctx.heartbeat("failed", message=message[:500], will_repeat=will_repeat)
        ctx.store.write_heartbeat(hb)
    except StoreError as e:
        log.warning("could not report the failure: %s", e)


def _parse_args(argv: list[str]) -> None:
    """`respawn-pod --help`: it takes no arguments; everything arrives in the environment."""
    import argparse

    from respawn.contract.pod import ENV_GENERATION, ENV_POD, ENV_POD_SHA256, ENV_RUN, ENV_STORE

    argparse.ArgumentParser(
        prog="respawn-pod",
        description=(
            "respawn's pod side: the first thing an instance runs. Restores the newest "
            "verified checkpoint from the store, then runs the trainer under the supervisor "
            "(heartbeats, publishing complete steps, SIGTERM handling). It takes no arguments: "
            "the provider sets its environment at launch."
        ),
        epilog=(
            f"environment: {ENV_STORE} (store URL), {ENV_RUN}, {ENV_GENERATION}, and "
            f"{ENV_POD_SHA256} (the pod spec in the store) or {ENV_POD} (the spec inline); "
            f"{ENV_STORE_KEY_ID} / {ENV_STORE_KEY} for a b2:// store; plus the secrets "
            "the fleet config names. Started by the pod image's onstart.sh (docs/pod-image.md)."
        ),
    ).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    _parse_args(argv or [])
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s respawn-pod %(levelname)s %(message)s",
        stream=sys.stdout,
    )
    for noisy in ("b2sdk", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    env = dict(os.environ)
    ctx: PodContext | None = None
    try:
        ctx = context_from_env(env)
        ctx.store.check_fence(ctx.generation)
        resume_step, wandb_id = restore_twice(ctx)
    except FencedError as e:
        log.warning("%s: not starting", e)
        return 0
    except NothingVerifiesError as e:
        log.error("%s", e)
        if ctx is not None:
            _report_failure(ctx, str(e), will_repeat=True)  # the same store, the same result
        return 2
    except StoreError as e:
        # An outage or a store refusing the key: another instance, or this one later, may
        # well succeed, so the failure is reported as not one that will repeat.
        log.error("%s", e)
        if ctx is not None:
            _report_failure(ctx, str(e))
        return 2
    except SpecRefusedError as e:
        log.error("%s", e)
        e.report()
        return 2
    except BootstrapError as e:
        log.error("%s", e)
        return 2
    wandb_id = wandb_id or ctx.run
    trainer_env = trainer_environment(env, ctx.pod, wandb_id)
    ctx = PodContext(**{**ctx.__dict__, "wandb_run_id": wandb_id})
    return Supervisor(ctx, resume_step, trainer_env).run()


def entrypoint() -> None:
    """`respawn-pod`: exit as soon as the supervisor is done. An upload still running past
    term_grace must not hold the process (the interpreter would join its threads) until the
    provider's SIGKILL."""
    rc = main(sys.argv[1:])
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    entrypoint()
