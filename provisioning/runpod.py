"""RunPod through its REST API v2: on-demand pods, community cloud first.

RunPod retires its GraphQL API in early 2027 (release notes of 2026-08-18) and retired REST
v1 on 2026-12-01; v2 (`https://api.runpod.io/v2`) is the API this adapter speaks, from its
published OpenAPI document (a copy of the parts used: tests/fakes/runpod_openapi.json).

RunPod removed spot pods in 2026 (`podRentInterruptable` "is being removed from the runpod
api", runpodctl PR 267; v2 has no interruptible pods at all), so this adapter rents on-demand
only, priced from the catalog's per-cloud list price, under the same price cap and daily
budget as spot. A run that allows only interruptible instances gets no RunPod offer, and
failover says why.

Pods have no labels: they are found by `name` (`respawn-<fleet>-<run>-g<N>`), matched exactly.

SSH: `startSsh` only puts a `PUBLIC_KEY` variable in the pod (respawn's key when one is
configured, else the account's registered keys); an image must run sshd from it for restart
in place to reach the pod (docs/pod-image.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from respawn.contract.pod import ENV_NAME
from respawn.provisioning import fields
from respawn.provisioning.base import (
    Instance,
    InstanceState,
    LaunchSpec,
    Market,
    NotFoundError,
    Offer,
    Provider,
    ProviderError,
    Resources,
    Secrets,
    TransientProviderError,
    markets_of,
    parse_instance_name,
)
from respawn.provisioning.offers import gpu_keys, select
from respawn.provisioning.runpod_api import API_URL, RunPodAPI
from respawn.provisioning.shell import ShellAccess

# Seconds between SIGTERM and SIGKILL when RunPod stops a pod.
GRACE_SECONDS = 5.0
CLOUDS = {"ALL": ("COMMUNITY", "SECURE"), "COMMUNITY": ("COMMUNITY",), "SECURE": ("SECURE",)}
# Catalog stock levels that can place a pod (`AvailabilityLevel`: NONE, LOW, MEDIUM, HIGH).
IN_STOCK = ("LOW", "MEDIUM", "HIGH")

# The fields of RunPod's replies the adapter reads, and their types in its OpenAPI document.
GPU_TYPE_FIELDS: fields.Spec = {
    "id": fields.STR,
    "name": fields.STR,
    "memory": fields.NUMBER,
    "secure": fields.BOOL,
    "community": fields.BOOL,
    "price": fields.DICT,
    "maxCount": fields.DICT,
    "availability": fields.STR,
}
POD_FIELDS: fields.Spec = {
    "id": fields.STR,
    "name": fields.STR,
    "status": fields.STR,
    "cost": fields.NUMBER,
    "ssh": fields.DICT,
    "createdAt": fields.STR,
}
_STATES = {
    "PROVISIONING": InstanceState.PENDING,
    "STARTING": InstanceState.PENDING,
    "RUNNING": InstanceState.RUNNING,
    # EXITED keeps its machine and disk (and may be started again); ERROR is a container that
    # will not recover. Both still exist until deleted: listed, never counted as gone.
    "EXITED": InstanceState.STOPPED,
    "ERROR": InstanceState.STOPPED,
    "TERMINATED": InstanceState.TERMINATED,
}


def runpod_state(pod: dict[str, Any]) -> InstanceState:
    return _STATES.get(str(pod.get("status") or "").upper(), InstanceState.STOPPED)


def _created(pod: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(pod.get("createdAt")).replace("Z", "+00:00"))
    except ValueError:
        return None


def _number(value: object) -> float:
    """A reply's number, or 0 for anything else (a changed field never crashes a tick:
    `doctor --live` names it)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _ssh_address(pod: dict[str, Any]) -> tuple[str | None, int | None]:
    """`ssh.direct` (sshd over the published 22/tcp), else the runtime's 22 mapping."""
    direct = (pod.get("ssh") or {}).get("direct") or {}
    if direct.get("host") and isinstance(direct.get("port"), int):
        return str(direct["host"]), direct["port"]
    for port in (pod.get("runtime") or {}).get("ports") or []:
        if port.get("private") == 22 and isinstance(port.get("public"), int) and port.get("ip"):
            return str(port["ip"]), port["public"]
    return None, None


class RunPodProvider(ShellAccess, Provider):
    name = "runpod"
    markets: tuple[Market, ...] = ("on_demand",)

    def __init__(
        self,
        api_key: str,
        key_env: str = "RUNPOD_API_KEY",
        api_url: str = API_URL,
        cloud_type: str = "ALL",
        remote: Any = None,
    ) -> None:
        self.api = RunPodAPI(api_key, key_env, api_url)
        self.key_env = key_env
        self.cloud_type = cloud_type
        self.remote = remote

    # -- offers --------------------------------------------------------------------------

    def _catalog(self, cloud: str, count: int) -> list[dict[str, Any]]:
        # Availability is per product, cloud and GPU count: asked for exactly what we rent.
        params = {"include": "AVAILABILITY", "product": "POD", "cloud": cloud, "count": str(count)}
        doc = self.api.get("/v2/catalog/gpus", f"gpu catalog ({cloud.lower()} cloud)", params)
        gpus = doc.get("gpus") if isinstance(doc, dict) else None
        return [g for g in gpus or [] if isinstance(g, dict) and g.get("id")]

    def offers(self, resources: Resources) -> list[Offer]:
        if "on_demand" not in markets_of(resources.market):
            return []  # failover says why: RunPod rents on-demand only
        count = max(1, resources.gpu_count)
        wanted = gpu_keys(resources.gpus)
        out: list[Offer] = []
        for cloud in CLOUDS[self.cloud_type]:
            key = cloud.lower()
            found = []
            for g in self._catalog(cloud, count):
                shown = g.get("name") or g["id"]
                if wanted and not gpu_keys([g["id"], shown]) & wanted:
                    continue
                per_gpu = _number((g.get("price") or {}).get(key))
                if (
                    g.get(key) is not True
                    or g.get("availability") not in IN_STOCK
                    or _number((g.get("maxCount") or {}).get(key)) < count
                    # Not documented: what a list price of a cloud without this GPU reads.
                    # Assumed 0 or absent, and never rented at that price.
                    or not per_gpu
                ):
                    continue
                # The name that matched the config: `fits` compares it again.
                name = g["id"] if not wanted or gpu_keys([g["id"]]) & wanted else shown
                found.append(
                    Offer(
                        provider=self.name,
                        id=f"{key}:{g['id']}",
                        gpu_name=str(name),
                        gpu_count=resources.gpu_count,
                        vram_gb=_number(g.get("memory")),
                        price_per_hour=round(per_gpu * count, 4),
                        market="on_demand",
                        location=f"{key} cloud",
                    )
                )
            # Community cloud first (cheaper), then secure; cheapest first within each.
            out += select(found, resources)
        return out

    # -- launch (the safety rules are in Provider.launch) -------------------------------

    def _create_body(self, offer: Offer, spec: LaunchSpec) -> dict[str, Any]:
        cloud, _, gpu_type = offer.id.partition(":")
        if not spec.image:
            raise _fatal("runpod: a pod needs an image: set runs[].pod.image")
        env = dict(spec.env)
        if self.remote is not None:
            # What `startSsh` would otherwise fill with the account's registered keys: with
            # respawn's own key the controller can log in without registering it at RunPod.
            key = self.remote.key
            env.setdefault("PUBLIC_KEY", f"{key.get_name()} {key.get_base64()} respawn")
        body: dict[str, Any] = {
            "name": spec.name,
            "image": spec.image,
            "gpu": {"id": gpu_type, "count": max(1, offer.gpu_count)},
            "cloud": cloud.upper(),  # said always: RunPod's default is SECURE
            "disk": max(1, int(spec.disk_gb)),
            "env": env,
            "ports": ["22/tcp"],  # `ssh.direct` needs it
            "startSsh": True,
        }
        if spec.registry_auth:
            if ":" in spec.registry_auth:
                raise _fatal(
                    "runpod: pod.registry_auth_env must hold the id of a container registry "
                    "credential saved in RunPod (Settings → Container Registry Auth), not "
                    "USER:TOKEN"
                )
            body["registry"] = spec.registry_auth
        return body

    def _create(self, offer: Offer, spec: LaunchSpec) -> str:
        cloud, _, gpu_type = offer.id.partition(":")
        what = f"create {max(1, offer.gpu_count)}x {gpu_type} ({cloud} cloud)"
        pod = self.api.create("/v2/pods", self._create_body(offer, spec), what)
        if not isinstance(pod, dict) or not pod.get("id"):
            # 201 without an id: the outcome is unknown, so look for the pod by name.
            raise TransientProviderError(f"runpod: {what}: the answer names no pod")
        return str(pod["id"])

    def _read_back(self, instance_id: str, spec: LaunchSpec) -> Instance | None:
        try:
            pod = self.api.get(f"/v2/pods/{instance_id}", f"read back {instance_id}")
        except NotFoundError:
            return None
        if not isinstance(pod, dict) or not pod.get("id"):
            return None
        if not parse_instance_name(str(pod.get("name") or ""), self.fleet):
            pod = {**pod, "name": spec.name}
        return self._instance(pod)

    # -- listing / termination -----------------------------------------------------------

    def _instance(self, pod: dict[str, Any]) -> Instance:
        parsed = parse_instance_name(str(pod.get("name") or ""), self.fleet)
        assert parsed is not None
        host, port = _ssh_address(pod)
        cost = pod.get("cost")
        return Instance(
            provider=self.name,
            id=str(pod["id"]),
            name=str(pod["name"]),
            run=parsed[0],
            generation=parsed[1],
            state=runpod_state(pod),
            created_at=_created(pod),
            # Not 0 when unreadable: an unknown price must never look cheap.
            price_per_hour=_number(cost) if isinstance(cost, int | float) else None,
            ssh_host=host,
            ssh_port=port,
            interruptible=False,  # v2 creates no interruptible pods
            detail=str(pod.get("status") or ""),
        )

    def _pods(self) -> list[dict[str, Any]]:
        doc = self.api.get("/v2/pods", "list pods")
        pods = doc.get("pods") if isinstance(doc, dict) else None
        if not isinstance(pods, list):
            # An answer without the list is not "no pods": that would launch duplicates. Its
            # text is not quoted: pods carry their env, secrets included.
            keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
            raise ProviderError(f"runpod: list pods: the answer has no `pods` list ({keys})")
        return [p for p in pods if isinstance(p, dict)]

    def list_all(self) -> list[Instance]:
        return [
            self._instance(p)
            for p in self._pods()
            if p.get("id") and parse_instance_name(str(p.get("name") or ""), self.fleet)
        ]

    def check_live(self) -> list[str]:
        out: list[str] = []
        gpus = self._catalog("COMMUNITY", 1)
        if not gpus:
            out.append("runpod: the GPU catalog is empty, expected a list of GPU types")
        for g in gpus[:5]:
            where = f"runpod gpu type {g.get('id')}"
            out += fields.problems(where, g, GPU_TYPE_FIELDS)
            out += fields.problems(f"{where} price", g.get("price"), {"community": fields.NUMBER})
        for pod in self._pods()[:5]:
            out += fields.problems(f"runpod pod {pod.get('id')}", pod, POD_FIELDS)
        return out

    def _destroy(self, instance_id: str) -> None:
        self.api.delete(f"/v2/pods/{instance_id}", f"terminate {instance_id}")


def _fatal(message: str) -> ProviderError:
    err = ProviderError(message)
    err.retryable = False
    return err


class RunPodSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key_env: str = Field("RUNPOD_API_KEY", pattern=ENV_NAME)
    api_url: str = Field(
        API_URL,
        description="REST v2 host (a GraphQL URL on the same host, .../graphql, is read as it)",
    )
    cloud_type: Literal["ALL", "SECURE", "COMMUNITY"] = Field(
        "ALL", description="ALL tries community cloud first, then secure"
    )
    market: Literal["on_demand"] = Field(
        "on_demand", description="RunPod removed spot pods in 2026: on-demand only"
    )
    bid_margin: float | None = Field(
        None, ge=0, le=5, description="ignored: RunPod has no spot bids any more"
    )


def from_settings(settings: RunPodSettings, secrets: Secrets) -> RunPodProvider:
    return RunPodProvider(
        secrets.require(settings.api_key_env, "runpod"),
        key_env=settings.api_key_env,
        api_url=settings.api_url,
        cloud_type=settings.cloud_type,
        remote=secrets.remote(),
    )
