"""act: carry out a plan. The only stage of a tick that changes the world.

Order matters: terminations first (a failed one cancels the launch, so there are never two
instances at once), and the ledger — which claims the new generation and so fences the old pod
— is written before the launch, then again with the instance the launch produced.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from ckptstore.store import CheckpointStore, StoreError
from controller.config import FleetConfig, RunConfig
from controller.ledger import write_ledger
from controller.model import (
    Action,
    Alert,
    Halt,
    LaunchRecord,
    Ledger,
    Plan,
    Provision,
    RestartInPlace,
    Terminate,
    describe,
)
from provisioning.base import (
    Instance,
    InstanceState,
    LaunchSpec,
    NoCapacityError,
    Offer,
    Provider,
    ProviderError,
    instance_name,
)

log = logging.getLogger("respawn.controller")
MAX_OFFERS_TRIED = 5


class ActionResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: Action
    ok: bool
    detail: str = ""


class MissingSecretError(Exception):
    pass


def launch_env(
    fleet: FleetConfig, run: RunConfig, generation: int, provider: str, environ: Mapping[str, str]
) -> dict[str, str]:
    """The pod's environment: what it needs to find its store and resume, plus the secrets the
    config names, read from the controller's environment (GitHub secrets in the workflow)."""
    secrets = list(run.pod.secret_env)
    store_creds: dict[str, str] = {}
    if fleet.store.url.startswith("b2://"):
        secrets += [fleet.store.key_id_env, fleet.store.key_env]
        # The pod reads the store key under the canonical names, whatever the controller's.
        store_creds = {
            "B2_APPLICATION_KEY_ID": fleet.store.key_id_env,
            "B2_APPLICATION_KEY": fleet.store.key_env,
        }
    if run.wandb is not None:
        secrets.append(run.wandb.api_key_env)
    missing = [name for name in secrets if not environ.get(name)]
    if missing:
        raise MissingSecretError(
            f"environment variable(s) {', '.join(missing)} are not set on the controller; "
            "the pod needs them (add them as secrets to the workflow)"
        )
    env = dict(run.pod.env)
    env.update({name: environ[name] for name in secrets})
    env.update({pod_name: environ[ours] for pod_name, ours in store_creds.items()})
    env.update(
        RESPAWN_STORE=fleet.store.url,
        RESPAWN_RUN=run.name,
        RESPAWN_GENERATION=str(generation),
        RESPAWN_WRITER=f"{provider}:{instance_name(run.name, generation)}",
        RESPAWN_POD=run.pod.model_dump_json(),
    )
    wandb_id = run.wandb.run_id if run.wandb else None
    if wandb_id:
        env["RESPAWN_WANDB_RUN_ID"] = wandb_id
    return env


def redact(text: str, secrets: list[str]) -> str:
    """Cloud APIs may echo a rejected request (GraphQL quotes invalid variables): never let a
    secret from the launch environment reach a log, a report or the ledger."""
    for value in sorted(secrets, key=len, reverse=True):
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def provision(
    fleet: FleetConfig,
    run: RunConfig,
    providers: Mapping[str, Provider | Exception],
    generation: int,
    environ: Mapping[str, str],
) -> tuple[Instance, Offer]:
    """Launch on the cheapest fitting offer, failing over offer by offer, then provider by
    provider in the run's order. Raises ProviderError listing what every attempt said."""
    cap = run.resources.max_price_per_hour
    tried: list[str] = []
    for name in run.providers:
        provider = providers.get(name)
        if provider is None or isinstance(provider, Exception):
            tried.append(f"{name}: {provider or 'not configured'}")
            continue
        try:
            offers = [o for o in provider.offers(run.resources) if o.price_per_hour <= cap]
        except ProviderError as e:
            tried.append(f"{name}: offers failed: {e}")
            continue
        if not offers:
            tried.append(f"{name}: no offer under ${cap:g}/h")
            continue
        env = launch_env(fleet, run, generation, name, environ)
        secrets = [
            v for k, v in env.items() if k not in run.pod.env and not k.startswith("RESPAWN_")
        ]
        spec = LaunchSpec(
            run=run.name,
            generation=generation,
            image=run.pod.image,
            disk_gb=run.resources.disk_gb,
            max_price_per_hour=cap,
            env=env,
        )
        for offer in offers[:MAX_OFFERS_TRIED]:
            try:
                return settle_race(provider, run.name, provider.launch(offer, spec)), offer
            except NoCapacityError as e:
                tried.append(redact(f"{name} offer {offer.id}: {e}", secrets))
            except ProviderError as e:  # bad key, API down, price check: next provider
                tried.append(redact(f"{name}: {e}", secrets))
                break
    raise ProviderError("no instance launched: " + "; ".join(tried))


def _id_order(instance: Instance) -> tuple[int, str]:
    return (len(instance.id), instance.id)  # numeric ids compare as numbers


def settle_race(provider: Provider, run: str, mine: Instance) -> Instance:
    """Two ticks at once may both launch the same generation. Each launcher looks again after
    its launch; the instance with the lowest id wins and a loser destroys its own, so the
    pair settles on one instance without any lock."""
    try:
        twins = [
            i
            for i in provider.list_instances(run)
            if i.generation == mine.generation and i.state != InstanceState.TERMINATED
        ]
    except ProviderError as e:
        log.warning("could not check for a concurrent launch: %s", e)
        return mine
    winner = min([*twins, mine], key=_id_order)
    if winner.id != mine.id:
        log.warning("a concurrent tick launched %s first; destroying ours (%s)", winner.id, mine.id)
        provider.terminate(mine.id)
    return winner


def _record_launch(ledger: Ledger, generation: int, **update: object) -> Ledger:
    launches = list(ledger.launches)
    for idx in range(len(launches) - 1, -1, -1):
        if launches[idx].generation == generation:
            launches[idx] = launches[idx].model_copy(update=update)
            break
    else:
        launches.append(LaunchRecord.model_validate({"generation": generation, **update}))
    return ledger.model_copy(update={"launches": tuple(launches)})


class _Actor:
    """Carries out one plan's actions in order, keeping the ledger it will write."""

    def __init__(
        self,
        run: RunConfig,
        fleet: FleetConfig,
        store: CheckpointStore | None,
        providers: Mapping[str, Provider | Exception],
        ledger: Ledger,
        environ: Mapping[str, str],
    ) -> None:
        self.run, self.fleet, self.store = run, fleet, store
        self.providers, self.ledger, self.environ = providers, ledger, environ
        self.termination_failed = False

    def _provider(self, name: str) -> Provider:
        provider = self.providers.get(name)
        if provider is None or isinstance(provider, Exception):
            raise ProviderError(f"{name}: {provider or 'not configured'}")
        return provider

    def save_ledger(self) -> None:
        if self.store is None:
            raise StoreError("checkpoint store unavailable: cannot write the ledger")
        write_ledger(self.store, self.ledger)

    def do(self, action: Action) -> str:
        """Carry out one action; return what happened, or raise."""
        match action:
            case Terminate():
                try:
                    self._provider(action.provider).terminate(action.instance_id)
                except ProviderError:
                    self.termination_failed = True
                    raise
                return action.reason
            case Provision():
                if self.termination_failed:
                    # Keep the generation claim (it fences the instance we failed to stop),
                    # but a launch that never happened must not count against the budget.
                    launches = tuple(
                        lr for lr in self.ledger.launches if lr.generation != action.generation
                    )
                    self.ledger = self.ledger.model_copy(update={"launches": launches})
                    raise ProviderError("skipped: a termination failed (never two at once)")
                self.save_ledger()  # claim the generation first: it fences the old pod
                gen = action.generation
                try:
                    inst, offer = provision(self.fleet, self.run, self.providers, gen, self.environ)
                except (ProviderError, MissingSecretError) as e:
                    self.ledger = _record_launch(self.ledger, gen, error=str(e))
                    raise
                self.ledger = _record_launch(
                    self.ledger,
                    gen,
                    provider=inst.provider,
                    instance_id=inst.id,
                    price_per_hour=offer.price_per_hour,
                )
                return f"{inst.provider}:{inst.id} {inst.name} at ${offer.price_per_hour:g}/h"
            case RestartInPlace():
                restart = getattr(self._provider(action.provider), "restart_trainer", None)
                if restart is None:
                    raise ProviderError(f"{action.provider} cannot restart a trainer in place")
                restart(action.instance_id)
                return action.reason
            case Alert():
                log.warning("ALERT %s", action.message)
                return ""
            case Halt():
                return action.reason
        raise AssertionError(action)


def act(
    plan: Plan,
    run: RunConfig,
    fleet: FleetConfig,
    store: CheckpointStore | None,
    providers: Mapping[str, Provider | Exception],
    previous_ledger: Ledger,
    environ: Mapping[str, str] | None = None,
) -> list[ActionResult]:
    actor = _Actor(
        run, fleet, store, providers, plan.ledger, os.environ if environ is None else environ
    )
    results: list[ActionResult] = []
    for action in plan.actions:
        try:
            results.append(ActionResult(action=action, ok=True, detail=actor.do(action)))
        except (ProviderError, MissingSecretError, StoreError) as e:
            log.error("%s failed: %s", describe(action), e)
            results.append(ActionResult(action=action, ok=False, detail=str(e)))
        except Exception as e:  # a bug or an unmapped SDK error: report it, finish the tick
            log.exception("%s failed unexpectedly", describe(action))
            detail = f"unexpected {type(e).__name__}: {e}"
            results.append(ActionResult(action=action, ok=False, detail=detail))
    if store is not None and actor.ledger != previous_ledger:
        try:
            actor.save_ledger()
        except StoreError as e:
            fail = Alert(message="ledger write failed")
            results.append(ActionResult(action=fail, ok=False, detail=str(e)))
    return results
