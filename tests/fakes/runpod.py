"""A stateful fake of RunPod's REST API v2 (`/v2/pods`, `/v2/pods/{id}`, `/v2/catalog/gpus`).

It answers from RunPod's published OpenAPI document, not from respawn's client: the parts
used are copied unchanged into `runpod_openapi.json` (its `x-respawn-source` says from where),
every query string and request body is validated against the documented parameters and
schemas (a misspelt or unknown field is a 422 naming it, as RunPod's `unevaluatedProperties:
false` makes it), and every reply the fake sends is validated against the documented
response schema too, so the fake cannot drift from the document.

Behaviour of the real service worth testing against (from the document's descriptions):
- errors are RFC 9457 `application/problem+json`: `{title, status, detail, errors?}`, with
  `errors` a list of strings;
- a create answers 201 with the pod in `PROVISIONING`; it then goes `STARTING`, `RUNNING`
  (`ssh.direct` and `runtime.ports` appear only then);
- a create answers 400 when the GPU cannot be placed (capacity has no code of its own, only
  a `detail`), 402 without balance, 403 for a GPU pool the account cannot use;
- `include=AVAILABILITY` requires `product`, and `count`/`cloud` are valid only with it (400);
- `cloud` defaults to SECURE, for a create and for the catalog's availability;
- DELETE answers 204, and 404 for a pod that does not exist.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from tests.fakes.http import FakeAPI, Reply

SPEC = json.loads((Path(__file__).parent / "runpod_openapi.json").read_text())


def _validator(ref: str) -> Draft202012Validator:
    return Draft202012Validator({**SPEC, "$ref": ref})


CREATE = _validator("#/components/schemas/CreatePodRequest")
POD = _validator("#/components/schemas/Pod")
PODS = _validator("#/components/schemas/ListPodsResponse")
GPUS = _validator("#/components/schemas/ListGpuTypesResponse")
PROBLEM = _validator("#/components/schemas/ErrorResponse")
CATALOG_PARAMS = {
    p["$ref"].rsplit("/", 1)[1]: SPEC["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
    for p in SPEC["paths"]["/v2/catalog/gpus"]["get"]["parameters"]
}
NO_CAPACITY = "There are no longer any instances available with the requested specifications."
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    422: "Unprocessable Entity",
}


def problem(status: int, detail: str, errors: list[str] | None = None) -> Reply:
    doc: dict[str, Any] = {"title": TITLES.get(status, "Error"), "status": status, "detail": detail}
    if errors is not None:
        doc["errors"] = errors
    PROBLEM.validate(doc)
    return Reply(status, doc)


def _errors(validator: Draft202012Validator, doc: Any) -> list[str]:
    return [
        f"{e.json_path}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: e.json_path)
    ]


class GpuType:
    def __init__(self, name: str, memory: int, community: float | None, secure: float | None):
        self.name = name
        self.memory = memory
        self.price = {"COMMUNITY": community, "SECURE": secure}
        self.stock = {"COMMUNITY": 4 if community else 0, "SECURE": 4 if secure else 0}
        self.max_count = {"COMMUNITY": 8 if community else 0, "SECURE": 8 if secure else 0}


class FakeRunPod(FakeAPI):
    def __init__(self, api_key: str = "runpod-test-key") -> None:
        super().__init__(api_key)
        self.unauthorized = json.dumps(
            {"title": "Unauthorized", "status": 401, "detail": "invalid bearer token"}
        ).encode()
        self.types: dict[str, GpuType] = {
            "NVIDIA GeForce RTX 4090": GpuType("RTX 4090", 24, 0.34, 0.69),
            "NVIDIA H100 80GB HBM3": GpuType("H100 SXM", 80, 1.99, 2.69),
            "NVIDIA H100 PCIe": GpuType("H100 PCIe", 80, None, 2.39),
        }
        self.pods: dict[str, dict[str, Any]] = {}
        self.ids = (f"pod{n:04d}" for n in itertools.count(1))
        self.loading_polls = 1  # reads a pod stays PROVISIONING, then as many STARTING
        self.deploy_inputs: list[dict[str, Any]] = []
        self.catalog_queries: list[dict[str, str]] = []
        self.overcharge = 0.0  # $/h a created pod costs above its list price
        self.no_capacity_text = NO_CAPACITY
        self.no_balance = False  # 402 on create
        self.forbidden_types: set[str] = set()  # GPU pools this account may not use: 403
        # (GPU id, cloud) the catalog lists in stock but a create cannot place: RunPod says a
        # create "can still fail for capacity on a GPU the catalog just reported as available".
        self.unplaceable: set[tuple[str, str]] = set()
        # Fault injection: a 422 that quotes the rejected body back, as a validator that
        # prints values would (the controller must redact what it echoes).
        self.echo_invalid_input = False
        self.ssh_port = 22

    # -- routing ---------------------------------------------------------------------------

    def route(self, method: str, path: str, body: Any) -> str:
        if path == "/v2/pods":
            return {"GET": "listPods", "POST": "createPod"}.get(method, "unknown")
        if re.fullmatch(r"/v2/pods/[^/]+", path):
            return {"GET": "getPod", "DELETE": "deletePod"}.get(method, "unknown")
        if path == "/v2/catalog/gpus" and method == "GET":
            return "listGpuTypes"
        return "unknown"

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        op = self.route(method, path, body)
        if op == "listGpuTypes":
            return self._catalog(query)
        if op == "createPod":
            return self._create(body)
        if op == "listPods":
            self._tick()
            doc = {"pods": [self._public(p) for p in self.pods.values()]}
            PODS.validate(doc)
            return Reply(200, doc)
        pod_id = path.rsplit("/", 1)[1]
        if pod_id not in self.pods:
            return problem(404, "pod not found")
        if op == "getPod":
            self._tick()
            doc = self._public(self.pods[pod_id])
            POD.validate(doc)
            return Reply(200, doc)
        if op == "deletePod":
            del self.pods[pod_id]
            return Reply(204, None)
        return problem(404, f"no route for {method} {path}")

    # -- the catalog -----------------------------------------------------------------------

    def _catalog(self, query: dict[str, str]) -> Reply:
        self.catalog_queries.append(dict(query))
        errors = []
        for name, value in query.items():
            param = next((p for p in CATALOG_PARAMS.values() if p["name"] == name), None)
            if param is None:
                errors.append(f"query: unknown parameter '{name}'")
                continue
            schema = param["schema"]
            # style: form, explode: false — comma-separated arrays.
            parsed: Any = value.split(",") if schema.get("type") == "array" else value
            if schema.get("type") == "integer":
                parsed = int(value) if value.isdigit() else value
            errors += [f"query.{name}{m[1:]}" for m in _errors(_validator_for(schema), parsed)]
        if errors:
            return problem(422, "Request validation failed.", errors)
        if ("include" in query) != ("product" in query):
            return problem(400, "product is required with include=AVAILABILITY, and only with it")
        if "include" not in query and ({"count", "cloud"} & set(query)):
            return problem(400, "count and cloud are valid only with include=AVAILABILITY")
        cloud = query.get("cloud", "SECURE")
        count = int(query.get("count", "1"))
        gpus = []
        for tid, t in self.types.items():
            g: dict[str, Any] = {
                "id": tid,
                "name": t.name,
                "pool": None,
                "manufacturer": "NVIDIA",
                "memory": t.memory,
                "secure": t.price["SECURE"] is not None,
                "community": t.price["COMMUNITY"] is not None,
                # Not documented: the list price in a cloud that lacks the GPU (assumed 0).
                "price": {
                    "secure": t.price["SECURE"] or 0.0,
                    "community": t.price["COMMUNITY"] or 0.0,
                },
                "maxCount": {
                    "secure": t.max_count["SECURE"],
                    "community": t.max_count["COMMUNITY"],
                },
            }
            if "include" in query:
                stock = t.stock[cloud] if t.price[cloud] is not None else 0
                g["availability"] = (
                    "NONE" if stock < count else "HIGH" if stock >= 4 * count else "LOW"
                )
                if stock >= count:
                    g["dataCenters"] = [
                        {"id": "US-KS-2", "name": "US Kansas 2", "availability": g["availability"]}
                    ]
            gpus.append(g)
        doc = {"gpus": gpus}
        GPUS.validate(doc)
        return Reply(200, doc)

    # -- pods ------------------------------------------------------------------------------

    def _create(self, body: Any) -> Reply:
        self.deploy_inputs.append(body if isinstance(body, dict) else {})
        if self.echo_invalid_input:
            return problem(
                422, "Request validation failed.", [f"$: got invalid value {json.dumps(body)}"]
            )
        errors = _errors(CREATE, body)
        if errors:
            return problem(422, "Request validation failed.", errors)
        if ("gpu" in body) == ("cpu" in body):
            return problem(400, "exactly one of gpu or cpu must be set")
        if self.no_balance:
            return problem(402, "insufficient balance to create this pod")
        gpu = body["gpu"]
        if gpu["id"] in self.forbidden_types:
            return problem(403, f"your account cannot access the {gpu['id']} pool")
        t = self.types.get(gpu["id"])
        cloud = body.get("cloud", "SECURE")
        count = gpu.get("count", 1)
        full = t is None or t.price[cloud] is None or t.stock[cloud] < count
        if full or (gpu["id"], cloud) in self.unplaceable:
            return problem(400, self.no_capacity_text)
        assert t is not None
        t.stock[cloud] -= count
        pod_id = next(self.ids)
        pod = {
            "id": pod_id,
            "name": body["name"],
            "image": body["image"],
            "args": body.get("args", ""),
            "disk": body.get("disk", 50),
            "ports": body.get("ports", []),
            "env": dict(body.get("env") or {}),
            "registry": body.get("registry"),
            "status": "PROVISIONING",
            "mounts": body.get("mounts", {}),
            "gpu": {"id": gpu["id"], "count": count},
            "cloud": cloud,
            "dataCenterId": None,
            "cudaVersion": None,
            "template": None,
            "cost": round(t.price[cloud] * count + self.overcharge, 4),  # type: ignore[operator]
            "locked": False,
            "globalNetworking": {"enabled": False},
            "createdAt": f"2026-12-01T00:00:{len(self.pods):02d}Z",
            "startedAt": None,
            "polls": 0,
        }
        self.pods[pod_id] = pod
        doc = self._public(pod)
        POD.validate(doc)
        return Reply(201, doc)

    def _tick(self) -> None:
        for pod in self.pods.values():
            if pod["status"] in ("PROVISIONING", "STARTING"):
                pod["polls"] += 1
                if pod["polls"] > 2 * self.loading_polls:
                    pod.update(status="RUNNING", startedAt="2026-12-01T00:01:00Z")
                elif pod["polls"] > self.loading_polls:
                    pod["status"] = "STARTING"

    def _public(self, pod: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in pod.items() if k != "polls"}
        running = pod["status"] == "RUNNING"
        published = running and "22/tcp" in pod["ports"]
        actions = {"RUNNING": ["stop", "restart", "terminate"], "EXITED": ["start", "terminate"]}
        out["actions"] = actions.get(pod["status"], ["terminate"])
        out["ssh"] = {
            "proxy": {
                "host": "ssh.runpod.io",
                "port": 22,
                "username": f"{pod['id']}-64411eb2",
                "command": f"ssh {pod['id']}-64411eb2@ssh.runpod.io",
            },
            "direct": {
                "host": "127.0.0.1",
                "port": self.ssh_port,
                "username": "root",
                "command": f"ssh root@127.0.0.1 -p {self.ssh_port}",
            }
            if published
            else None,
        }
        out["runtime"] = (
            {
                "uptime": 1,
                "ports": [
                    {"private": 22, "public": self.ssh_port, "type": "tcp", "ip": "127.0.0.1"}
                ]
                if published
                else [],
            }
            if running
            else None
        )
        return out

    def add_pod(self, name: str, status: str = "RUNNING", cost: float = 0.3) -> str:
        """A pod made outside this fake's create (an earlier tick's, another fleet's)."""
        pod_id = next(self.ids)
        self.pods[pod_id] = {
            "id": pod_id, "name": name, "image": "img:1", "args": "", "disk": 50,
            "ports": ["22/tcp"], "env": {}, "registry": None, "status": status, "mounts": {},
            "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1}, "cloud": "COMMUNITY",
            "dataCenterId": "US-KS-2", "cudaVersion": "12.8", "template": None, "cost": cost,
            "locked": False, "globalNetworking": {"enabled": False},
            "createdAt": "2026-11-30T00:00:00Z", "startedAt": None, "polls": 99,
        }  # fmt: skip
        return pod_id

    def preempt(self, pod_id: str) -> None:
        """The container exited (a host failure, a stop): it keeps its disk, costs 0.0/h."""
        self.pods[pod_id].update(status="EXITED", cost=0.0)


def _validator_for(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator({**SPEC, **schema})
