"""The provider interface: offers, launch, list a run's instances, terminate. One screen.

Clouds hold the truth: instances are found again by name on every call
(`respawn-<fleet>-<run>-g<generation>`), so the controller keeps no memory of them but the ledger.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class InstanceState(StrEnum):
    PENDING = "pending"  # created/loading, or paused with GPU billing (Vast frozen): live
    RUNNING = "running"
    STOPPED = "stopped"  # exited/paused/outbid: may still bill storage, may resume by itself
    TERMINATED = "terminated"  # gone; listed only when a provider still reports it


LIVE_STATES = frozenset({InstanceState.PENDING, InstanceState.RUNNING})
Market = Literal["interruptible", "on_demand"]
# What a run may rent: spot only, on-demand only, or every spot offer first (across all its
# providers, in order) and on-demand only when none launched.
MarketChoice = Literal["interruptible", "on_demand", "interruptible_then_on_demand"]


def markets_of(choice: MarketChoice) -> tuple[Market, ...]:
    """The markets a choice allows, in the order they are tried."""
    if choice == "interruptible_then_on_demand":
        return ("interruptible", "on_demand")
    return (choice,)


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
    interruptible: bool | None = Field(None, description="spot; None when the cloud won't say")
    detail: str = ""

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def billing(self) -> bool:
        return self.state != InstanceState.TERMINATED


class Offer(BaseModel):
    model_config = ConfigDict(frozen=True)

    provider: str
    id: str
    gpu_name: str
    gpu_count: int
    vram_gb: float
    price_per_hour: float = Field(
        description="what we would pay per hour for the whole instance, disk included"
    )
    market: Market = "interruptible"
    bid: float | None = Field(
        None, description="the $/h a spot create sends (Vast adds disk on top of it)"
    )
    min_bid: float | None = None
    reliability: float | None = None
    inet_down_mbps: float | None = None
    disk_gb: float | None = None
    cuda: float | None = None
    location: str | None = None


class Resources(BaseModel):
    """What a run needs from an instance (also the `resources` block of the fleet config)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    gpus: tuple[str, ...] = Field((), description="acceptable GPU names, e.g. [H100_SXM, H100]")
    gpu_count: int = Field(1, ge=0)
    min_vram_gb: float = Field(
        0,
        ge=0,
        description="per GPU, in nominal GB as cards are sold (80 for an H100 80GB): clouds "
        "that report a little less (Vast: 81559 MB) still match",
    )
    disk_gb: float = Field(50, gt=0)
    max_price_per_hour: float = Field(
        gt=0, description="hard cap in $/h for the whole instance, disk included"
    )
    market: MarketChoice = Field(
        "interruptible",
        description="interruptible (spot), on_demand, or interruptible_then_on_demand: every "
        "spot offer of every provider first, on-demand only when none launched",
    )


class LaunchSpec(BaseModel):
    """Everything a provider needs to start one pod of a run."""

    model_config = ConfigDict(frozen=True)

    run: str
    generation: int
    image: str | None
    disk_gb: float
    max_price_per_hour: float
    market: Market = "interruptible"
    env: dict[str, str] = Field(repr=False)  # holds secrets: never printed
    # Private image pull (`pod.registry_auth_env`): `USER:TOKEN` for Vast, a saved
    # container-registry-auth id for RunPod. Never printed.
    registry_auth: str | None = Field(None, repr=False)
    fleet: str = Field("", description="the fleet id in the instance name (see instance_name)")

    @property
    def name(self) -> str:
        return instance_name(self.run, self.generation, self.fleet)

    def registry_host(self) -> str:
        """The registry of `image`: its first path part when that names a host."""
        first = (self.image or "").split("/", 1)[0]
        has_host = "/" in (self.image or "") and ("." in first or ":" in first)
        return first if has_host or first == "localhost" else "docker.io"


class ProviderError(Exception):
    """A provider call failed; `retryable` says whether the next offer/tick may succeed."""

    retryable = True


class NoCapacityError(ProviderError):
    """The offer is gone or full: try the next offer."""


class RateLimitedError(ProviderError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceededError(ProviderError):
    """A daily quota is spent (Vast's search quota resets at UTC midnight): retrying only
    spends more calls, so it is never retried within a tick."""

    retryable = False


class InvalidCredentialsError(ProviderError):
    retryable = False


class TransientProviderError(ProviderError):
    """Timeout, connection reset, 5xx, malformed response: the same call may work later."""


class NotFoundError(ProviderError):
    """The instance does not exist (any more)."""


class LaunchRefusedError(NoCapacityError):
    """The cloud refused the launch but may have created the instance anyway (Vast answers a
    too-low bid with an error that carries the new contract's id): it is destroyed."""

    def __init__(self, message: str, instance_id: str | None = None) -> None:
        super().__init__(message)
        self.instance_id = instance_id


class VerificationError(ProviderError):
    """The instance a create produced is not what was asked for (on-demand instead of spot,
    above the price cap, created stopped): it was destroyed; the next offer may do."""


class Provider(ABC):
    """One GPU cloud. Adapters implement the five primitives; `launch`, `list_instances` and
    `terminate` are implemented once, here, with the safety rules every cloud needs:

    - a create is never retried blind: when its outcome is unknown (timeout, lost response),
      the instance is looked up by its unique name and adopted, or there is none;
    - whatever instance the create produced is read back and verified (market, price cap, not
      stopped) and destroyed if it fails, or if anything else goes wrong;
    - only instances named `respawn-<fleet>-<run>-g<N>` with this provider's fleet id are
      ever listed, matched exactly;
    - terminating an instance that is already gone is not an error.
    """

    name: ClassVar[str]
    # The markets this cloud can rent in; a run's `resources.market` picks among them.
    markets: tuple[Market, ...] = ("interruptible", "on_demand")
    #: Whose instances these are: set by the controller from the fleet config; only names
    #: carrying exactly this fleet id are listed, adopted or destroyed.
    fleet: str = ""

    @abstractmethod
    def offers(self, resources: Resources) -> list[Offer]:
        """Offers that fit the resources and the price cap, cheapest first."""

    @abstractmethod
    def list_all(self) -> list[Instance]:
        """Every respawn instance in the account that exists or still bills. Raises on a
        failed listing: an error is never the same as "no instances"."""

    @abstractmethod
    def _create(self, offer: Offer, spec: LaunchSpec) -> str:
        """Send the create; return the new instance's id. Raises LaunchRefusedError (with the
        id when the cloud made one anyway), NoCapacityError, or TransientProviderError when
        the outcome is unknown."""

    @abstractmethod
    def _read_back(self, instance_id: str, spec: LaunchSpec) -> Instance | None:
        """The instance as the cloud describes it now, or None when it does not exist."""

    @abstractmethod
    def _destroy(self, instance_id: str) -> None:
        """Destroy the instance; raise NotFoundError when it does not exist."""

    def check_live(self) -> list[str]:
        """Read-only calls with the user's key; one line per field the adapter relies on that
        is missing or of another type (`respawn doctor --live`). Raises ProviderError when a
        call fails. A provider without a remote API has nothing to check."""
        return []

    # -- implemented once ----------------------------------------------------------------

    def list_instances(self, run: str) -> list[Instance]:
        return [i for i in self.list_all() if i.run == run]

    def terminate(self, instance_id: str) -> None:
        """Destroy the instance; a missing instance is not an error."""
        try:
            self._destroy(instance_id)
        except NotFoundError:
            return

    def launch(self, offer: Offer, spec: LaunchSpec) -> Instance:
        try:
            instance_id = self._create(offer, spec)
        except LaunchRefusedError as e:
            if e.instance_id is not None:
                self.terminate(e.instance_id)
            raise
        except TransientProviderError as e:
            instance_id = self._adopt(spec, e)
        try:
            inst = self._read_back(instance_id, spec)
            if inst is None:
                raise VerificationError(
                    f"{self.name}: instance {instance_id} vanished right after create"
                )
            problem = verification_problem(inst, spec)
            if problem is not None:
                raise VerificationError(f"{self.name}: instance {instance_id} {problem}")
            return inst
        except BaseException:
            # Never leave a half-created or unverified instance billing behind.
            self.terminate(instance_id)
            raise

    def _adopt(self, spec: LaunchSpec, cause: TransientProviderError) -> str:
        """The create's outcome is unknown: find what it may have made by its unique name.
        None found means none was made (names are never reused); several are all ours: keep
        the first created, destroy the rest."""
        try:
            mine = [i for i in self.list_all() if i.name == spec.name and i.billing]
        except ProviderError as e:
            raise TransientProviderError(
                f"{self.name}: create failed ({cause}) and the instance list could not be read "
                f"({e}); the next tick looks for {spec.name} again"
            ) from e
        if not mine:
            raise TransientProviderError(f"{self.name}: create failed, nothing made: {cause}")
        winner, *others = sorted(mine, key=winner_order)
        for other in others:
            self.terminate(other.id)
        return winner.id


def winner_order(instance: Instance) -> tuple[bool, datetime, str]:
    """The one rule used everywhere two instances of a generation compete: the earliest
    created wins, then the smallest id. Unknown creation times sort last."""
    at = instance.created_at or datetime.max.replace(tzinfo=UTC)
    return (instance.created_at is None, at, instance.id)


def verification_problem(inst: Instance, spec: LaunchSpec) -> str | None:
    """Why an instance a create produced must not be kept, or None."""
    if spec.market == "interruptible" and inst.interruptible is False:
        return "was rented on-demand, not interruptible"
    if spec.market == "on_demand" and inst.interruptible is True:
        return "was rented interruptible, not on-demand"
    if inst.price_per_hour is not None and inst.price_per_hour > spec.max_price_per_hour + 1e-6:
        return f"costs ${inst.price_per_hour:g}/h > cap ${spec.max_price_per_hour:g}/h"
    if inst.state in (InstanceState.STOPPED, InstanceState.TERMINATED):
        why = f": {inst.detail}" if inst.detail else ""
        return f"was created {inst.state.value}{why}"
    return None


class WithTrainerControl(ABC):
    """A provider that can reach into its instances: restart the trainer in place, diagnose."""

    @property
    def can_restart(self) -> bool:
        return True

    @abstractmethod
    def restart_trainer(self, instance_id: str, host_keys: Sequence[str] = ()) -> None:
        """`host_keys`: the SSH host key fingerprints the pod published (the only ones
        trusted)."""

    @abstractmethod
    def diagnose(self, instance_id: str, host_keys: Sequence[str] = ()) -> dict[str, str]: ...


def can_restart(provider: object) -> bool:
    return isinstance(provider, WithTrainerControl) and provider.can_restart


_REST = re.compile(r"^(?P<run>[a-z0-9][a-z0-9-]*)-g(?P<gen>\d+)$")
FLEET_ID = re.compile(r"^[a-z0-9]{1,16}$")


def instance_name(run: str, generation: int, fleet: str = "") -> str:
    """`respawn-<fleet>-<run>-g<N>`: the fleet id (no dashes) keeps two fleets sharing one
    cloud account apart. Without a fleet id (a bare adapter in a test): `respawn-<run>-g<N>`."""
    return f"respawn-{fleet}-{run}-g{generation}" if fleet else f"respawn-{run}-g{generation}"


def parse_instance_name(name: str, fleet: str = "") -> tuple[str, int] | None:
    """(run, generation) for a name this fleet gave, else None. Matching is exact: another
    fleet's `respawn-<other>-<run>-g7` is not ours, and run `a` never claims `respawn-a-b-g1`,
    which belongs to run `a-b`."""
    stem = f"respawn-{fleet}-" if fleet else "respawn-"
    if not (name or "").startswith(stem):
        return None
    m = _REST.match(name[len(stem) :])
    return (m.group("run"), int(m.group("gen"))) if m else None


class Secrets:
    """The controller's environment as adapters may see it: a named variable, or a clear
    error naming it; and the SSH access built from the configured key, if any."""

    def __init__(self, environ: Mapping[str, str], ssh_key_env: str | None = None) -> None:
        self._environ = environ
        self.ssh_key_env = ssh_key_env

    def require(self, name: str, what: str) -> str:
        value = self._environ.get(name)
        if not value:
            raise InvalidCredentialsError(f"{what}: environment variable {name} is not set")
        return value

    def remote(self) -> Any:
        if self.ssh_key_env is None:
            return None
        from respawn.provisioning.remote import Remote, load_key  # paramiko: only when used

        return Remote(load_key(self.require(self.ssh_key_env, "ssh")))
