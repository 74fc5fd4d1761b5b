"""The fleet config: one YAML file listing the store and the runs (DESIGN.md "Fleet config").

Every model is frozen and forbids unknown fields, so a typo is an error, not a silently ignored
setting. Errors name the file, the line, the field path and what was expected. Secrets never
live in the file: it names environment variables that the workflow fills from GitHub secrets.
"""

from __future__ import annotations

import re
import string
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ckptstore.durations import Duration
from ckptstore.sources import CheckpointSource
from ckptstore.store import CheckpointStore
from provisioning.base import Resources

ProviderName = Literal["local", "vast", "runpod"]
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_RUN_NAME = r"^[a-z0-9][a-z0-9-]{0,47}$"
COMMAND_FIELDS = {"resume_step", "run", "generation", "python", "workdir"}


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConfigError(Exception):
    """Bad fleet config: the message names the file, the field and the fix."""


class StoreSettings(_Strict):
    url: str = Field(description="file:///ABS/PATH or b2://BUCKET/PREFIX")
    key_id_env: str = Field("B2_APPLICATION_KEY_ID", pattern=_ENV_NAME)
    key_env: str = Field("B2_APPLICATION_KEY", pattern=_ENV_NAME)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if v.startswith("file:///"):
            return v.rstrip("/") or v
        if re.match(r"^b2://[A-Za-z0-9-]{6,63}(/.*)?$", v):
            return v.rstrip("/")
        raise ValueError("expected file:///ABSOLUTE/PATH or b2://BUCKET/PREFIX")

    @property
    def credential_envs(self) -> tuple[str, str]:
        return (self.key_id_env, self.key_env)

    def open(self, run: str) -> CheckpointStore:
        return CheckpointStore.open(self.url, run, credential_envs=self.credential_envs)


class HealthPolicy(_Strict):
    startup_grace: Duration = Field(
        timedelta(minutes=20), description="time a new instance gets to show progress"
    )
    stall_after: Duration = Field(
        timedelta(minutes=30), description="no step progress for this long means stalled"
    )
    dead_after: Duration = Field(
        timedelta(minutes=15), description="no heartbeat for this long means dead"
    )


class CheckpointPolicy(_Strict):
    sources: tuple[CheckpointSource, ...] = Field(min_length=1)
    keep_last: int = Field(3, ge=2, description="steps kept in the store (>= 2: pointer+fallback)")
    keep_local: int = Field(1, ge=1, description="published steps kept on the pod's disk")
    keep_every: int | None = Field(
        None, ge=1, description="also keep milestone steps divisible by this, forever"
    )


class PodSpec(_Strict):
    image: str | None = Field(None, description="container image (cloud providers)")
    workdir: str = Field(".", description="directory the trainer runs in; sources are under it")
    command: str = Field(description="training command; {resume_step} is the step to resume")
    fresh_command: str | None = Field(
        None, description="command when there is no checkpoint yet (default: command, step 0)"
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

    @field_validator("command", "fresh_command")
    @classmethod
    def _template(cls, v: str | None, info: Any) -> str | None:
        if v is None:
            return v
        names = {name for _, name, _, _ in string.Formatter().parse(v) if name is not None}
        unknown = names - COMMAND_FIELDS
        if unknown:
            raise ValueError(
                f"unknown placeholder {{{sorted(unknown)[0]}}}; "
                f"allowed: {', '.join('{' + n + '}' for n in sorted(COMMAND_FIELDS))}"
            )
        if info.field_name == "command" and "resume_step" not in names:
            raise ValueError("must contain {resume_step}, the step the trainer resumes from")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not re.match(_ENV_NAME, k):
                raise ValueError(f"{k!r} is not a valid environment variable name")
        return v

    @field_validator("secret_env")
    @classmethod
    def _secret_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for k in v:
            if not re.match(_ENV_NAME, k):
                raise ValueError(f"{k!r} is not a valid environment variable name")
        return v


class Budget(_Strict):
    max_launches_per_day: int = Field(6, ge=1, description="crash-loop breaker")
    max_spend_per_day: float = Field(gt=0, description="estimated $ per rolling 24 h")


class WandbRef(_Strict):
    entity: str
    project: str
    run_id: str | None = Field(None, description="fixed W&B run id (else taken from latest.json)")
    api_key_env: str = Field("WANDB_API_KEY", pattern=_ENV_NAME)


class RunConfig(_Strict):
    name: str = Field(pattern=_RUN_NAME, description="lowercase letters, digits and '-'")
    target_step: int | None = Field(None, ge=1, description="the run is finished at this step")
    wandb: WandbRef | None = None
    health: HealthPolicy = HealthPolicy()
    pod: PodSpec
    resources: Resources
    providers: tuple[ProviderName, ...] = Field(min_length=1, description="failover order")
    budget: Budget

    @field_validator("providers")
    @classmethod
    def _unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError("each provider may appear once")
        return v


class LocalProviderSettings(_Strict):
    state_dir: str = Field(description="where the local provider keeps its instance records")


class VastSettings(_Strict):
    api_key_env: str = Field("VAST_API_KEY", pattern=_ENV_NAME)
    bid_margin: float = Field(0.1, ge=0, le=5, description="bid this much over the minimum")
    server_url: str | None = Field(None, description="API base URL (default: Vast's)")


class RunPodSettings(_Strict):
    api_key_env: str = Field("RUNPOD_API_KEY", pattern=_ENV_NAME)
    bid_margin: float = Field(0.1, ge=0, le=5, description="bid this much over the minimum")
    api_url: str = Field("https://api.runpod.io/graphql", description="GraphQL endpoint")
    cloud_type: Literal["ALL", "SECURE", "COMMUNITY"] = "ALL"


class ProviderSettings(_Strict):
    local: LocalProviderSettings | None = None
    vast: VastSettings = VastSettings()
    runpod: RunPodSettings = RunPodSettings()
    ssh_private_key_env: str | None = Field(
        None,
        pattern=_ENV_NAME,
        description="variable holding the SSH private key for restart-in-place and diagnosis",
    )


class FleetConfig(_Strict):
    store: StoreSettings
    providers: ProviderSettings = ProviderSettings()
    runs: tuple[RunConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _checks(self) -> FleetConfig:
        names = [r.name for r in self.runs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"run names must be unique; repeated: {', '.join(sorted(dup))}")
        for r in self.runs:
            clouds = [p for p in r.providers if p != "local"]
            if clouds and not r.pod.image:
                raise ValueError(
                    f"run {r.name!r} uses {', '.join(clouds)}: set pod.image (the image that "
                    "holds your trainer and respawn's pod side, see pod_image/Dockerfile)"
                )
            if "local" in r.providers and self.providers.local is None:
                raise ValueError(
                    f"run {r.name!r} uses provider 'local': set providers.local.state_dir"
                )
        return self

    def run(self, name: str) -> RunConfig:
        for r in self.runs:
            if r.name == name:
                return r
        raise ConfigError(f"no run named {name!r}; runs: {', '.join(r.name for r in self.runs)}")


# -- loading with errors people can act on -------------------------------------------------


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "tagged-union")):
            continue
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _describe(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field (check the spelling; `respawn schema` lists every field)"
    if err["type"] == "missing":
        return "required field is missing"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def parse_config(text: str, source: str = "<config>") -> FleetConfig:
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with 'store' and 'runs' at the top level")
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(err["loc"])
            line = _line_of(root, loc)
            where = f"{source}:{line}" if line else source
            lines.append(f"{where}: {_field_path(loc)}: {_describe(err)}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path) -> FleetConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file (pass the fleet config with -c FILE)") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    return parse_config(text, str(p))


def json_schema() -> dict[str, Any]:
    schema = FleetConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "respawn fleet config"
    return schema
