"""One controller tick: observe → classify → decide → act, for every run, runs in parallel."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from ckptstore.backend import Backend, open_backend
from ckptstore.schema import utcnow
from ckptstore.store import CheckpointStore, StoreError
from controller.act import ActionResult, act
from controller.config import FleetConfig, RunConfig
from controller.decide import decide
from controller.model import Observation, Plan
from controller.observe import observe
from controller.providers import get_provider
from provisioning.base import Provider, ProviderError


class RunReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    run: str
    observation: Observation
    plan: Plan
    results: tuple[ActionResult, ...] = ()
    dry_run: bool = False

    @property
    def failed(self) -> bool:
        return any(not r.ok for r in self.results)


def open_providers(fleet: FleetConfig, names: set[str]) -> dict[str, Provider | Exception]:
    out: dict[str, Provider | Exception] = {}
    for name in sorted(names):
        try:
            out[name] = get_provider(name, fleet.providers)
        except ProviderError as e:
            out[name] = e
    return out


def tick_run(
    fleet: FleetConfig,
    run: RunConfig,
    backend: Backend | Exception,
    providers: Mapping[str, Provider | Exception],
    now: datetime,
    act_on_plan: bool,
    dry_run: bool = False,
) -> RunReport:
    store = backend if isinstance(backend, Exception) else CheckpointStore(backend, run.name)
    obs = observe(run, store, providers)
    plan = decide(run, obs, now)
    results: tuple[ActionResult, ...] = ()
    if act_on_plan and not dry_run:
        usable = None if isinstance(store, Exception) else store
        results = tuple(act(plan, run, fleet, usable, providers, obs.ledger))
    return RunReport(run=run.name, observation=obs, plan=plan, results=results, dry_run=dry_run)


def tick(
    fleet: FleetConfig,
    only: str | None = None,
    act_on_plan: bool = True,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[RunReport]:
    runs = [fleet.run(only)] if only else list(fleet.runs)
    providers = open_providers(fleet, {p for r in runs for p in r.providers})
    backend: Backend | Exception
    try:
        backend = open_backend(fleet.store.url, fleet.store.credential_envs)
    except StoreError as e:
        backend = e
    when = now or utcnow()

    def one(run: RunConfig) -> RunReport:
        return tick_run(fleet, run, backend, providers, when, act_on_plan, dry_run)

    with ThreadPoolExecutor(max_workers=min(8, len(runs))) as pool:
        return list(pool.map(one, runs))
