"""A stateful fake of the Vast.ai REST API, speaking the wire format the vastai SDK uses.

POST /api/v0/bundles/            search offers (body: filter dict)   → {"offers": [...]}
PUT  /api/v0/asks/{offer}/       create (body: price, label, env...) → {"success", "new_contract"}
GET  /api/v1/instances/          list, paged by limit/after_token    → {"instances", "next_token"}
GET  /api/v0/instances/{id}/     one instance (owner=me)             → {"instances": row|null}
DELETE /api/v0/instances/{id}/   destroy                             → {"success": true}

Behaviours of the real service worth testing against: a create without a price rents
on-demand silently; a bid below the minimum creates a stopped instance; new instances load
for a few listings before running (or forever, with `stuck_loading`); `outbid()` pauses an
instance that `resume()` brings back, as Vast does on its own.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from typing import Any

from tests.fakes.http import FakeAPI, Reply

DEFAULT_OFFERS = [
    {
        "id": 101,
        "gpu_name": "RTX 4090",
        "num_gpus": 1,
        "gpu_ram": 24564,
        "min_bid": 0.20,
        "dph_total": 0.45,
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
        "dph_total": 0.40,
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
        "dph_total": 2.40,
        "reliability2": 0.999,
        "inet_down": 5000.0,
        "disk_space": 900.0,
        "cuda_max_good": 12.8,
        "geolocation": "Quebec, CA",
    },
]


class FakeVast(FakeAPI):
    def __init__(self, api_key: str = "vast-test-key") -> None:
        super().__init__(api_key)
        self.offers: dict[int, dict[str, Any]] = {o["id"]: dict(o) for o in DEFAULT_OFFERS}
        self.instances: dict[int, dict[str, Any]] = {}
        self.ids = itertools.count(9001)
        self.loading_polls = 1
        self.stuck_loading = False
        self.ignore_price = False  # the bug a create without a bid hits: on-demand, silently
        self.ssh_port = 22
        self.bodies: list[dict[str, Any]] = []

    def route(self, method: str, path: str, body: Any) -> str:
        if path.startswith("/api/v0/bundles"):
            return "search"
        if path.startswith("/api/v0/asks/"):
            return "create"
        if path.startswith("/api/v1/instances"):
            return "list"
        if method == "DELETE":
            return "destroy"
        return "show"

    # -- helpers for tests ---------------------------------------------------------------

    def add_instance(self, label: str, actual: str = "running", intended: str = "running") -> int:
        iid = next(self.ids)
        self.instances[iid] = self._row(iid, label, 0.3, True, actual, intended, {})
        return iid

    def outbid(self, iid: int) -> None:
        self.instances[iid].update(actual_status="exited", status_msg="outbid: paused")

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
        actual: str,
        intended: str,
        env: dict[str, str],
    ) -> dict[str, Any]:
        return {
            "id": iid,
            "label": label,
            "actual_status": actual,
            "intended_status": intended,
            "cur_state": "running",
            "next_state": intended,
            "status_msg": "",
            "start_date": time.time(),
            "extra_env": [[k, v] for k, v in env.items()],
            "ssh_host": "127.0.0.1",
            "ssh_port": self.ssh_port,
            "public_ipaddr": "127.0.0.1",
            "dph_total": price,
            "is_bid": is_bid,
            "polls": 0,
            "ports": {},
        }

    @staticmethod
    def _public(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if k != "polls"}

    # -- routes --------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        route = self.route(method, path, body)
        if route == "search":
            return Reply(200, {"offers": self._search(body or {})})
        if route == "create":
            return self._create(int(re.findall(r"\d+", path)[-1]), body or {})
        if route == "list":
            return self._list(query)
        iid = int(re.findall(r"\d+", path)[-1])
        if route == "destroy":
            if self.instances.pop(iid, None) is None:
                return Reply(404, {"success": False, "error": "no_such_instance"})
            return Reply(200, {"success": True})
        row = self.instances.get(iid)
        return Reply(200, {"instances": self._public(row) if row else None})

    def _search(self, q: dict[str, Any]) -> list[dict[str, Any]]:
        assert q.get("type") == "bid", "respawn must search interruptible offers"
        out = []
        for o in self.offers.values():
            if "num_gpus" in q and o["num_gpus"] != q["num_gpus"]["eq"]:
                continue
            if "gpu_name" in q and o["gpu_name"] not in q["gpu_name"]["in"]:
                continue
            if "gpu_ram" in q and o["gpu_ram"] < q["gpu_ram"]["gte"]:
                continue
            out.append(dict(o))
        return out

    def _create(self, offer_id: int, body: dict[str, Any]) -> Reply:
        self.bodies.append(body)
        offer = self.offers.pop(offer_id, None)
        if offer is None:
            return Reply(
                404,
                {
                    "success": False,
                    "error": "no_such_ask",
                    "msg": "Instance type no longer available.",
                },
            )
        iid = next(self.ids)
        price = body.get("price")
        env = body.get("env") or {}
        if price is None or self.ignore_price:
            row = self._row(
                iid, body.get("label") or "", offer["dph_total"], False, "loading", "running", env
            )
        elif price < offer["min_bid"]:
            row = self._row(iid, body.get("label") or "", price, True, "exited", "stopped", env)
            row["status_msg"] = "bid below minimum: created stopped"
        else:
            row = self._row(iid, body.get("label") or "", price, True, "loading", "running", env)
        self.instances[iid] = row
        return Reply(200, {"success": True, "new_contract": iid})

    def _list(self, query: dict[str, str]) -> Reply:
        limit = int(json.loads(query.get("limit", "25")))
        start = int(json.loads(query["after_token"])) if "after_token" in query else 0
        rows = sorted(self.instances.values(), key=lambda r: r["id"])
        for row in rows:
            if row["actual_status"] == "loading":
                row["polls"] += 1
                if row["polls"] > self.loading_polls and not self.stuck_loading:
                    row["actual_status"] = "running"
        page = rows[start : start + limit]
        more = start + limit < len(rows)
        return Reply(
            200,
            {
                "instances": [self._public(r) for r in page],
                "next_token": str(start + limit) if more else None,
                "total_instances": len(rows),
            },
        )
