"""A stateful fake of RunPod's GraphQL API (POST /graphql, {query, variables} → {data|errors}).

It answers the operations respawn sends, recognised by their root field: gpuTypes,
podRentInterruptable, myself { pods }, podTerminate. Values arrive only as variables.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from tests.fakes.http import FakeAPI, Reply

NO_CAPACITY = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)


class FakeRunPod(FakeAPI):
    def __init__(self, api_key: str = "runpod-test-key") -> None:
        super().__init__(api_key)
        # gpu type → (display name, memory GB, min bid per GPU or None, on-demand per GPU, stock)
        self.types: dict[str, list[Any]] = {
            "NVIDIA GeForce RTX 4090": ["RTX 4090", 24, 0.25, 0.69, 3],
            "NVIDIA H100 80GB HBM3": ["H100 SXM", 80, 1.60, 2.99, 1],
        }
        self.pods: dict[str, dict[str, Any]] = {}
        self.ids = (f"pod{n:04d}" for n in itertools.count(1))
        self.loading_polls = 1
        self.rent_inputs: list[dict[str, Any]] = []
        self.on_demand_anyway = False
        self.echo_invalid_input = False  # GraphQL servers quote rejected variables back
        self.ssh_port = 22

    def route(self, method: str, path: str, body: Any) -> str:
        query = (body or {}).get("query", "")
        for op in ("podRentInterruptable", "podTerminate", "gpuTypes", "myself"):
            if op in query:
                return op
        return "unknown"

    def preempt(self, pod_id: str) -> None:
        self.pods[pod_id].update(desiredStatus="EXITED", runtime=None)

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        op = self.route(method, path, body)
        variables = (body or {}).get("variables") or {}
        if op == "gpuTypes":
            count = variables["gpuCount"]
            return Reply(
                200,
                {
                    "data": {
                        "gpuTypes": [
                            {
                                "id": tid,
                                "displayName": t[0],
                                "memoryInGb": t[1],
                                "lowestPrice": {
                                    "minimumBidPrice": t[2] if t[4] >= count else None,
                                    "uninterruptablePrice": t[3],
                                },
                            }
                            for tid, t in self.types.items()
                        ]
                    }
                },
            )
        if op == "podRentInterruptable":
            return self._rent(variables["input"])
        if op == "myself":
            for pod in self.pods.values():
                if pod["desiredStatus"] == "RUNNING" and pod["runtime"] is None:
                    pod["polls"] += 1
                    if pod["polls"] > self.loading_polls:
                        pod["runtime"] = {
                            "uptimeInSeconds": 1,
                            "ports": [
                                {
                                    "ip": "127.0.0.1",
                                    "isIpPublic": True,
                                    "privatePort": 22,
                                    "publicPort": self.ssh_port,
                                }
                            ],
                        }
            pods = [
                {k: v for k, v in p.items() if k not in ("polls", "env")}
                for p in self.pods.values()
            ]
            return Reply(200, {"data": {"myself": {"pods": pods}}})
        if op == "podTerminate":
            if self.pods.pop(variables["input"]["podId"], None) is None:
                return Reply(200, {"errors": [{"message": "Pod not found."}], "data": None})
            return Reply(200, {"data": {"podTerminate": None}})
        return Reply(400, {"errors": [{"message": "unknown operation"}]})

    def _rent(self, inp: dict[str, Any]) -> Reply:
        self.rent_inputs.append(inp)
        if self.echo_invalid_input:
            message = f'Variable "$input" got invalid value {json.dumps(inp)}.'
            return Reply(200, {"errors": [{"message": message}], "data": None})
        t = self.types.get(inp["gpuTypeId"])
        if t is None or t[4] < inp["gpuCount"] or t[2] is None:
            return Reply(200, {"errors": [{"message": NO_CAPACITY}], "data": None})
        if inp["bidPerGpu"] < t[2]:
            return Reply(
                200, {"errors": [{"message": "Your bid is below the minimum bid."}], "data": None}
            )
        t[4] -= inp["gpuCount"]
        pod_id = next(self.ids)
        per_gpu = t[3] if self.on_demand_anyway else inp["bidPerGpu"]
        pod = {
            "id": pod_id,
            "name": inp["name"],
            "desiredStatus": "RUNNING",
            "costPerHr": round(per_gpu * inp["gpuCount"], 4),
            "runtime": None,
            "polls": 0,
            "env": {e["key"]: e["value"] for e in inp["env"]},
        }
        self.pods[pod_id] = pod
        return Reply(
            200,
            {
                "data": {
                    "podRentInterruptable": {
                        k: pod[k] for k in ("id", "name", "desiredStatus", "costPerHr")
                    }
                }
            },
        )
