"""Vast.ai through the `vastai` package: interruptible (bid) and on-demand instances.

- Offers come from `POST /api/v0/bundles/` (`type: bid` or `on-demand`). A spot bid is the
  offer's minimum plus a margin; Vast bills disk on top of it (`dph_total` = bid + storage
  cost x disk / 720 h), so ranking, the cap and the bid all include the disk.
- A create without a bid price silently rents on-demand (vast-cli PR 403), and Vast answers a
  too-low or pending bid with an error that still created a stopped contract (dstack PR
  4036): any contract id in a reply is destroyed, and after every create the instance is read
  back and destroyed unless it is in the market, at the price, and not stopped.
- A create gets the SDK's own wait (120 s): Vast can take longer than a read to place a
  contract, and only past that wait is the instance looked up by its name (adopted).
- Instances are matched by label `respawn-<fleet>-<run>-g<N>`, exactly. Every state that still bills
  (loading, created, running, frozen, exited, outbid-paused) is listed; `frozen` (paused with
  its memory kept, GPU charges apply) counts as live, like a running one.
- Raw pages and rows are read without the SDK's post-processing, which crashes on a row whose
  `start_date` is null; each page of a listing is retried on its own.
- Calls are paced to Vast's documented per-endpoint minimum intervals (search: 10/min), and
  the SDK's own retry loop is turned off (retry=1): `provisioning.calls` retries with typed
  errors and a bounded budget instead. A 429 without Retry-After (Vast sends none) waits the
  endpoint's interval; a create refused by the limiter was not handled, so it is sent again
  after its interval. A spent daily search quota is never retried: Vast is out for the rest
  of the tick (one provider object lives one tick).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from tenacity import retry, retry_if_exception_type, stop_after_attempt

from respawn.contract.pod import ENV_NAME
from respawn.provisioning import calls, fields
from respawn.provisioning.base import (
    Instance,
    InstanceState,
    InvalidCredentialsError,
    LaunchRefusedError,
    LaunchSpec,
    Market,
    MarketChoice,
    NoCapacityError,
    NotFoundError,
    Offer,
    Provider,
    ProviderError,
    QuotaExceededError,
    RateLimitedError,
    Resources,
    Secrets,
    markets_of,
    parse_instance_name,
)
from respawn.provisioning.calls import TIMEOUT_SECONDS, call, once, translate
from respawn.provisioning.offers import VRAM_TOLERANCE, bid_for, provider_gpu_names, select
from respawn.provisioning.shell import ShellAccess

ONSTART = "bash /opt/respawn/onstart.sh"
ENV_VALUE_MAX = 256  # Vast's create endpoint: `env max_length 256` (x-input-validation)
HOURS_PER_MONTH = 720  # storage_cost is $/GB/month; Vast bills it per hour over 720 h

# vastai's own wait for a response (`VastClient(timeout=)`, vastai/api/client.py:
# "conservative enough for slow operations like ... instance creation").
CREATE_TIMEOUT_SECONDS = 120.0
# Vast enforces a minimum interval per endpoint and identity (x-rate-limit in its API
# reference: bundles 10/min, create 4.5 s, show 2 s, destroy 3 s, v1 instances 1 s; identity
# is key + client IP, so other processes share it). Also how long a 429 waits.
LIMIT_SECONDS: dict[str, float] = {
    "search": 6.0,
    "create": 4.5,
    "show": 2.0,
    "destroy": 3.0,
    "list": 1.0,
}
PACE_SECONDS: dict[str, float] = dict(LIMIT_SECONDS)
_sleep = time.sleep
_clock = time.monotonic

# `created` is the state an instance stays in when its container never starts; these texts
# in `status_msg` mean it never will (dstack treats the first as a provisioning failure).
_START_FAILED = (
    "oci runtime create failed",
    "error response from daemon",
    "pull access denied",
    "manifest unknown",
    "no such image",
)


class _Pacer:
    """Spaces calls to one endpoint by its minimum interval, across every provider object of
    the process (the limit is per identity and IP, not per object)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}

    def wait(self, route: str) -> None:
        interval = PACE_SECONDS.get(route, 0.0)
        if interval <= 0:
            return
        with self._lock:  # reserve a slot, then sleep outside the lock
            now = _clock()
            at = max(now, self._next.get(route, now))
            self._next[route] = at + interval
        if at > now:
            if at - now >= 1.0:
                calls.log.info(
                    "vast: waiting %.0f s before the next %s (Vast allows one per %.0f s)",
                    at - now,
                    route,
                    interval,
                )
            _sleep(at - now)


PACER = _Pacer()


def _contract_in(doc: object) -> str | None:
    if isinstance(doc, dict) and doc.get("new_contract"):
        return str(doc["new_contract"])
    return None


def vast_state(row: dict[str, Any]) -> InstanceState:
    actual = (row.get("actual_status") or "").lower()
    intended = (row.get("intended_status") or "running").lower()
    msg = str(row.get("status_msg") or "").lower()
    if actual == "running" and intended == "running":
        return InstanceState.RUNNING
    if actual == "frozen" or (intended == "frozen" and actual == "running"):
        # Paused with its memory kept, GPU charges apply (Vast's `actual_status` table): it
        # bills like a running instance, so the budget and the duplicate rules count it as
        # live; its paused pod stops beating and is judged by the heartbeat like any other.
        return InstanceState.PENDING
    if actual in ("", "created") and any(s in msg for s in _START_FAILED):
        return InstanceState.STOPPED  # the container will never start: fail now, not at grace
    if intended == "running" and actual in (
        "",
        "loading",
        "created",
        "scheduling",
        "pulling",
        "rebooting",  # a restart in progress: transient, not dead
    ):
        return InstanceState.PENDING
    # exited, stopped, offline, outbid-paused: may resume by itself and may still bill storage
    return InstanceState.STOPPED


def disk_cost_per_hour(row: dict[str, Any], disk_gb: float) -> float:
    """What the disk adds to an offer's hourly price (`dph_total` includes it)."""
    cost = row.get("storage_cost")
    if isinstance(cost, int | float | str) and cost not in ("", None):
        try:
            return float(cost) * disk_gb / HOURS_PER_MONTH
        except ValueError:
            pass
    total = row.get("storage_total_cost")
    return float(total) if isinstance(total, int | float) else 0.0


def _number(value: Any) -> float | None:
    """A number from a reply field that may be a number, a numeric string or junk."""
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _floor4(x: float) -> float:
    return math.floor(x * 1e4 + 1e-9) / 1e4


# The fields of Vast's replies the adapter reads, and their documented types.
OFFER_FIELDS: fields.Spec = {
    "id": (int,),
    "gpu_name": fields.STR,
    "num_gpus": (int,),
    "gpu_ram": fields.NUMBER,
    "min_bid": fields.NUMBER + fields.NULL,
    "dph_total": fields.NUMBER,
    "storage_cost": fields.NUMBER + fields.NULL,
    "disk_space": fields.NUMBER,
}
INSTANCE_FIELDS: fields.Spec = {
    "id": (int,),
    "label": fields.STR + fields.NULL,
    "actual_status": fields.STR + fields.NULL,
    "intended_status": fields.STR + fields.NULL,
    "status_msg": fields.STR + fields.NULL,
    "start_date": fields.NUMBER + fields.NULL,
    "dph_total": fields.NUMBER + fields.NULL,
    "is_bid": fields.BOOL,
    "ssh_host": fields.STR + fields.NULL,
    "ssh_port": fields.NUMBER + fields.STR + fields.NULL,
}
PAGE_FIELDS: fields.Spec = {"instances": fields.LIST, "next_token": fields.STR + fields.NULL}


class VastProvider(ShellAccess, Provider):
    name = "vast"

    def __init__(
        self,
        api_key: str,
        key_env: str = "VAST_API_KEY",
        server_url: str | None = None,
        bid_margin: float = 0.1,
        remote: Any = None,
        markets: tuple[Market, ...] = ("interruptible", "on_demand"),
        pace: bool = True,
    ) -> None:
        from vastai import VastAI  # heavy (~0.65 s): only when Vast is used

        self.sdk = VastAI(api_key=api_key, server_url=server_url, retry=1, raw=True, quiet=True)
        self.sdk.client.timeout = TIMEOUT_SECONDS
        self.create_timeout = CREATE_TIMEOUT_SECONDS
        self._quota_spent: QuotaExceededError | None = None  # this tick's answer, kept
        self.key_env = key_env
        self.bid_margin = bid_margin
        self.remote = remote
        self.markets = markets
        self.pace = pace

    def _call(self, route: str, fn: Any, what: str) -> Any:
        return call(self._limited(route, fn, f"vast: {what}"), f"vast: {what}", self.key_env)

    def _limited(self, route: str, fn: Any, what: str) -> Any:
        """`fn` paced, with a 429 that names no Retry-After waiting the endpoint's interval."""

        def attempt() -> Any:
            if self.pace:
                PACER.wait(route)
            try:
                return fn()
            except Exception as e:
                err = translate(e, what, self.key_env)
                if isinstance(err, RateLimitedError) and err.retry_after is None:
                    err.retry_after = LIMIT_SECONDS.get(route)
                raise err from e

        return attempt

    def _search(self, what: str, **kwargs: Any) -> Any:
        if self._quota_spent is not None:
            raise QuotaExceededError(str(self._quota_spent))
        try:
            return self._call("search", lambda: self.sdk.search_offers(**kwargs), what)
        except QuotaExceededError as e:
            self._quota_spent = QuotaExceededError(
                f"{e}; no more Vast searches this tick (other providers are still tried)"
            )
            raise self._quota_spent from e

    # -- offers --------------------------------------------------------------------------

    def offers(self, resources: Resources) -> list[Offer]:
        out: list[Offer] = []
        for market in markets_of(resources.market):
            if market in self.markets:
                out += self._offers(resources, market)
        return out

    def _offers(self, resources: Resources, market: Market) -> list[Offer]:
        query: dict[str, Any] = {
            "num_gpus": {"eq": resources.gpu_count},
            "disk_space": {"gte": resources.disk_gb},
        }
        if resources.min_vram_gb:
            # gpu_ram is MB per GPU and a little under nominal (H100 80GB = 81559).
            query["gpu_ram"] = {"gte": round(resources.min_vram_gb * 1024 * VRAM_TOLERANCE)}
        if resources.gpus:
            query["gpu_name"] = {"in": provider_gpu_names(resources.gpus, self.name)}
        kind = "bid" if market == "interruptible" else "on-demand"
        rows = self._search(
            f"search {market} offers",
            query=query,
            type=kind,
            order="dph_total",
            limit=64,
            storage=resources.disk_gb,
        )
        out = []
        for row in rows:
            try:
                offer = self._offer(row, resources, market)
            except (TypeError, ValueError):
                continue  # one malformed row must not hide the others
            if offer is not None:
                out.append(offer)
        return select(out, resources)

    def _offer(self, row: Any, resources: Resources, market: Market) -> Offer | None:
        if not isinstance(row, dict) or row.get("id") is None:
            return None
        disk = disk_cost_per_hour(row, resources.disk_gb)
        bid: float | None = None
        if market == "interruptible":
            if row.get("min_bid") is None:
                return None  # not rentable as interruptible
            cap = _floor4(resources.max_price_per_hour - disk)
            bid = bid_for(float(row["min_bid"]), self.bid_margin, cap)
            if bid is None:
                return None
            price = round(bid + disk, 6)
        elif row.get("dph_total") is not None:
            price = float(row["dph_total"])
        else:
            return None
        return Offer(
            provider=self.name,
            id=str(row["id"]),
            gpu_name=str(row.get("gpu_name", "?")),
            gpu_count=int(row.get("num_gpus") or 0),
            vram_gb=float(row.get("gpu_ram") or 0) / 1024,
            price_per_hour=price,
            market=market,
            bid=bid,
            min_bid=float(row["min_bid"]) if row.get("min_bid") is not None else None,
            reliability=_number(row.get("reliability2", row.get("reliability"))),
            inet_down_mbps=_number(row.get("inet_down")),
            disk_gb=_number(row.get("disk_space")),
            cuda=_number(row.get("cuda_max_good")),
            location=str(row["geolocation"]) if row.get("geolocation") else None,
        )

    # -- launch (the safety rules are in Provider.launch) -------------------------------

    def _create(self, offer: Offer, spec: LaunchSpec) -> str:
        too_long = sorted(k for k, v in spec.env.items() if len(v) > ENV_VALUE_MAX)
        if too_long:
            err = ProviderError(
                f"vast: environment variable(s) {', '.join(too_long)} are longer than Vast's "
                f"{ENV_VALUE_MAX}-character limit; keep large values out of the pod environment"
            )
            err.retryable = False
            raise err
        if offer.market == "interruptible" and offer.bid is None:
            raise NoCapacityError(f"vast: offer {offer.id} has no bid")  # never a blind on-demand
        login = _login(spec)
        from vastai.api import instances as vast_instances

        # The SDK's create, on a copy of its client that waits as long as the SDK would.
        client = copy.copy(self.sdk.client)
        client.timeout = self.create_timeout

        def create() -> Any:
            return vast_instances.create_instance(
                client,
                int(offer.id),
                image=spec.image,
                disk=spec.disk_gb,
                env=dict(spec.env),
                price=offer.bid if offer.market == "interruptible" else None,
                label=spec.name,
                onstart_cmd=ONSTART,
                login=login,
                ssh=True,
                direct=True,
            )

        # Retried only when the rate limiter refused it (it was not handled): a create whose
        # answer was lost may still have made an instance, and is adopted by name instead.
        what = f"vast: create on offer {offer.id}"
        send_again = retry(
            retry=retry_if_exception_type(RateLimitedError),
            stop=stop_after_attempt(calls.ATTEMPTS),
            wait=lambda state: _create_wait(state.outcome),
            sleep=lambda seconds: calls.sleep(seconds),
            before_sleep=calls.say_wait(what),
            reraise=True,
        )(self._limited("create", create, what))
        try:
            resp = once(send_again, what, self.key_env)
        except ProviderError as e:
            contract = _contract_in(getattr(e, "body", None))
            if contract is not None:
                raise LaunchRefusedError(
                    f"vast: offer {offer.id} refused, contract {contract} made anyway: {e}",
                    contract,
                ) from e
            if isinstance(e, NotFoundError | NoCapacityError):
                raise NoCapacityError(f"vast: offer {offer.id} is gone ({e})") from e
            if getattr(e, "status", None) == 403:
                # The key already worked for the search: a 403 here refuses this offer
                # (host or verification restrictions), not the account.
                raise NoCapacityError(f"vast: offer {offer.id} refused (HTTP 403)") from e
            # A 4xx other than auth: the offer was taken or cannot be rented: next offer.
            if not e.retryable and not isinstance(e, InvalidCredentialsError):
                raise NoCapacityError(f"vast: offer {offer.id} refused: {e}") from e
            raise
        contract = _contract_in(resp)
        if not isinstance(resp, dict) or not resp.get("success") or contract is None:
            # A too-low or pending bid: Vast answers an error that still created a stopped
            # contract, billing storage (dstack PR 4036). It is destroyed by launch(). Only
            # the human fields are quoted: the reply also holds the instance's API key.
            said = " ".join(
                str(resp[k]) for k in ("error", "msg") if isinstance(resp, dict) and resp.get(k)
            )
            raise LaunchRefusedError(
                f"vast: offer {offer.id} refused: {said or 'no contract'}", contract
            )
        return contract

    def _show(self, instance_id: str) -> dict[str, Any] | None:
        # The raw row: the SDK's show_instance crashes on `start_date: null`.
        def show() -> Any:
            r = self.sdk.client.get(f"/instances/{int(instance_id)}/", query_args={"owner": "me"})
            r.raise_for_status()
            return r.json()["instances"]

        row = self._call("show", show, "read back")
        return row if isinstance(row, dict) else None

    def _read_back(self, instance_id: str, spec: LaunchSpec) -> Instance | None:
        try:
            row = self._show(instance_id)
        except NotFoundError:
            return None
        if not row:
            return None
        if not str(row.get("label") or "").strip():
            row = {**row, "label": spec.name}
        return self._instance(row)

    # -- listing / termination -----------------------------------------------------------

    def _instance(self, row: dict[str, Any]) -> Instance:
        label = str(row.get("label") or "").strip()
        parsed = parse_instance_name(label, self.fleet)
        assert parsed is not None
        start = row.get("start_date")
        created = None
        if isinstance(start, int | float) and start > 0:
            created = datetime.fromtimestamp(float(start), UTC)
        port = row.get("ssh_port")
        return Instance(
            provider=self.name,
            id=str(row["id"]),
            name=label,
            run=parsed[0],
            generation=parsed[1],
            state=vast_state(row),
            created_at=created,
            price_per_hour=_number(row.get("dph_total")),
            ssh_host=row.get("ssh_host") or row.get("public_ipaddr"),
            ssh_port=int(port) if isinstance(port, int | str) and str(port).isdigit() else None,
            interruptible=row.get("is_bid") if isinstance(row.get("is_bid"), bool) else None,
            detail=str(row.get("status_msg") or "")[:200],
        )

    def _destroy(self, instance_id: str) -> None:
        self._call("destroy", lambda: self.sdk.destroy_instance(int(instance_id)), "destroy")

    def list_all(self) -> list[Instance]:
        params: dict[str, Any] = {
            "select_filters": {},
            "order_by": [{"col": "id", "dir": "asc"}],
            "limit": 25,
        }
        out: list[Instance] = []
        for _ in range(10_000):  # a cursor that never ends is a server bug, not a fleet
            # Each page is retried on its own: a retry never restarts from the first page.
            page = self._call(
                "list", lambda p=dict(params): self.sdk.show_instances_v1(p), "list instances"
            )
            for row in page.get("instances") or []:
                if isinstance(row, dict) and parse_instance_name(
                    str(row.get("label") or "").strip(), self.fleet
                ):
                    out.append(self._instance(row))
            token = page.get("next_token")
            if not token:
                return out
            params["after_token"] = token
        raise ProviderError("vast: list instances: the listing never ended")

    def check_live(self) -> list[str]:
        out: list[str] = []
        for kind in ("bid", "on-demand"):
            rows = self._search(
                f"search {kind} offers",
                query={"num_gpus": {"eq": 1}},
                type=kind,
                order="dph_total",
                limit=3,
            )
            if not rows:
                out.append(f"vast: search ({kind}) returned no offer to check")
            for row in rows[:3]:
                where = f"vast {kind} offer {row.get('id') if isinstance(row, dict) else '?'}"
                out += fields.problems(where, row, OFFER_FIELDS)
        params = {"select_filters": {}, "order_by": [{"col": "id", "dir": "asc"}], "limit": 25}
        page = self._call("list", lambda: self.sdk.show_instances_v1(params), "list instances")
        out += fields.problems("vast instance page", page, PAGE_FIELDS)
        for row in (page.get("instances") or [])[:5] if isinstance(page, dict) else []:
            where = f"vast instance {row.get('id') if isinstance(row, dict) else '?'}"
            out += fields.problems(where, row, INSTANCE_FIELDS)
        return out


class VastSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key_env: str = Field("VAST_API_KEY", pattern=ENV_NAME)
    bid_margin: float = Field(0.1, ge=0, le=5, description="bid this much over the minimum")
    server_url: str | None = Field(None, description="API base URL (default: Vast's)")
    market: MarketChoice = Field(
        "interruptible_then_on_demand",
        description="markets respawn may rent on Vast; a run's `resources.market` picks among them",
    )
    pace: bool = Field(
        True,
        description="space calls by Vast's documented per-endpoint limits (search 10/min); "
        "off only for a test server",
    )


def from_settings(settings: VastSettings, secrets: Secrets) -> VastProvider:
    return VastProvider(
        secrets.require(settings.api_key_env, "vast"),
        key_env=settings.api_key_env,
        server_url=settings.server_url,
        bid_margin=settings.bid_margin,
        remote=secrets.remote(),
        markets=markets_of(settings.market),
        pace=settings.pace,
    )


def _create_wait(outcome: Any) -> float:
    """A throttled create waits what Vast said, else its interval (a sooner one restarts it)."""
    exc = outcome.exception() if outcome is not None else None
    after = getattr(exc, "retry_after", None) or LIMIT_SECONDS["create"]
    return min(float(after), calls.MAX_WAIT_SECONDS)


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
