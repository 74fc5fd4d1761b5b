"""A stateful fake of RunPod's GraphQL API (POST /graphql, {query, variables} → {data|errors}).

Every document is parsed, validated and executed by graphql-core against
`runpod_schema.graphql` (the types respawn uses, from RunPod's public spec and real clients:
/work/research notes cite each), so a misspelt field, argument or input type fails exactly as
it would on RunPod, and values may come as variables or inline, as the runpod SDK sends them.

Behaviour of the real service worth testing against:
- GraphQL errors come back with HTTP 200 and `{"data": ..., "errors": [{"message", "path"}]}`;
- no on-demand capacity is the text `NO_CAPACITY`; a missing pod on terminate is
  "pod not found to terminate";
- with a key that is not recognised, `myself` is null with no error (runpodctl#46);
- spot pods are gone: the schema has no `podRentInterruptable`;
- a pod is `RUNNING` with `runtime: null` until its container is up.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from graphql import GraphQLError, build_schema, graphql_sync, parse
from graphql.language import OperationDefinitionNode

from tests.fakes.http import FakeAPI, Reply

SCHEMA = build_schema((Path(__file__).parent / "runpod_schema.graphql").read_text())

NO_CAPACITY = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)


class GpuType:
    def __init__(self, name: str, memory: int, community: float | None, secure: float | None):
        self.display_name = name
        self.memory = memory
        self.price = {"COMMUNITY": community, "SECURE": secure}
        self.stock = {"COMMUNITY": 4 if community else 0, "SECURE": 4 if secure else 0}


class FakeRunPod(FakeAPI):
    def __init__(self, api_key: str = "runpod-test-key") -> None:
        super().__init__(api_key)
        self.types: dict[str, GpuType] = {
            "NVIDIA GeForce RTX 4090": GpuType("RTX 4090", 24, 0.34, 0.69),
            "NVIDIA H100 80GB HBM3": GpuType("H100 SXM", 80, 1.99, 2.69),
            "NVIDIA H100 PCIe": GpuType("H100 PCIe", 80, None, 2.39),
        }
        self.pods: dict[str, dict[str, Any]] = {}
        self.ids = (f"pod{n:04d}" for n in itertools.count(1))
        self.loading_polls = 1
        self.deploy_inputs: list[dict[str, Any]] = []
        self.documents: list[str] = []
        self.overcharge = 0.0  # $/h a deployed pod costs above its quote
        self.no_capacity_text = NO_CAPACITY
        self.echo_invalid_input = False  # GraphQL servers quote rejected variables back
        self.unknown_account = False  # `myself: null`, as for a key RunPod does not know
        self.ssh_port = 22

    def route(self, method: str, path: str, body: Any) -> str:
        try:
            doc = parse((body or {}).get("query") or "")
        except GraphQLError:
            return "invalid"
        for d in doc.definitions:
            if isinstance(d, OperationDefinitionNode):
                return d.selection_set.selections[0].name.value  # type: ignore[attr-defined]
        return "invalid"

    def preempt(self, pod_id: str) -> None:
        self.pods[pod_id].update(desiredStatus="EXITED", runtime=None)

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        body = body or {}
        self.documents.append(body.get("query") or "")
        result = graphql_sync(
            SCHEMA,
            body.get("query") or "",
            root_value=self,
            variable_values=body.get("variables") or {},
            operation_name=body.get("operationName"),
        )
        doc: dict[str, Any] = {"data": result.data}
        if result.errors:
            doc["errors"] = [e.formatted for e in result.errors]
            if result.data is None and not any(e.path for e in result.errors):
                # A document that does not validate never executes (graphql-js servers: 400).
                return Reply(400, {"errors": doc["errors"]})
        return Reply(200, doc)

    # -- resolvers (graphql-core calls attributes of the root value) ---------------------

    def _tick(self) -> None:
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
                                "type": "tcp",
                            }
                        ],
                    }

    @staticmethod
    def _public(pod: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in pod.items() if k not in ("polls", "env")}
        out["env"] = [f"{k}={v}" for k, v in pod["env"].items()]
        return out

    def myself(self, info: Any) -> dict[str, Any] | None:
        if self.unknown_account:
            return None
        self._tick()
        return {"id": "user1", "pods": [self._public(p) for p in self.pods.values()]}

    def pod(self, info: Any, input: dict[str, Any] | None = None) -> dict[str, Any] | None:
        self._tick()
        pod = self.pods.get((input or {}).get("podId", ""))
        return self._public(pod) if pod else None

    def gpuTypes(self, info: Any, input: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        ids = set((input or {}).get("ids") or []) | {(input or {}).get("id")} - {None}
        out = []
        for tid, t in self.types.items():
            if ids and tid not in ids:
                continue

            def lowest(info: Any, input: dict[str, Any] | None = None, t: GpuType = t) -> Any:
                want = input or {}
                clouds = {True: ["SECURE"], False: ["COMMUNITY"]}.get(
                    want.get("secureCloud"), ["COMMUNITY", "SECURE"]
                )
                count = want.get("gpuCount") or 1
                priced = [(t.price[c], t.stock[c]) for c in clouds if t.price[c] is not None]
                if not priced:
                    return None
                price, stock = min(priced)
                return {
                    "uninterruptablePrice": price,
                    "minimumBidPrice": None,  # spot is gone
                    "stockStatus": "High" if stock >= count else None,
                    "minVcpu": 8 if stock >= count else None,
                    "minMemory": 60 if stock >= count else None,
                }

            out.append(
                {
                    "id": tid,
                    "displayName": t.display_name,
                    "memoryInGb": t.memory,
                    "communityCloud": t.price["COMMUNITY"] is not None,
                    "secureCloud": t.price["SECURE"] is not None,
                    "communityPrice": t.price["COMMUNITY"],
                    "securePrice": t.price["SECURE"],
                    "lowestPrice": lowest,
                }
            )
        return out

    def podFindAndDeployOnDemand(self, info: Any, input: dict[str, Any] | None = None) -> Any:
        inp = input or {}
        self.deploy_inputs.append(inp)
        if self.echo_invalid_input:
            raise GraphQLError(f'Variable "$input" got invalid value {json.dumps(inp)}.')
        t = self.types.get(inp.get("gpuTypeId") or "")
        count = inp.get("gpuCount") or 1
        cloud_type = inp.get("cloudType") or "ALL"
        clouds = ["COMMUNITY", "SECURE"] if cloud_type == "ALL" else [cloud_type]
        cloud = next(
            (c for c in clouds if t and t.price[c] is not None and t.stock[c] >= count), None
        )
        if t is None or cloud is None:
            raise GraphQLError(self.no_capacity_text)
        t.stock[cloud] -= count
        pod_id = next(self.ids)
        pod = {
            "id": pod_id,
            "name": inp.get("name"),
            "imageName": inp.get("imageName"),
            "desiredStatus": "RUNNING",
            "costPerHr": round(t.price[cloud] * count + self.overcharge, 4),  # type: ignore[operator]
            "gpuCount": count,
            "machineId": f"m-{pod_id}",
            "machine": {"podHostId": f"{pod_id}-1", "secureCloud": cloud == "SECURE"},
            "runtime": None,
            "polls": 0,
            "env": {e["key"]: e["value"] for e in inp.get("env") or []},
        }
        self.pods[pod_id] = pod
        return self._public(pod)

    def podTerminate(self, info: Any, input: dict[str, Any] | None = None) -> None:
        if self.pods.pop((input or {}).get("podId", ""), None) is None:
            raise GraphQLError("pod not found to terminate")
        return None
