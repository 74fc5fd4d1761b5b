"""Launching one generation of a run: its pod spec into the store, the pod's environment, then
failover across the run's providers (`respawn.provisioning.failover`)."""

from __future__ import annotations

from collections.abc import Mapping

from respawn.contract.pod import (
    ENV_SECRET_NAMES,
    ENV_STORE_KEY,
    ENV_STORE_KEY_ID,
    PodEnv,
    pod_sha256,
)
from respawn.controller.config import FleetConfig, RunConfig
from respawn.controller.redact import Redactor
from respawn.provisioning.base import Instance, LaunchSpec, Offer, Provider, instance_name
from respawn.provisioning.failover import launch_first_fit
from respawn.store.store import CheckpointStore


class MissingSecretError(Exception):
    pass


def _refuse_controller_values(
    fleet: FleetConfig, names: list[str], environ: Mapping[str, str]
) -> None:
    """A pod secret may not hold a controller-only secret's value under another name (a
    paste, a reused token): the trainer would get it. Config validation refuses the names."""
    ours = fleet.controller_secret_envs
    for name in names:
        for controller_name, what in ours.items():
            value = environ.get(controller_name)
            if value and name != controller_name and environ[name] == value:
                raise MissingSecretError(
                    f"pod.secret_env: {name} holds the same value as {controller_name} "
                    f"({what}), a controller-only secret: the trainer would get it; give the "
                    "pod a secret of its own (docs/keys.md)"
                )


def missing_launch_secrets(
    fleet: FleetConfig, run: RunConfig, environ: Mapping[str, str]
) -> MissingSecretError | None:
    """What no launch of this run could start without, checked before a generation is
    claimed: a launch refused for it every tick would otherwise spend one generation a tick."""
    needed = [*run.pod.secret_env]
    if run.wandb is not None:
        needed.append(run.wandb.api_key_env)
    if fleet.store.url.startswith("b2://"):
        needed += fleet.store.pod_credential_envs
    if run.pod.registry_auth_env:
        needed.append(run.pod.registry_auth_env)
    missing = [name for name in dict.fromkeys(needed) if not environ.get(name)]
    if not missing:
        return None
    return MissingSecretError(
        f"not launched: environment variable(s) {', '.join(missing)} are not set on the "
        "controller and the pod needs them (add them as secrets to the workflow's "
        "environment; `respawn validate --env` checks them all)"
    )


def launch_env(
    fleet: FleetConfig, run: RunConfig, pod_env: PodEnv, environ: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """The pod's environment and the secret values in it: where it finds its store and who it
    is (`PodEnv`), plus the secrets the config names, read from the controller's environment
    (GitHub secrets in the workflow)."""
    secrets = list(run.pod.secret_env)
    store_creds: dict[str, str] = {}
    if fleet.store.url.startswith("b2://"):
        # The pod reads the store key under the canonical names only (never also under the
        # controller's names, where the trainer would find it): the pod key when one is
        # configured, else the controller's own (docs/keys.md).
        key_id_env, key_env = fleet.store.pod_credential_envs
        store_creds = {ENV_STORE_KEY_ID: key_id_env, ENV_STORE_KEY: key_env}
    if run.wandb is not None:
        secrets.append(run.wandb.api_key_env)
    missing = missing_launch_secrets(fleet, run, environ)
    if missing is not None:
        raise missing
    _refuse_controller_values(fleet, secrets, environ)
    env = dict(run.pod.env)
    env.update({name: environ[name] for name in secrets})
    env.update({pod_name: environ[ours] for pod_name, ours in store_creds.items()})
    env.update(pod_env.to_env())
    env[ENV_SECRET_NAMES] = ",".join(sorted({*secrets, *store_creds}))
    return env, [environ[name] for name in [*secrets, *store_creds.values()]]


def provision(
    fleet: FleetConfig,
    run: RunConfig,
    store: CheckpointStore,
    providers: Mapping[str, Provider | Exception],
    generation: int,
    environ: Mapping[str, str],
    wandb_run_id: str | None = None,
) -> tuple[Instance, Offer]:
    """Publish the pod spec of this generation, then launch through failover."""
    spec_doc = run.pod.canonical_json()
    store.write_pod_spec(generation, spec_doc)
    wandb_id = wandb_run_id or (run.wandb.run_id if run.wandb else None)
    fleet_secrets = Redactor.from_fleet(fleet, environ)
    redact = fleet_secrets  # plus the launch's own secrets once a spec is built

    def spec_for(provider: str, offer: Offer) -> LaunchSpec:
        pod_env = PodEnv(
            store=fleet.store.url,
            run=run.name,
            generation=generation,
            writer=f"{provider}:{instance_name(run.name, generation, fleet.fleet)}",
            pod_sha256=pod_sha256(spec_doc),
            wandb_run_id=wandb_id,
        )
        env, values = launch_env(fleet, run, pod_env, environ)
        auth = None
        if run.pod.registry_auth_env:
            auth = environ.get(run.pod.registry_auth_env)
            if not auth:
                raise MissingSecretError(
                    f"environment variable {run.pod.registry_auth_env} "
                    "(pod.registry_auth_env) is not set on the controller"
                )
            values = [*values, auth, *auth.split(":", 1)]
        nonlocal redact
        redact = fleet_secrets.plus(values)
        return LaunchSpec(
            run=run.name,
            generation=generation,
            image=run.pod.image,
            disk_gb=run.resources.disk_gb,
            max_price_per_hour=run.resources.max_price_per_hour,
            market=offer.market,
            env=env,
            registry_auth=auth,
            fleet=fleet.fleet,
        )

    return launch_first_fit(
        run.providers,
        providers,
        run.resources,
        spec_for,
        lambda text: redact(text),
    )
