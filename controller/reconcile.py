"""One controller tick: observe → classify → decide → act, for every run, runs in parallel."""

from __future__ import annotations

import threading
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
from provisioning.base import Instance, Provider, ProviderError


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


class ListingCache:
    """One provider listing per tick, shared by every run's observation (a fleet of runs on one
    account would otherwise list it once per run and run into rate limits). Only `observe`
    sees it: `act` lists afresh, since settling a launch race needs the live answer."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.name = provider.name
        self._lock = threading.Lock()
        self._all: list[Instance] | Exception | None = None

    def list_instances(self, run: str) -> list[Instance]:
        every = getattr(self.provider, "_all", None)
        if every is None:
            return self.provider.list_instances(run)
        with self._lock:
            if self._all is None:
                try:
                    self._all = every()
                except Exception as e:  # every run sees the same failure: all unknown
                    self._all = e
        if isinstance(self._all, Exception):
            raise self._all
        return [i for i in self._all if i.run == run]

    def __getattr__(self, attr: str) -> object:
        return getattr(self.provider, attr)


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
    listings: Mapping[str, Provider | Exception] | None = None,
) -> RunReport:
    store = backend if isinstance(backend, Exception) else CheckpointStore(backend, run.name)
    obs = observe(run, store, providers if listings is None else listings)
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
    listings: dict[str, Provider | Exception] = {
        name: p if isinstance(p, Exception) else ListingCache(p) for name, p in providers.items()
    }

    def one(run: RunConfig) -> RunReport:
        return tick_run(fleet, run, backend, providers, when, act_on_plan, dry_run, listings)

    with ThreadPoolExecutor(max_workers=min(8, len(runs))) as pool:
        return list(pool.map(one, runs))
