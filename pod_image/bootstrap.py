"""Pod bootstrap: the first thing an instance runs (`python -m pod_image.bootstrap`).

read latest.json → pull + verify that checkpoint only (falling back to an older step that
verifies) → export WANDB_RUN_ID / WANDB_RESUME=allow → run the trainer with {resume_step}
under the supervisor.

Everything arrives in the environment the provider passed at launch:
RESPAWN_STORE, RESPAWN_RUN, RESPAWN_GENERATION, RESPAWN_POD (the pod spec as JSON), and
optionally RESPAWN_WRITER, RESPAWN_WANDB_RUN_ID, plus the secrets the config names.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from ckptstore.store import CheckpointStore, FencedError, NothingVerifiesError, StoreError
from controller.config import PodSpec
from pod_image.supervisor import PodContext, Supervisor

log = logging.getLogger("respawn.pod")
REQUIRED = ("RESPAWN_STORE", "RESPAWN_RUN", "RESPAWN_GENERATION", "RESPAWN_POD")


class BootstrapError(Exception):
    pass


def context_from_env(env: dict[str, str]) -> PodContext:
    missing = [k for k in REQUIRED if not env.get(k)]
    if missing:
        raise BootstrapError(f"missing environment: {', '.join(missing)} (set by the provider)")
    try:
        pod = PodSpec.model_validate_json(env["RESPAWN_POD"])
    except ValidationError as e:
        raise BootstrapError(f"RESPAWN_POD is not a valid pod spec: {e}") from e
    try:
        generation = int(env["RESPAWN_GENERATION"])
    except ValueError as e:
        raise BootstrapError("RESPAWN_GENERATION must be an integer") from e
    run = env["RESPAWN_RUN"]
    store = CheckpointStore.open(env["RESPAWN_STORE"], run)
    writer = env.get("RESPAWN_WRITER") or env.get("RESPAWN_INSTANCE_ID") or f"pod:{os.getpid()}"
    workdir = Path(pod.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return PodContext(
        store=store,
        run=run,
        generation=generation,
        writer=writer,
        workdir=workdir,
        pod=pod,
        wandb_run_id=env.get("RESPAWN_WANDB_RUN_ID") or None,
    )


def restore(ctx: PodContext) -> tuple[int | None, str | None]:
    """Pull the newest verified checkpoint into the workdir; return (step, W&B run id)."""
    pointer = ctx.store.read_pointer()
    step = pointer.step if pointer else None
    ctx.store.write_heartbeat(ctx.heartbeat("restoring", restoring_step=step, step=step))
    if pointer is None:
        log.info("no checkpoint yet: starting fresh")
        return None, ctx.wandb_run_id
    result = ctx.store.pull(ctx.workdir, progress_stream=sys.stdout)
    assert result is not None
    for step, why in result.rejected:
        log.warning("step %d rejected: %s", step, why)
    log.info(
        "restored step %d (%d files, %d B)",
        result.step,
        len(result.manifest.files),
        result.manifest.total_bytes,
    )
    return result.step, ctx.wandb_run_id or pointer.wandb_run_id


def _report_failure(ctx: PodContext, message: str) -> None:
    """A `failed` heartbeat: the controller replaces the instance instead of waiting."""
    try:
        ctx.store.write_heartbeat(ctx.heartbeat("failed", message=message[:500]))
    except StoreError as e:
        log.warning("could not report the failure: %s", e)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s respawn-pod %(levelname)s %(message)s",
        stream=sys.stdout,
    )
    for noisy in ("b2sdk", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    env = dict(os.environ)
    try:
        ctx = context_from_env(env)
        ctx.store.check_fence(ctx.generation)
        resume_step, wandb_id = restore(ctx)
    except FencedError as e:
        log.warning("%s: not starting", e)
        return 0
    except NothingVerifiesError as e:
        log.error("%s", e)
        _report_failure(ctx, str(e))
        return 2
    except (BootstrapError, StoreError) as e:
        log.error("%s", e)
        return 2
    trainer_env = {**env, "WANDB_RESUME": "allow"}
    wandb_id = wandb_id or ctx.run
    trainer_env["WANDB_RUN_ID"] = wandb_id
    ctx = PodContext(**{**ctx.__dict__, "wandb_run_id": wandb_id})
    return Supervisor(ctx, resume_step, trainer_env).run()


if __name__ == "__main__":
    sys.exit(main())
