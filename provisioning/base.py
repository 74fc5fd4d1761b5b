"""The provider interface: offers, launch, list a run's instances, terminate. One screen.

Clouds hold the truth: instances are found again by name on every call
(`respawn-<run>-g<generation>`), so the controller keeps no memory of them but the ledger.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field


class InstanceState(StrEnum):
    PENDING = "pending"  # created/loading: bills, not yet running the pod
    RUNNING = "running"
    STOPPED = "stopped"  # exited/paused/outbid: may still bill storage, may resume by itself
    TERMINATED = "terminated"  # gone; listed only when a provider still reports it


LIVE_STATES = frozenset({InstanceState.PENDING, InstanceState.RUNNING})


class Instance(BaseModel):
    model_config = ConfigDict(frozen=True)

    provider: str
    id: str
    name: str
    run: str
    generation: int
    state: InstanceState
    created_at: datetime | None = None
    price_per_hour: float | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    detail: str = ""

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


class Offer(BaseModel):
    model_config = ConfigDict(frozen=True)

    provider: str
    id: str
    gpu_name: str
    gpu_count: int
    vram_gb: float
    price_per_hour: float = Field(description="what we would pay per hour (the bid for spot)")
    min_bid: float | None = None
    reliability: float | None = None
    inet_down_mbps: float | None = None
    disk_gb: float | None = None
    cuda: float | None = None
    location: str | None = None


class Resources(BaseModel):
    """What a run needs from an instance (also the `resources` block of the fleet config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpus: tuple[str, ...] = Field((), description="acceptable GPU names, e.g. [H100_SXM, H100]")
    gpu_count: int = Field(1, ge=0)
    min_vram_gb: float = Field(0, ge=0, description="per GPU")
    disk_gb: float = Field(50, gt=0)
    max_price_per_hour: float = Field(gt=0, description="hard cap in $/h for the whole instance")


class LaunchSpec(BaseModel):
    """Everything a provider needs to start one pod of a run."""

    model_config = ConfigDict(frozen=True)

    run: str
    generation: int
    image: str | None
    disk_gb: float
    max_price_per_hour: float
    env: dict[str, str] = Field(repr=False)  # holds secrets: never printed

    @property
    def name(self) -> str:
        return instance_name(self.run, self.generation)


class ProviderError(Exception):
    """A provider call failed; `retryable` says whether the next offer/tick may succeed."""

    retryable = True


class NoCapacityError(ProviderError):
    """The offer is gone or full: try the next offer."""


class PriceTooHighError(ProviderError):
    """No offer fits under the run's price cap."""


class RateLimitedError(ProviderError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidCredentialsError(ProviderError):
    retryable = False


class TransientProviderError(ProviderError):
    """Timeout, connection reset, 5xx, malformed response: the same call may work later."""


class NotFoundError(ProviderError):
    """The instance does not exist (any more)."""


class Provider(Protocol):
    name: str

    def offers(self, resources: Resources) -> list[Offer]:
        """Offers that fit the resources and the price cap, cheapest first."""
        ...

    def launch(self, offer: Offer, spec: LaunchSpec) -> Instance: ...

    def list_instances(self, run: str) -> list[Instance]:
        """Every instance of the run that exists or still bills. Raises on a failed listing:
        an error is never the same as "no instances"."""
        ...

    def terminate(self, instance_id: str) -> None:
        """Destroy the instance; a missing instance is not an error."""
        ...


_NAME = re.compile(r"^respawn-(?P<run>.+)-g(?P<gen>\d+)$")


def instance_name(run: str, generation: int) -> str:
    return f"respawn-{run}-g{generation}"


def parse_instance_name(name: str) -> tuple[str, int] | None:
    """(run, generation) for a name respawn gave, else None. Matching is exact: run `a` never
    claims `respawn-a-b-g1`, which belongs to run `a-b`."""
    m = _NAME.match(name or "")
    return (m.group("run"), int(m.group("gen"))) if m else None
