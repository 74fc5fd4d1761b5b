"""The fleet config: one YAML file listing the store and the runs (`docs/contracts.md`).

Every model is frozen and forbids unknown fields, so a typo is an error, not a silently ignored
setting. Errors name the file, the line, the field path and what was expected. Secrets never
live in the file: it names environment variables that the workflow fills from GitHub secrets.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from respawn.contract.durations import PATTERN as DURATION_PATTERN
from respawn.contract.durations import Duration, format_duration
from respawn.contract.pod import ENV_NAME as _ENV_NAME
from respawn.contract.pod import PodSpec
from respawn.provisioning.base import Resources
from respawn.provisioning.registry import REGISTRY

if TYPE_CHECKING:
    ProviderName = str
else:  # the registered clouds, whatever they are: adding one touches no config code
    ProviderName = Literal[tuple(REGISTRY)]
_RUN_NAME = r"^[a-z0-9][a-z0-9-]{0,47}$"


class _Strict(BaseModel):
    # `.inf`/`.nan` are valid YAML floats: a price cap of infinity is no cap.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_api_url(v: str) -> str:
    """API keys travel to this URL: plain http only to this machine (a test double)."""
    parts = urlsplit(v)
    if not parts.hostname:
        raise ValueError(f"{v!r} is not a URL (expected https://HOST/...)")
    if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname)):
        return v
    raise ValueError(
        f"{v!r}: API keys are sent to this URL, so it must be https (plain http is allowed "
        "only for loopback addresses)"
    )


ApiUrl = Annotated[str, AfterValidator(check_api_url)]


class ConfigError(Exception):
    """Bad fleet config: the message names the file, the field and the fix."""


class StoreSettings(_Strict):
    url: str = Field(description="file:///ABS/PATH or b2://BUCKET/PREFIX")
    key_id_env: str = Field("B2_APPLICATION_KEY_ID", pattern=_ENV_NAME)
    key_env: str = Field("B2_APPLICATION_KEY", pattern=_ENV_NAME)
    pod_key_id_env: str | None = Field(
        None,
        pattern=_ENV_NAME,
        description="id of the narrower key pods get (docs/keys.md); unset: pods get key_env's",
    )
    pod_key_env: str | None = Field(None, pattern=_ENV_NAME, description="the pod key itself")
    ledger_secret_env: str | None = Field(
        None,
        pattern=_ENV_NAME,
        description="controller-only secret that signs the ledger (HMAC), so a pod key cannot "
        "forge or edit it (docs/keys.md)",
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if v.startswith("file:///"):
            if not v[len("file://") :].strip("/"):
                raise ValueError("file:/// is the filesystem root: name a directory")
            return v.rstrip("/")
        if re.match(r"^b2://[A-Za-z0-9-]{6,63}(/.*)?$", v):
            return v.rstrip("/")
        raise ValueError("expected file:///ABSOLUTE/PATH or b2://BUCKET/PREFIX")

    @model_validator(mode="after")
    def _pod_key_pair(self) -> StoreSettings:
        if (self.pod_key_id_env is None) != (self.pod_key_env is None):
            raise ValueError("set both pod_key_id_env and pod_key_env, or neither")
        return self

    @property
    def credential_envs(self) -> tuple[str, str]:
        return (self.key_id_env, self.key_env)

    @property
    def pod_credential_envs(self) -> tuple[str, str]:
        if self.pod_key_id_env and self.pod_key_env:
            return (self.pod_key_id_env, self.pod_key_env)
        return self.credential_envs


_CONDITION = re.compile(
    r"^\s*(?:is\s+nan|(==|!=|<=|>=|<|>)\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?))\s*$", re.I
)


class DegenerateRule(_Strict):
    """The circuit breaker: a logged metric that, held for N steps, means training is garbage
    (prime-rl: the inference server died and reward is 0). Read from W&B."""

    metric: str = Field(min_length=1, description="W&B history key, e.g. 'reward/mean'")
    condition: str = Field(description="'== 0', '< 0.05', 'is nan', ...")
    steps: int = Field(20, ge=1, description="consecutive logged steps meeting the condition")
    max_rollbacks: int = Field(3, ge=1, description="more rollbacks than this in `window` halt")
    window: Duration = Field(timedelta(days=1), description="window of max_rollbacks")

    @field_validator("condition")
    @classmethod
    def _condition(cls, v: str) -> str:
        if not _CONDITION.match(v):
            raise ValueError(
                f"{v!r} is not a condition: write '== 0', '< FLOOR', '<= X', '> X', 'is nan'"
            )
        return " ".join(v.split()).lower()


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
    listing_grace: Duration = Field(
        timedelta(minutes=2),
        description="how long after its launch an instance the provider's listing does not "
        "show yet is taken for listing lag (starting), not for dead",
    )
    degenerate: DegenerateRule | None = None
    finish_grace: Duration = Field(
        timedelta(minutes=10),
        description="after the checkpoint reaches target_step, how long the trainer gets to "
        "finish (final save, eval, push) before its instance is terminated",
    )


class Budget(_Strict):
    max_launches_per_day: int = Field(6, ge=1, description="crash-loop breaker")
    max_spend_per_day: float = Field(gt=0, description="estimated $ per rolling 24 h")


class WandbRef(_Strict):
    entity: str
    project: str
    run_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="fixed W&B run id (else the run name)"
    )
    api_key_env: str = Field("WANDB_API_KEY", pattern=_ENV_NAME)
    also_watch: tuple[str, ...] = Field(
        (), description="other W&B run ids of this job (prime-rl: the orchestrator's)"
    )
    base_url: str | None = Field(None, description="self-hosted W&B server (default: wandb.ai)")


class NotifySettings(_Strict):
    webhook_url_env: str | None = Field(
        None, pattern=_ENV_NAME, description="variable holding a Slack/Discord webhook URL"
    )
    github_annotations: bool = Field(True, description="::error:: / ::warning:: in Actions")


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

    @model_validator(mode="after")
    def _pod_learns_finish_grace(self) -> RunConfig:
        """The pod retries its final publish for as long as the controller waits for it: one
        setting, `health.finish_grace`, travels to the pod in its spec."""
        grace = self.health.finish_grace
        if "finish_grace" in self.pod.model_fields_set and self.pod.finish_grace != grace:
            raise ValueError(
                f"pod.finish_grace ({format_duration(self.pod.finish_grace)}) differs from "
                f"health.finish_grace ({format_duration(grace)}): set health.finish_grace only"
            )
        if self.pod.finish_grace != grace:
            # Frozen model: the spec is completed here, once, before anything reads it.
            object.__setattr__(self, "pod", self.pod.model_copy(update={"finish_grace": grace}))
        return self

    @model_validator(mode="after")
    def _heartbeat_fits(self) -> RunConfig:
        if self.health.dead_after <= self.pod.heartbeat_interval:
            raise ValueError(
                f"health.dead_after ({format_duration(self.health.dead_after)}) must be longer "
                f"than pod.heartbeat_interval ({format_duration(self.pod.heartbeat_interval)}): "
                "otherwise a healthy pod is declared dead between two heartbeats"
            )
        return self


def _provider_settings_model() -> type[BaseModel]:
    """`providers:` has one block per registered cloud (`respawn.provisioning.registry`)."""
    fields: dict[str, Any] = {
        name: (entry.settings | None, None)
        if entry.needs_settings
        else (entry.settings, entry.settings())
        for name, entry in REGISTRY.items()
    }
    fields["ssh_private_key_env"] = (
        str | None,
        Field(
            None,
            pattern=_ENV_NAME,
            description="variable holding the SSH private key for restart-in-place and diagnosis",
        ),
    )
    return create_model("ProviderSettings", __base__=_Strict, **fields)


if TYPE_CHECKING:

    class ProviderSettings(BaseModel):
        """What a type checker sees of the model built from the registry at import time."""

        ssh_private_key_env: str | None = None

        def __getattr__(self, cloud: str) -> Any: ...  # one settings block per cloud

else:
    ProviderSettings = _provider_settings_model()


class FleetConfig(_Strict):
    fleet_id: str | None = Field(
        None,
        pattern=r"^[a-z0-9]{1,16}$",
        description="marks this fleet's instances in a shared cloud account (default: derived "
        "from store.url); instances with another fleet id are never touched",
    )
    store: StoreSettings
    providers: ProviderSettings = ProviderSettings()
    runs: tuple[RunConfig, ...] = Field(min_length=1)
    notify: NotifySettings = NotifySettings()

    @model_validator(mode="after")
    def _checks(self) -> FleetConfig:
        for cloud in type(self.providers).model_fields:
            block = getattr(self.providers, cloud)
            for field in ("server_url", "api_url"):
                url = getattr(block, field, None)
                if url is not None:
                    try:
                        check_api_url(url)
                    except ValueError as e:
                        raise ValueError(f"providers.{cloud}.{field}: {e}") from None
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
            if r.health.degenerate is not None and r.wandb is None:
                raise ValueError(
                    f"run {r.name!r} sets health.degenerate: it reads W&B, so set wandb "
                    "(entity, project)"
                )
            if "local" in r.providers and self.providers.local is None:
                raise ValueError(
                    f"run {r.name!r} uses provider 'local': set providers.local.state_dir"
                )
            ours = self.controller_secret_envs
            for name in r.pod.secret_env:
                if name in ours:
                    raise ValueError(
                        f"run {r.name!r}: pod.secret_env names {name}, which holds {ours[name]}: "
                        "a controller-only secret that the trainer must never get "
                        "(docs/keys.md); give the pod a secret of its own"
                    )
        return self

    @property
    def controller_secret_envs(self) -> dict[str, str]:
        """Variable → what it holds, for every secret only the controller may hold: a pod
        gets its store key under the pod's own names, never these (docs/keys.md)."""
        store = self.store
        out = {
            store.key_id_env: "the controller's store key id (store.key_id_env)",
            store.key_env: "the controller's store key (store.key_env)",
        }
        if store.pod_key_id_env and store.pod_key_env:
            out[store.pod_key_id_env] = "the pod's store key id (store.pod_key_id_env)"
            out[store.pod_key_env] = "the pod's store key (store.pod_key_env)"
        if store.ledger_secret_env:
            out[store.ledger_secret_env] = "the ledger secret (store.ledger_secret_env)"
        ssh = self.providers.ssh_private_key_env
        if ssh:
            out[ssh] = "the SSH key (providers.ssh_private_key_env)"
        for cloud in type(self.providers).model_fields:
            block = getattr(self.providers, cloud)
            for field in getattr(type(block), "model_fields", {}):
                if field.endswith("key_env") and getattr(block, field):
                    out[getattr(block, field)] = f"an API key (providers.{cloud}.{field})"
        if self.notify.webhook_url_env:
            out[self.notify.webhook_url_env] = "the webhook URL (notify.webhook_url_env)"
        return out

    @property
    def fleet(self) -> str:
        """The fleet id in instance names: the configured one, or one derived from the store
        URL (two fleets sharing a cloud account never share a store)."""
        return self.fleet_id or hashlib.sha256(self.store.url.encode()).hexdigest()[:8]

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


def _describe(err: Mapping[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field (check the spelling; `respawn schema` lists every field)"
    if err["type"] == "missing":
        return "required field is missing"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


# libyaml's parser where PyYAML was built with it (several times faster on a fleet of runs);
# the constructor above it is the same safe one either way.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """safe_load, but a key written twice is an error: with the last one silently winning, a
    second `store:` pasted at the end would move the whole fleet to another bucket."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key]}): remove one",
                    key_node.start_mark,
                )
            if isinstance(key, str | int | float | bool):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


MAX_CONFIG_BYTES = 1 << 20


def _load(text: str) -> tuple[Any, yaml.Node | None]:
    """One parse: the node tree (its marks give error lines) and the data built from it."""
    loader = _UniqueKeyLoader(text)
    try:
        root = loader.get_single_node()
        return (loader.construct_document(root) if root is not None else None), root
    finally:
        loader.dispose()


def parse_config(text: str, source: str = "<config>") -> FleetConfig:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES} bytes: not a fleet config")
    try:
        data, root = _load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a fleet config") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with 'store' and 'runs' at the top level")
    try:
        return FleetConfig.model_validate(data)
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a fleet config") from None
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
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte {e.start}): save the config as UTF-8"
        ) from None
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file (pass the fleet config with -c FILE)") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    return parse_config(text, str(p))


def _duration_defaults(node: Any) -> None:
    """pydantic writes timedelta defaults as ISO 8601 (`PT20M`); the pattern next to them
    accepts only our own form (`20m`), so an editor would flag the defaults themselves."""
    if isinstance(node, dict):
        default = node.get("default")
        if node.get("pattern") == DURATION_PATTERN and isinstance(default, str):
            node["default"] = format_duration(TypeAdapter(timedelta).validate_python(default))
        for v in node.values():
            _duration_defaults(v)
    elif isinstance(node, list):
        for v in node:
            _duration_defaults(v)


def json_schema() -> dict[str, Any]:
    schema = FleetConfig.model_json_schema()
    _duration_defaults(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "respawn fleet config"
    return schema
