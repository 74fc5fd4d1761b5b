"""Secrets preflight: every environment variable the fleet config names, checked at once. The
one list: `validate --env`, `doctor` and `status` read `env_needs`; a launch checks its own
run's share of it (`launch.missing_launch_secrets`) before it claims a generation.

Without it a missing secret surfaces one layer per run, and only at launch (after the old
instance is gone and a generation is spent). What each missing variable costs:
- required (store keys, pod secrets, W&B key, a run's first provider, the webhook): an error;
- a *fallback* provider's key: that provider is skipped, with a warning;
- the SSH key: restart-in-place is disabled, with a warning; recovery still works.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from respawn.controller.config import FleetConfig

Kind = Literal["required", "fallback", "optional"]


@dataclass(frozen=True)
class EnvNeed:
    name: str
    what: str
    kind: Kind


def provider_key_env(fleet: FleetConfig, provider: str) -> str | None:
    settings = getattr(fleet.providers, provider, None)
    return getattr(settings, "api_key_env", None)


def env_needs(fleet: FleetConfig) -> list[EnvNeed]:
    needs: list[EnvNeed] = []
    if fleet.store.url.startswith("b2://"):
        needs += [
            EnvNeed(n, "checkpoint store (B2)", "required") for n in fleet.store.credential_envs
        ]
    for name, what in (
        (fleet.store.pod_key_id_env, "pod key id, docs/keys.md"),
        (fleet.store.pod_key_env, "pod key, docs/keys.md"),
        (fleet.store.ledger_secret_env, "ledger secret, docs/keys.md"),
    ):
        if name:
            needs.append(EnvNeed(name, what, "required"))
    for run in fleet.runs:
        needs += [EnvNeed(n, f"run {run.name}: pod secret", "required") for n in run.pod.secret_env]
        if run.pod.registry_auth_env:
            what = f"run {run.name}: image registry login (pod.registry_auth_env)"
            needs.append(EnvNeed(run.pod.registry_auth_env, what, "required"))
        if run.wandb is not None:
            needs.append(EnvNeed(run.wandb.api_key_env, f"run {run.name}: W&B", "required"))
        for i, provider in enumerate(run.providers):
            key = provider_key_env(fleet, provider)
            if key is not None:
                kind: Kind = "required" if i == 0 else "fallback"
                needs.append(EnvNeed(key, f"run {run.name}: provider {provider}", kind))
    ssh = fleet.providers.ssh_private_key_env
    if ssh:
        needs.append(EnvNeed(ssh, "SSH key (restart-in-place, diagnose)", "optional"))
    if fleet.notify.webhook_url_env:
        needs.append(EnvNeed(fleet.notify.webhook_url_env, "notify webhook", "required"))
    return needs


@dataclass(frozen=True)
class Preflight:
    errors: tuple[str, ...]
    warnings: tuple[str, ...]

    def message(self) -> str:
        lines = []
        if self.errors:
            lines.append("missing environment variables (set them as workflow secrets):")
            lines += [f"  {e}" for e in self.errors]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def check_env(fleet: FleetConfig, environ: Mapping[str, str]) -> Preflight:
    """One verdict per variable: the strictest use decides (a provider that is one run's first
    choice and another's fallback is required)."""
    order = {"required": 0, "fallback": 1, "optional": 2}
    by_name: dict[str, list[EnvNeed]] = {}
    for need in env_needs(fleet):
        if not environ.get(need.name):
            by_name.setdefault(need.name, []).append(need)
    errors, warnings = [], []
    for name, uses in by_name.items():
        strictest = min(uses, key=lambda n: order[n.kind]).kind
        whats = "; ".join(dict.fromkeys(u.what for u in uses))
        if strictest == "required":
            errors.append(f"{name} ({whats})")
        elif strictest == "fallback":
            warnings.append(f"{name} is not set: skipping it as a fallback ({whats})")
        else:
            warnings.append(f"{name} is not set: restart-in-place is disabled ({whats})")
    return Preflight(tuple(errors), tuple(warnings))
