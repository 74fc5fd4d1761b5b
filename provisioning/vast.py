"""Vast.ai through the `vastai` package: interruptible (bid) instances only.

- Offers come from `POST /api/v0/bundles/` with `type: bid`; we bid the offer's minimum plus a
  margin, capped at the run's price cap.
- A create without a bid price silently rents on-demand (vast-cli PR 403), and Vast may create
  a bid instance already stopped when the bid is too low (dstack PR 4036): after every create
  the instance is read back and destroyed unless it is a bid instance, at our price, not stopped.
- Instances are matched by label `respawn-<run>-g<N>`, exactly. Every state that still bills
  (loading, created, running, exited, outbid-paused) is listed.
- The SDK's own retry loop is turned off (retry=1): `provisioning.calls` retries with typed
  errors and a bounded budget instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from respawn.contract.pod import ENV_NAME
from respawn.provisioning.base import (
    Instance,
    InstanceState,
    InvalidCredentialsError,
    LaunchRefusedError,
    LaunchSpec,
    NoCapacityError,
    NotFoundError,
    Offer,
    Provider,
    ProviderError,
    Resources,
    Secrets,
    parse_instance_name,
)
from respawn.provisioning.calls import TIMEOUT_SECONDS, call, once
from respawn.provisioning.offers import bid_for, select
from respawn.provisioning.shell import ShellAccess

ONSTART = "bash /opt/respawn/onstart.sh"


def _contract_in(doc: object) -> str | None:
    if isinstance(doc, dict) and doc.get("new_contract"):
        return str(doc["new_contract"])
    return None


def vast_state(row: dict[str, Any]) -> InstanceState:
    actual = (row.get("actual_status") or "").lower()
    intended = (row.get("intended_status") or "running").lower()
    if actual == "running" and intended == "running":
        return InstanceState.RUNNING
    if intended == "running" and actual in ("", "loading", "created", "scheduling", "pulling"):
        return InstanceState.PENDING
    # exited, stopped, offline, outbid-paused: may resume by itself and may still bill storage
    return InstanceState.STOPPED


class VastProvider(ShellAccess, Provider):
    name = "vast"

    def __init__(
        self,
        api_key: str,
        key_env: str = "VAST_API_KEY",
        server_url: str | None = None,
        bid_margin: float = 0.1,
        remote: Any = None,
    ) -> None:
        from vastai import VastAI  # heavy (~0.65 s): only when Vast is used

        self.sdk = VastAI(api_key=api_key, server_url=server_url, retry=1, raw=True, quiet=True)
        self.sdk.client.timeout = TIMEOUT_SECONDS
        self.key_env = key_env
        self.bid_margin = bid_margin
        self.remote = remote

    def _call(self, fn: Any, what: str) -> Any:
        return call(fn, f"vast: {what}", self.key_env)

    # -- offers --------------------------------------------------------------------------

    def offers(self, resources: Resources) -> list[Offer]:
        query: dict[str, Any] = {
            "num_gpus": {"eq": resources.gpu_count},
            "disk_space": {"gte": resources.disk_gb},
        }
        if resources.min_vram_gb:
            query["gpu_ram"] = {"gte": resources.min_vram_gb * 1024}
        if resources.gpus:
            query["gpu_name"] = {"in": [g.replace("_", " ") for g in resources.gpus]}
        rows = self._call(
            lambda: self.sdk.search_offers(
                query=query, type="bid", order="dph_total", limit=64, storage=resources.disk_gb
            ),
            "search offers",
        )
        out = []
        for row in rows:
            if row.get("min_bid") is None or row.get("id") is None:
                continue  # not rentable as interruptible
            bid = bid_for(float(row["min_bid"]), self.bid_margin, resources.max_price_per_hour)
            if bid is None:
                continue
            out.append(
                Offer(
                    provider=self.name,
                    id=str(row["id"]),
                    gpu_name=str(row.get("gpu_name", "?")),
                    gpu_count=int(row.get("num_gpus", 0)),
                    vram_gb=float(row.get("gpu_ram", 0)) / 1024,
                    price_per_hour=bid,
                    min_bid=float(row["min_bid"]),
                    reliability=row.get("reliability2", row.get("reliability")),
                    inet_down_mbps=row.get("inet_down"),
                    disk_gb=row.get("disk_space"),
                    cuda=row.get("cuda_max_good"),
                    location=row.get("geolocation"),
                )
            )
        return select(out, resources)

    # -- launch (the safety rules are in Provider.launch) -------------------------------

    def _create(self, offer: Offer, spec: LaunchSpec) -> str:
        login = _login(spec)

        def create() -> Any:
            return self.sdk.create_instance(
                id=int(offer.id),
                image=spec.image,
                disk=spec.disk_gb,
                env=dict(spec.env),
                price=offer.price_per_hour,
                label=spec.name,
                onstart_cmd=ONSTART,
                login=login,
                ssh=True,
                direct=True,
            )

        # Not retried: a create whose answer was lost may still have made an instance.
        try:
            resp = once(create, f"vast: create on offer {offer.id}", self.key_env)
        except ProviderError as e:
            contract = _contract_in(getattr(e, "body", None))
            if contract is not None:
                raise LaunchRefusedError(
                    f"vast: offer {offer.id} refused, contract {contract} made anyway",
                    contract,
                ) from e
            if isinstance(e, NotFoundError | NoCapacityError):
                raise NoCapacityError(f"vast: offer {offer.id} is gone ({e})") from e
            # A 4xx other than auth: the offer was taken or cannot be rented: next offer.
            if not e.retryable and not isinstance(e, InvalidCredentialsError):
                raise NoCapacityError(f"vast: offer {offer.id} refused: {e}") from e
            raise
        contract = _contract_in(resp)
        if not isinstance(resp, dict) or not resp.get("success") or contract is None:
            # A too-low or pending bid: Vast answers an error that still created a stopped
            # contract, billing storage (dstack PR 4036). It is destroyed by launch().
            msg = resp.get("msg") or resp.get("error") if isinstance(resp, dict) else None
            raise LaunchRefusedError(
                f"vast: offer {offer.id} refused: {msg or 'no contract'}", contract
            )
        return contract

    def _read_back(self, instance_id: str, spec: LaunchSpec) -> Instance | None:
        try:
            row = self._call(lambda: self.sdk.show_instance(int(instance_id)), "read back")
        except NotFoundError:
            return None
        if not row:
            return None
        if not row.get("label"):
            row = {**row, "label": spec.name}
        return self._instance(row)

    # -- listing / termination -----------------------------------------------------------

    def _instance(self, row: dict[str, Any]) -> Instance:
        parsed = parse_instance_name(str(row.get("label") or ""))
        assert parsed is not None
        start = row.get("start_date")
        return Instance(
            provider=self.name,
            id=str(row["id"]),
            name=str(row["label"]),
            run=parsed[0],
            generation=parsed[1],
            state=vast_state(row),
            created_at=datetime.fromtimestamp(float(start), UTC) if start else None,
            price_per_hour=row.get("dph_total"),
            ssh_host=row.get("ssh_host") or row.get("public_ipaddr"),
            ssh_port=int(row["ssh_port"]) if row.get("ssh_port") else None,
            interruptible=row.get("is_bid") if isinstance(row.get("is_bid"), bool) else None,
            detail=str(row.get("status_msg") or "")[:200],
        )

    def _destroy(self, instance_id: str) -> None:
        self._call(lambda: self.sdk.destroy_instance(int(instance_id)), "destroy")

    def list_all(self) -> list[Instance]:
        rows = self._call(self.sdk.show_instances, "list instances")
        return [self._instance(r) for r in rows if parse_instance_name(str(r.get("label") or ""))]


class VastSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key_env: str = Field("VAST_API_KEY", pattern=ENV_NAME)
    bid_margin: float = Field(0.1, ge=0, le=5, description="bid this much over the minimum")
    server_url: str | None = Field(None, description="API base URL (default: Vast's)")


def from_settings(settings: VastSettings, secrets: Secrets) -> VastProvider:
    return VastProvider(
        secrets.require(settings.api_key_env, "vast"),
        key_env=settings.api_key_env,
        server_url=settings.server_url,
        bid_margin=settings.bid_margin,
        remote=secrets.remote(),
    )


def _login(spec: LaunchSpec) -> str | None:
    """Vast's `--login` for a private image: `-u USER -p TOKEN REGISTRY`."""
    if not spec.registry_auth:
        return None
    user, sep, token = spec.registry_auth.partition(":")
    if not sep or not user or not token:
        err = ProviderError("vast: pod.registry_auth_env must hold USER:TOKEN")
        err.retryable = False  # a config mistake: the next offer or tick would fail the same
        raise err
    return f"-u {user} -p {token} {spec.registry_host()}"
