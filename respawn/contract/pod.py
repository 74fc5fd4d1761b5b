"""The pod spec, the launch environment and the trainer command (`docs/contracts.md`).

The controller builds a `PodEnv` for every launch; the provider passes `to_env()` to the
instance; the pod's bootstrap reads it back with `from_env()`. Every variable stays short
(Vast documents 256 characters per value): the pod spec itself travels through the store
(`RUN/pods/gNNNNNN.json`, written by the controller before the launch) and the environment
carries only its sha256, so a bucket writer cannot swap it. Small tests and the local provider
may inline it (`RESPAWN_POD`).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import string
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from respawn.contract.durations import Duration
from respawn.contract.sources import CheckpointSource

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
COMMAND_FIELDS = frozenset({"resume_step", "run", "generation", "python", "workdir"})

#: The pod's entry point: a console script installed with respawn's pod side.
POD_ENTRYPOINT = "respawn-pod"
#: The same, for an interpreter without the console script on PATH.
POD_MODULE = "respawn.pod"
#: The supervisor writes its PID here; restart-in-place signals it with SIGUSR1.
SUPERVISOR_PIDFILE = "/run/respawn/supervisor.pid"

ENV_STORE = "RESPAWN_STORE"
ENV_RUN = "RESPAWN_RUN"
ENV_GENERATION = "RESPAWN_GENERATION"
ENV_WRITER = "RESPAWN_WRITER"
ENV_POD = "RESPAWN_POD"
ENV_POD_SHA256 = "RESPAWN_POD_SHA256"
ENV_WANDB_RUN_ID = "RESPAWN_WANDB_RUN_ID"
ENV_INSTANCE_ID = "RESPAWN_INSTANCE_ID"
ENV_PIDFILE = "RESPAWN_PIDFILE"
ENV_RESUME_STEP = "RESPAWN_RESUME_STEP"
#: Comma-separated names of the secret variables the controller passed (pod.secret_env, the
#: W&B key under whatever name the config gives it, the store key): the pod masks their values
#: in the trainer output it uploads (`respawn.pod.logtail`). Names only, never values.
ENV_SECRET_NAMES = "RESPAWN_SECRET_ENV"
#: The pod reads the store key under these names, whatever the controller's are called.
ENV_STORE_KEY_ID = "B2_APPLICATION_KEY_ID"
ENV_STORE_KEY = "B2_APPLICATION_KEY"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_env_names(names: object) -> None:
    for k in names:  # type: ignore[attr-defined]
        if not re.match(ENV_NAME, k):
            raise ValueError(f"{k!r} is not a valid environment variable name")


class CheckpointPolicy(_Strict):
    sources: tuple[CheckpointSource, ...] = Field(min_length=1)
    keep_last: int = Field(3, ge=2, description="steps kept in the store (>= 2: pointer+fallback)")
    keep_local: int = Field(1, ge=1, description="published steps kept on the pod's disk")
    keep_every: int | None = Field(
        None, ge=1, description="also keep milestone steps divisible by this, forever"
    )
    pod_retention_every: int = Field(
        10,
        ge=1,
        description="the controller applies retention every tick; a pod whose key may delete "
        "also applies it every this many publishes, in case ticks stop",
    )
    restore_deadline: Duration = Field(
        timedelta(minutes=5),
        description="how long a restoring pod keeps retrying store reads that fail without "
        "proving bad bytes (an outage) before it reports a failure another instance may not "
        "repeat; never counted as corruption",
    )
    fresh_without_pointer: bool = Field(
        False,
        description="start from step 0 when latest.json is missing although the run has "
        "manifests; by default the pod restores the newest step that verifies and rebuilds "
        "the pointer (a lost pointer must not restart training)",
    )


class DispatchSpec(_Strict):
    """The pod asks GitHub for a controller tick (`workflow_dispatch`) instead of waiting for
    the best-effort cron: on SIGTERM, when the trainer fails for good, when ticks are overdue."""

    repository: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", description="owner/name of the caller"
    )
    workflow: str = Field(description="the calling workflow's file name (respawn.yml) or id")
    ref: str = Field("main", description="branch the workflow runs on")
    token_env: str = Field(
        "RESPAWN_DISPATCH_TOKEN",
        pattern=ENV_NAME,
        description="fine-grained token (Actions: read and write); list it in pod.secret_env",
    )
    overdue_after: Duration | None = Field(
        timedelta(minutes=30), description="ask for a tick when the last one is older than this"
    )
    min_interval: Duration = Field(
        timedelta(minutes=5), description="at most one request per this long"
    )
    api_url: str = Field("https://api.github.com", description="GitHub REST API root")


class PodSpec(_Strict):
    image: str | None = Field(None, description="container image (cloud providers)")
    workdir: str = Field(".", description="directory the trainer runs in; sources are under it")
    resume: Literal["step", "latest"] = Field(
        "step",
        description="'step': command names the step to resume with {resume_step}; 'latest': "
        "the trainer finds its own newest checkpoint in the restored files (nanoGPT's "
        "--init_from resume, Lightning's ckpt_path='last', HF's resume_from_checkpoint=True), "
        "so {resume_step} is optional",
    )
    command: str = Field(description="training command; {resume_step} is the step to resume")
    fresh_command: str | None = Field(
        None, description="command when there is no checkpoint yet (default: command, step 0)"
    )
    python: str | None = Field(
        None,
        description="the interpreter {python} names; default: the image's own python3 on PATH "
        "(never respawn's isolated venv), else the pod side's interpreter",
    )
    env: dict[str, str] = Field(default_factory=dict, description="plain, non-secret variables")
    secret_env: tuple[str, ...] = Field(
        (), description="names of environment variables passed through to the pod"
    )
    checkpoints: CheckpointPolicy
    sync_interval: Duration = Field(timedelta(seconds=30))
    heartbeat_interval: Duration = Field(timedelta(seconds=60))
    max_trainer_restarts: int = Field(3, ge=0, description="in-place restarts of a crashed trainer")
    hang_after: Duration | None = Field(
        None,
        description="restart the trainer when no new step directory appears for this long "
        "(longer than the checkpoint interval); unset: no watchdog",
    )
    term_grace: Duration = Field(
        timedelta(seconds=25), description="how long the trainer gets to checkpoint on SIGTERM"
    )
    finish_grace: Duration = Field(
        timedelta(minutes=10),
        description="after the trainer exits 0, how long the pod retries publishing its last "
        "steps before it reports failure; set from the run's health.finish_grace",
    )
    watch_gpus: bool = Field(
        False,
        description="restart the trainer when a GPU's memory drops to ~0 while it runs "
        "(a sidecar such as an inference server died) or all GPUs sit idle (gpu_idle_after)",
    )
    gpu_idle_after: Duration | None = Field(
        None, description="with watch_gpus: all GPUs at 0% for this long restarts the trainer"
    )
    gpu_poll_interval: Duration = Field(
        timedelta(seconds=15), description="with watch_gpus: how often nvidia-smi is read"
    )
    dispatch: DispatchSpec | None = Field(
        None, description="ask GitHub for a tick on SIGTERM, failure or overdue ticks"
    )
    registry_auth_env: str | None = Field(
        None,
        pattern=ENV_NAME,
        description="variable holding `USER:TOKEN` for pulling a private pod.image "
        "(the controller's environment; never passed to the pod)",
    )

    @model_validator(mode="after")
    def _dispatch_token_reaches_the_pod(self) -> PodSpec:
        if self.dispatch is not None and self.dispatch.token_env not in self.secret_env:
            raise ValueError(
                f"dispatch.token_env {self.dispatch.token_env!r} must also be listed in "
                "secret_env, or the pod never receives the token"
            )
        if self.gpu_idle_after is not None and not self.watch_gpus:
            raise ValueError("gpu_idle_after needs watch_gpus: true")
        return self

    @field_validator("command", "fresh_command")
    @classmethod
    def _template(cls, v: str | None, info: object) -> str | None:
        if v is None:
            return v
        names = {name for _, name, _, _ in string.Formatter().parse(v) if name is not None}
        unknown = names - COMMAND_FIELDS
        if unknown:
            raise ValueError(
                f"unknown placeholder {{{sorted(unknown)[0]}}}; "
                f"allowed: {', '.join('{' + n + '}' for n in sorted(COMMAND_FIELDS))}"
            )
        # `resume` is declared before `command`, so it is validated first.
        resumes_by_step = getattr(info, "data", {}).get("resume", "step") == "step"
        is_command = getattr(info, "field_name", None) == "command"
        if is_command and resumes_by_step and "resume_step" not in names:
            raise ValueError(
                "must contain {resume_step}, the step the trainer resumes from; for a "
                "trainer that resumes from its own newest checkpoint (nanoGPT's --init_from "
                "resume, Lightning's ckpt_path='last'), set resume: latest"
            )
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        _check_env_names(v)
        return v

    @field_validator("secret_env")
    @classmethod
    def _secret_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        _check_env_names(v)
        return v

    def canonical_json(self) -> bytes:
        """The spec as the pod reads it: fields left at their defaults are omitted, so a pod
        image built from an older respawn accepts every spec that uses only what it knows."""
        return self.model_dump_json(exclude_defaults=True).encode()


def pod_sha256(doc: bytes) -> str:
    return hashlib.sha256(doc).hexdigest()


def render_command(
    pod: PodSpec, run: str, generation: int, workdir: Path, resume: int | None, python: str
) -> str:
    """The trainer's command line: `command` with {resume_step}, or `fresh_command` (if set)
    when there is no checkpoint to resume from."""
    template = pod.command if resume is not None or pod.fresh_command is None else pod.fresh_command
    return template.format(
        resume_step=resume if resume is not None else 0,
        run=run,
        generation=generation,
        # Split as a shell would: an interpreter path with a space stays one word.
        python=shlex.quote(python),
        workdir=str(workdir),
    )


class PodEnvError(ValueError):
    """The launch environment is incomplete or malformed."""


class PodEnv(BaseModel):
    """Where the pod finds its store, who it is, and how to check its pod spec."""

    model_config = ConfigDict(frozen=True)

    store: str
    run: str
    generation: int = Field(ge=1)
    writer: str
    pod_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    pod_inline: str | None = Field(None, description="the pod spec as JSON, for local launches")
    wandb_run_id: str | None = None

    def to_env(self) -> dict[str, str]:
        env = {
            ENV_STORE: self.store,
            ENV_RUN: self.run,
            ENV_GENERATION: str(self.generation),
            ENV_WRITER: self.writer,
        }
        if self.pod_sha256:
            env[ENV_POD_SHA256] = self.pod_sha256
        if self.pod_inline:
            env[ENV_POD] = self.pod_inline
        if self.wandb_run_id:
            env[ENV_WANDB_RUN_ID] = self.wandb_run_id
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PodEnv:
        missing = [k for k in (ENV_STORE, ENV_RUN, ENV_GENERATION) if not env.get(k)]
        if not env.get(ENV_POD) and not env.get(ENV_POD_SHA256):
            missing.append(f"{ENV_POD_SHA256} (or {ENV_POD})")
        if missing:
            raise PodEnvError(
                f"missing environment: {', '.join(missing)} (the provider sets these at launch)"
            )
        try:
            return cls(
                store=env[ENV_STORE],
                run=env[ENV_RUN],
                generation=int(env[ENV_GENERATION]),
                writer=env.get(ENV_WRITER) or env.get(ENV_INSTANCE_ID) or "pod",
                pod_sha256=env.get(ENV_POD_SHA256) or None,
                pod_inline=env.get(ENV_POD) or None,
                wandb_run_id=env.get(ENV_WANDB_RUN_ID) or None,
            )
        except (ValueError, ValidationError) as e:
            raise PodEnvError(f"malformed launch environment: {e}") from None

    def pod_spec(self, stored: bytes | None) -> PodSpec:
        """The pod spec: inline, or the stored document whose sha256 the environment names."""
        if self.pod_inline is not None:
            raw = self.pod_inline.encode()
        elif stored is None:
            raise PodEnvError(f"the pod spec of generation {self.generation} is not in the store")
        elif pod_sha256(stored) != self.pod_sha256:
            raise PodEnvError(
                f"the stored pod spec of generation {self.generation} does not match "
                f"{ENV_POD_SHA256}: refusing it (was it changed by someone else?)"
            )
        else:
            raw = stored
        try:
            return PodSpec.model_validate_json(raw)
        except ValidationError as e:
            unknown = [
                ".".join(str(p) for p in err["loc"])
                for err in e.errors()
                if err["type"] == "extra_forbidden"
            ]
            if unknown:
                raise PodEnvError(
                    f"the pod spec sets {', '.join(unknown)}, which this pod's respawn does not "
                    "know: the pod image is older than the controller; rebuild it from the "
                    "controller's commit (docs/pod-image.md)"
                ) from None
            raise PodEnvError(f"the pod spec is not valid: {e}") from None
