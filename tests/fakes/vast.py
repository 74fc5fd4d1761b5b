"""A stateful fake of the Vast.ai REST API that answers in the documented shapes.

POST /api/v0/bundles/            search offers (body: filter dict)   → {"offers": [...]}
PUT  /api/v0/asks/{offer}/       create (body: price, label, env...) → {"success", "new_contract"}
GET  /api/v1/instances/          list, paged by limit/after_token    → {"instances", "next_token"}
GET  /api/v0/instances/{id}/     one instance (owner=me)             → {"instances": row|null}
DELETE /api/v0/instances/{id}/   destroy                             → {"success": true}
GET  /api/v0/users/current       the account (the CLI asks first)
GET  /api/v0/gpu_names/unique/   GPU names, unauthenticated (the CLI asks on import)

Shapes and rules are Vast's published API reference (vast-ai/docs `api-reference/openapi`)
and the vastai 1.9.1 SDK (see the research notes quoted in each place):

- errors are `{"success": false, "error": <code>, "msg": <text>}`;
- search filters accept every documented operator (eq neq gt gte lt lte in notin) with
  values as JSON numbers or as the strings the CLI's query parser sends ("1", "0.5");
- `dph_total` is `dph_base` (or the bid) plus storage: `storage_cost` $/GB/month x disk / 720;
- a bid below the minimum creates the contract stopped and answers an error that carries
  `new_contract` and `instance_api_key` (dstack PR 4036), with status 200 or a 4xx;
- a create without a price rents on-demand silently;
- create validation: every env value at most 256 characters, price 0.001..128, disk >= 8;
- instance pages are at most 25 rows, with opaque `next_token` cursors (a bad one is a 400);
- new instances load for a few listings before running (or forever, with `stuck_loading`);
  `outbid()` pauses an instance that `resume()` brings back, as Vast does on its own;
  `freeze()` puts one in the documented `frozen` state (paused with its memory kept; GPU
  charges apply: docs.vast.ai, `show instance`'s `actual_status` table);
- a create can take `create_seconds` before the contract exists and the answer comes, while
  every other call is answered meanwhile;
- `throttle()` turns on Vast's documented rate limits (docs.vast.ai, "Rate Limits and
  Errors"): a minimum interval per endpoint and identity (search 10/min, create 4.5 s, show
  2 s, destroy 3 s, list 1 s, the x-rate-limit of each endpoint), refused with HTTP 429,
  "API requests too frequent: endpoint threshold=..." (in the documented JSON error shape
  with only `msg`; Vast often sends it as plain text) and no Retry-After header ("the API
  does not currently set standard rate-limit headers"); a create
  sent too soon restarts its own interval (the penalty); `search_quota` searches a day, then
  429 `search_quota_exceeded` until UTC midnight. Time is `clock()`, injected by tests.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from tests.fakes.http import FakeAPI, Reply

HOURS_PER_MONTH = 720
# Minimum seconds between two calls to one endpoint by one identity (x-rate-limit in Vast's
# API reference; search is 10 per minute).
RATE_LIMITS: dict[str, float] = {
    "search": 6.0,
    "create": 4.5,
    "show": 2.0,
    "destroy": 3.0,
    "list": 1.0,
}

_OFFER_DEFAULTS = {
    "verified": True,
    "external": False,
    "rentable": True,
    "rented": False,
    "is_bid": False,
    "hosting_type": 0,
    "cpu_cores": None,  # gpuhunt: "can be None"
    "start_date": None,
}

_LISTED = [
    {
        "id": 101,
        "gpu_name": "RTX 4090",
        "num_gpus": 1,
        "gpu_ram": 24564,
        "min_bid": 0.20,
        "dph_base": 0.40,
        "storage_cost": 0.15,
        "reliability2": 0.995,
        "inet_down": 900.0,
        "disk_space": 300.0,
        "cuda_max_good": 12.8,
        "geolocation": "Norway, NO",
    },
    {
        "id": 102,
        "gpu_name": "RTX 4090",
        "num_gpus": 1,
        "gpu_ram": 24564,
        "min_bid": 0.15,
        "dph_base": 0.35,
        "storage_cost": 0.15,
        "reliability2": 0.97,
        "inet_down": 400.0,
        "disk_space": 300.0,
        "cuda_max_good": 12.4,
        "geolocation": "Texas, US",
    },
    {
        "id": 103,
        "gpu_name": "H100 SXM",
        "num_gpus": 1,
        "gpu_ram": 81559,
        "min_bid": 1.10,
        "dph_base": 2.30,
        "storage_cost": 0.30,
        "reliability2": 0.999,
        "inet_down": 5000.0,
        "disk_space": 900.0,
        "cuda_max_good": 12.8,
        "geolocation": "Quebec, CA",
    },
]
# Whole rows as a search returns them (before `dph_total`, which depends on the disk).
DEFAULT_OFFERS = [{**_OFFER_DEFAULTS, **o} for o in _LISTED]


def _num(v: Any) -> Any:
    """The CLI sends numbers as strings ("1", "0.5"): compare them as numbers."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _matches(value: Any, op: str, want: Any) -> bool:
    value = _num(value)
    if op in ("in", "notin"):
        inside = any(_num(w) == value for w in want)
        return inside if op == "in" else not inside
    want = _num(want)
    if op == "eq":
        return value == want
    if op == "neq":
        return value != want
    if value is None or want is None:
        return False
    try:
        return {"gt": value > want, "gte": value >= want, "lt": value < want, "lte": value <= want}[
            op
        ]
    except TypeError:
        return False


def error(status: int, code: str, msg: str, **extra: Any) -> Reply:
    return Reply(status, {"success": False, "error": code, "msg": msg, **extra})


class FakeVast(FakeAPI):
    def __init__(self, api_key: str = "vast-test-key") -> None:
        super().__init__(api_key)
        self.public = {"gpu_names"}
        self.unauthorized = json.dumps(
            {"success": False, "error": "auth_error", "msg": "Invalid user key"}
        ).encode()
        self.offers: dict[int, dict[str, Any]] = {o["id"]: dict(o) for o in DEFAULT_OFFERS}
        self.instances: dict[int, dict[str, Any]] = {}
        self.ids = itertools.count(9001)
        self.loading_polls = 1
        self.stuck_loading = False
        self.ignore_price = False  # the bug a create without a bid hits: on-demand, silently
        self.stopped_reply_status = 200  # how a too-low bid is answered: 200 or a 4xx
        self.min_bid_at_create: dict[int, float] = {}  # the market moved since the search
        self.refuse_403: set[int] = set()  # offers whose create answers 403 (host refuses)
        self.overcharge: dict[int, float] = {}  # $/h an instance bills above its offer
        self.created_status_msg = ""  # e.g. an image that cannot start: stays `created`
        self.search_quota_spent = False
        self.search_quota: int | None = None  # searches left today; None: no daily quota
        self.create_seconds = 0.0  # how long a create takes before the contract exists
        # Runs while a create is being answered (what else happens in the world meanwhile).
        self.during_create: Callable[[], None] | None = None
        self.limits: dict[str, float] = {}  # per-route minimum interval; see throttle()
        self.retry_after_header = False  # Vast sends none today; a test may ask for one
        self.clock: Callable[[], float] = time.monotonic
        self._last: dict[str, float] = {}
        self.ssh_port = 22
        self.bodies: list[dict[str, Any]] = []
        self.searches: list[dict[str, Any]] = []
        self.api_keys: list[str] = []  # every instance_api_key handed out
        self._cursors: dict[str, int] = {}
        self.fail_next_page = 0  # answer this many later pages of a listing with a 503
        self.first_pages = 0

    def route(self, method: str, path: str, body: Any) -> str:
        if path.startswith("/api/v0/bundles"):
            return "search"
        if path.startswith("/api/v0/asks/"):
            return "create"
        if path.startswith("/api/v1/instances"):
            return "list"
        if path.startswith("/api/v0/users/current"):
            return "user"
        if path.startswith("/api/v0/gpu_names"):
            return "gpu_names"
        if method == "DELETE":
            return "destroy"
        return "show"

    # -- helpers for tests ---------------------------------------------------------------

    def add_instance(self, label: str, actual: str = "running", intended: str = "running") -> int:
        iid = next(self.ids)
        self.instances[iid] = self._row(iid, label, 0.3, True, actual, intended, {}, 100)
        return iid

    def outbid(self, iid: int) -> None:
        self.instances[iid].update(actual_status="exited", status_msg="outbid: paused")

    def freeze(self, iid: int) -> None:
        self.instances[iid].update(actual_status="frozen", intended_status="frozen")

    def throttle(self, clock: Callable[[], float] | None = None) -> None:
        """Enforce Vast's documented per-endpoint intervals from now on."""
        self.limits = dict(RATE_LIMITS)
        if clock is not None:
            self.clock = clock

    def called(self, route: str) -> None:
        """A call by another client with the same key and IP (another tick, the CLI) just
        used this endpoint's slot."""
        self._last[route] = self.clock()

    def resume(self, iid: int) -> None:
        self.instances[iid].update(actual_status="running", status_msg="")

    def labels(self) -> list[str]:
        return sorted(r["label"] for r in self.instances.values())

    def _row(
        self,
        iid: int,
        label: str,
        price: float,
        is_bid: bool,
        actual: str | None,
        intended: str,
        env: dict[str, str],
        disk: float,
        storage_cost: float = 0.15,
    ) -> dict[str, Any]:
        storage = storage_cost * disk / HOURS_PER_MONTH
        return {
            "id": iid,
            "label": label,
            "actual_status": actual,
            "intended_status": intended,
            "cur_state": "running" if intended == "running" else "stopped",
            "next_state": intended,
            "status_msg": None,
            "start_date": time.time(),
            "extra_env": [[k, v] for k, v in env.items()],
            "ssh_host": "127.0.0.1",
            "ssh_port": self.ssh_port,
            "public_ipaddr": "127.0.0.1",
            "dph_base": price,
            "storage_cost": storage_cost,
            "storage_total_cost": storage,
            "dph_total": price + storage,
            "is_bid": is_bid,
            "min_bid": None,
            "uptime_mins": None,
            "polls": 0,
            "ports": {},
        }

    @staticmethod
    def _public(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if k != "polls" and not k.startswith("_")}

    # -- routes --------------------------------------------------------------------------

    def _throttled(self, route: str) -> Reply | None:
        interval = self.limits.get(route)
        if not interval:
            return None
        now, last = self.clock(), self._last.get(route)
        if last is not None and now - last < interval:
            if route == "create":
                self._last[route] = now  # the penalty: too soon restarts the wait
            wait = interval - (now - last) if route != "create" else interval
            headers = {"Retry-After": f"{wait:g}"} if self.retry_after_header else {}
            said = f"API requests too frequent: endpoint threshold={interval:g}"
            return Reply(429, {"success": False, "msg": said}, headers)
        self._last[route] = now
        return None

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        route = self.route(method, path, body)
        refused = self._throttled(route)
        if refused is not None:
            return refused
        if route == "create" and self.create_seconds > 0:
            # Vast is still placing the contract; other calls are answered meanwhile.
            self.lock.release()
            try:
                time.sleep(self.create_seconds)
            finally:
                self.lock.acquire()
        if route == "gpu_names":
            return Reply(200, {"gpu_names": sorted({o["gpu_name"] for o in self.offers.values()})})
        if route == "user":
            return Reply(200, {"id": 1, "username": "me", "host_agreement_accepted": False})
        if route == "search":
            return self._search(body or {})
        if route == "create":
            return self._create(int(re.findall(r"\d+", path)[-1]), body or {})
        if route == "list":
            return self._list(query)
        iid = int(re.findall(r"\d+", path)[-1])
        if route == "destroy":
            gone = self.instances.pop(iid, None)
            if gone is None:
                return error(404, "not_found", "Instance not found")
            if gone.get("_offer"):  # the machine is free again
                self.offers[gone["_offer"]["id"]] = gone["_offer"]
            return Reply(200, {"success": True, "msg": "destroying instance"})
        row = self.instances.get(iid)
        return Reply(200, {"instances": self._public(row) if row else None})

    def _search(self, q: dict[str, Any]) -> Reply:
        if self.search_quota is not None:
            self.search_quota_spent = self.search_quota <= 0
            self.search_quota -= 1
        if self.search_quota_spent:
            return error(
                429, "search_quota_exceeded", "Daily search quota exceeded; resets at UTC midnight"
            )
        self.searches.append(q)
        kind = q.get("type", "on-demand")
        if kind not in ("on-demand", "ondemand", "bid", "reserved"):
            return error(400, "invalid_args", f"invalid type {kind!r}")
        try:
            storage = float(_num(q.get("allocated_storage", 5.0)))
        except (TypeError, ValueError):
            return error(400, "invalid_args", "allocated_storage must be a number")
        rows = []
        for o in self.offers.values():
            disk = o["storage_cost"] * storage / HOURS_PER_MONTH
            row = {
                **o,
                "dph_total": round(o["dph_base"] + disk, 6),
                "storage_total_cost": disk,
                "is_bid": kind == "bid",
            }
            if kind == "bid" and row.get("min_bid") is None:
                continue
            ok = True
            for field, cond in q.items():
                if field in ("order", "type", "limit", "allocated_storage"):
                    continue
                if not isinstance(cond, dict):
                    return error(400, "invalid_args", f"filter {field!r} must be an object")
                for op, want in cond.items():
                    if op not in ("eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"):
                        return error(400, "invalid_args", f"unknown operator {op!r} on {field}")
                    ok = ok and _matches(row.get(field), op, want)
            if ok:
                rows.append(row)
        for col, direction in reversed(q.get("order") or []):
            rows.sort(
                key=lambda r: (r.get(col) is None, r.get(col) or 0), reverse=direction == "desc"
            )
        if q.get("limit") is not None:
            rows = rows[: int(_num(q["limit"]))]
        return Reply(200, {"offers": rows})

    def _create(self, offer_id: int, body: dict[str, Any]) -> Reply:
        self.bodies.append(body)
        env = body.get("env") or {}
        for k, v in env.items():
            if len(str(v)) > 256:
                return error(
                    400,
                    "invalid_args",
                    f"env: value of {k} exceeds max_length 256",
                    ask_id=offer_id,
                )
        price = body.get("price")
        if price is not None and not 0.001 <= float(price) <= 128.0:
            return error(
                400, "invalid_price", "price must be between 0.001 and 128", ask_id=offer_id
            )
        if float(body.get("disk") or 0) < 8.0:
            return error(400, "invalid_args", "disk must be at least 8 GB", ask_id=offer_id)
        if offer_id in self.refuse_403:
            return error(403, "forbidden", "You are not allowed to rent this machine.")
        offer = self.offers.pop(offer_id, None)
        if offer is not None and offer_id in self.min_bid_at_create:
            offer = {**offer, "min_bid": self.min_bid_at_create[offer_id]}
        if offer is None:
            return error(
                404,
                "no_such_ask",
                f"error 404/3603: no_such_ask Instance type by id {offer_id} is not available.",
                ask_id=offer_id,
            )
        iid = next(self.ids)
        key = secrets.token_hex(16)
        self.api_keys.append(key)
        label = body.get("label") or ""
        disk = float(body.get("disk") or 10)
        if price is None or self.ignore_price:
            row = self._row(
                iid, label, offer["dph_base"], False, "loading", "running", env, disk,
                offer["storage_cost"],
            )  # fmt: skip
        elif float(price) < offer["min_bid"]:
            row = self._row(
                iid, label, float(price), True, "exited", "stopped", env, disk,
                offer["storage_cost"],
            )  # fmt: skip
            row["status_msg"] = "bid below minimum: created stopped"
            row["_offer"] = dict(offer)
            self.instances[iid] = row
            return Reply(
                self.stopped_reply_status,
                {
                    "success": False,
                    "error": "insufficient_bid",
                    "msg": f"Your bid of {price} is below the current minimum; "
                    "the instance was created stopped.",
                    "new_contract": iid,
                    "instance_api_key": key,
                },
            )
        else:
            row = self._row(
                iid, label, float(price), True, "loading", "running", env, disk,
                offer["storage_cost"],
            )  # fmt: skip
        row["_offer"] = dict(offer)
        row["dph_total"] += self.overcharge.get(offer_id, 0.0)
        if self.created_status_msg:
            row.update(actual_status="created", status_msg=self.created_status_msg)
        self.instances[iid] = row
        if self.during_create is not None:
            self.during_create()
        return Reply(200, {"success": True, "new_contract": iid, "instance_api_key": key})

    def _list(self, query: dict[str, str]) -> Reply:
        try:
            limit = int(json.loads(query.get("limit", "25")))
        except ValueError:
            return error(400, "invalid_args", "limit must be an integer")
        limit = 5 if limit <= 0 else min(limit, 25)
        start = 0
        if "after_token" in query:
            if query["after_token"] not in self._cursors:
                return error(400, "invalid_args", "invalid after_token")
            start = self._cursors[query["after_token"]]
            if self.fail_next_page > 0:
                self.fail_next_page -= 1
                return error(503, "server_error", "Service temporarily unavailable")
        rows = sorted(self.instances.values(), key=lambda r: r["id"])
        if start == 0:  # a listing's first page: time passes for loading instances
            self.first_pages += 1
            for row in rows:
                if row["actual_status"] == "loading":
                    row["polls"] += 1
                    if row["polls"] > self.loading_polls and not self.stuck_loading:
                        row["actual_status"] = "running"
        page = rows[start : start + limit]
        token = None
        if start + limit < len(rows):
            token = secrets.token_urlsafe(12)
            self._cursors[token] = start + limit
        return Reply(
            200,
            {
                "success": True,
                "instances": [self._public(r) for r in page],
                "next_token": token,
                "instances_found": len(page),
                "total_instances": len(rows),
            },
        )
