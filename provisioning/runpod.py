"""RunPod through its GraphQL API, with variables: on-demand pods, community cloud first.

RunPod removed spot pods in 2026 (`podRentInterruptable` "is being removed from the runpod
api", runpodctl PR 267; gpuhunt dropped RunPod spot in August 2026), so this adapter rents
on-demand only (`podFindAndDeployOnDemand`), priced from `lowestPrice.uninterruptablePrice`,
under the same price cap and daily budget as spot. A run that allows only interruptible
instances gets no RunPod offer, and failover says why.

The runpod SDK (1.11) builds queries by pasting values into strings (a quote in an env value
breaks the mutation), and it has no timeout and no retry. So this adapter speaks GraphQL
itself: `requests`, variables for every value, typed errors and bounded retries from
`provisioning.calls`.

Pods have no labels: they are found by `name` (`respawn-<fleet>-<run>-g<N>`), matched exactly.
"""

from __future__ import annotations

from typing import Any, Literal

import requests
from pydantic import BaseModel, ConfigDict, Field

from respawn.contract.pod import ENV_NAME
from respawn.provisioning import fields
from respawn.provisioning.base import (
    Instance,
    InstanceState,
    InvalidCredentialsError,
    LaunchSpec,
    Market,
    NoCapacityError,
    NotFoundError,
    Offer,
    Provider,
    ProviderError,
    Resources,
    Secrets,
    markets_of,
    parse_instance_name,
)
from respawn.provisioning.calls import TIMEOUT_SECONDS, call, once
from respawn.provisioning.offers import gpu_keys, select
from respawn.provisioning.shell import ShellAccess

API_URL = "https://api.runpod.io/graphql"
# Seconds between SIGTERM and SIGKILL when RunPod stops a pod.
GRACE_SECONDS = 5.0

# One query prices both clouds: `lowestPrice` answers for the cloud its input names.
GPU_TYPES = """
query GpuTypes($community: GpuLowestPriceInput, $secure: GpuLowestPriceInput) {
  gpuTypes {
    id displayName memoryInGb communityCloud secureCloud
    community: lowestPrice(input: $community) { uninterruptablePrice stockStatus }
    secure: lowestPrice(input: $secure) { uninterruptablePrice stockStatus }
  }
}"""

DEPLOY = """
mutation Deploy($input: PodFindAndDeployOnDemandInput!) {
  podFindAndDeployOnDemand(input: $input) { id name desiredStatus costPerHr machineId }
}"""

_POD_FIELDS = """
  id name desiredStatus costPerHr podType
  runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } }
"""

POD = "query Pod($input: PodFilter!) { pod(input: $input) {" + _POD_FIELDS + "} }"

PODS = "query Pods { myself { pods {" + _POD_FIELDS + "} } }"

TERMINATE = """
mutation Terminate($input: PodTerminateInput!) { podTerminate(input: $input) }"""

# "There are no longer any instances available with the requested specifications", "... with
# the request specifications", "There are no instances available ...", "... with enough disk
# space", "No compatible CUDA host is currently available."
_NO_CAPACITY = (
    "instances available",
    "no compatible cuda host",
    "not enough",
    "no available",
    "capacity",
)
# The fields of RunPod's replies the adapter reads, and their types in its schema.
GPU_TYPE_FIELDS: fields.Spec = {
    "id": fields.STR,
    "displayName": fields.STR + fields.NULL,
    "memoryInGb": fields.NUMBER + fields.NULL,
    "communityCloud": fields.BOOL + fields.NULL,
    "secureCloud": fields.BOOL + fields.NULL,
    "community": fields.DICT + fields.NULL,
    "secure": fields.DICT + fields.NULL,
}
LOWEST_PRICE_FIELDS: fields.Spec = {
    "uninterruptablePrice": fields.NUMBER + fields.NULL,
    "stockStatus": fields.STR + fields.NULL,
}
POD_FIELDS: fields.Spec = {
    "id": fields.STR,
    "name": fields.STR + fields.NULL,
    "desiredStatus": fields.STR + fields.NULL,
    "costPerHr": fields.NUMBER + fields.NULL,
    "runtime": fields.DICT + fields.NULL,
}
_CLOUDS = {"ALL": ("COMMUNITY", "SECURE"), "COMMUNITY": ("COMMUNITY",), "SECURE": ("SECURE",)}


def runpod_state(pod: dict[str, Any]) -> InstanceState:
    desired = (pod.get("desiredStatus") or "").upper()
    if desired == "RUNNING":
        return InstanceState.RUNNING if pod.get("runtime") else InstanceState.PENDING
    if desired in ("CREATED", "PENDING", "RESTARTING"):
        return InstanceState.PENDING
    if desired == "TERMINATED":
        return InstanceState.TERMINATED
    return InstanceState.STOPPED  # EXITED (spot reclaimed), STOPPED: the volume still bills


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
        self.api_url = api_url
        self.key_env = key_env
        self.cloud_type = cloud_type
        self.remote = remote
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def _gql(
        self, query: str, variables: dict[str, Any], what: str, retry: bool = True
    ) -> dict[str, Any]:
        def post() -> dict[str, Any]:
            r = self.session.post(
                self.api_url,
                json={"query": query, "variables": variables},
                timeout=TIMEOUT_SECONDS,
            )
            r.raise_for_status()
            doc = r.json()
            errors = doc.get("errors") if isinstance(doc, dict) else None
            if errors:
                raise _graphql_error(errors, what, self.key_env)
            return doc["data"]

        return (call if retry else once)(post, f"runpod: {what}", self.key_env)

    # -- offers --------------------------------------------------------------------------

    def offers(self, resources: Resources) -> list[Offer]:
        if "on_demand" not in markets_of(resources.market):
            return []  # failover says why: RunPod rents on-demand only
        count = max(1, resources.gpu_count)
        lowest = {"gpuCount": count, "minDisk": int(resources.disk_gb)}
        variables = {
            "community": {**lowest, "secureCloud": False},
            "secure": {**lowest, "secureCloud": True},
        }
        data = self._gql(GPU_TYPES, variables, "gpu types")
        wanted = gpu_keys(resources.gpus)
        by_cloud: dict[str, list[Offer]] = {c: [] for c in _CLOUDS[self.cloud_type]}
        for t in data.get("gpuTypes") or []:
            if not isinstance(t, dict) or not t.get("id"):
                continue
            shown = t.get("displayName") or t["id"]
            if wanted and not gpu_keys([t["id"], shown]) & wanted:
                continue
            # The name that matched the config: `fits` compares it again.
            name = t["id"] if not wanted or gpu_keys([t["id"]]) & wanted else shown
            for cloud in by_cloud:
                if t.get(f"{cloud.lower()}Cloud") is False:
                    continue
                price = t.get(cloud.lower()) or {}
                per_gpu = price.get("uninterruptablePrice")
                if per_gpu is None or price.get("stockStatus") is None:
                    continue  # out of stock in this cloud (gpuhunt skips a null stockStatus)
                by_cloud[cloud].append(
                    Offer(
                        provider=self.name,
                        id=f"{cloud.lower()}:{t['id']}",
                        gpu_name=str(name),
                        gpu_count=resources.gpu_count,
                        vram_gb=float(t.get("memoryInGb") or 0),
                        price_per_hour=round(float(per_gpu) * count, 4),
                        market="on_demand",
                        location=f"{cloud.lower()} cloud",
                    )
                )
        # Community cloud first (cheaper), then secure; cheapest first within each.
        return [o for cloud in by_cloud for o in select(by_cloud[cloud], resources)]

    # -- launch (the safety rules are in Provider.launch) -------------------------------

    def _create(self, offer: Offer, spec: LaunchSpec) -> str:
        cloud, _, gpu_type = offer.id.partition(":")
        variables = {
            "input": {
                "cloudType": cloud.upper(),
                "gpuTypeId": gpu_type,
                "gpuCount": offer.gpu_count,
                "imageName": spec.image,
                "containerDiskInGb": int(spec.disk_gb),
                "volumeInGb": 0,
                "env": [{"key": k, "value": v} for k, v in spec.env.items()],
                "ports": "22/tcp",
                "name": spec.name,
                "startSsh": True,
                "supportPublicIp": True,
            }
        }
        if spec.registry_auth:
            if ":" in spec.registry_auth:
                err = ProviderError(
                    "runpod: pod.registry_auth_env must hold the id of a container registry "
                    "credential saved in RunPod (Settings → Container Registry Auth), not "
                    "USER:TOKEN"
                )
                err.retryable = False
                raise err
            variables["input"]["containerRegistryAuthId"] = spec.registry_auth
        # Not retried: a create whose answer was lost may still have made a pod.
        what = f"deploy {offer.gpu_count}x {gpu_type} ({cloud} cloud)"
        data = self._gql(DEPLOY, variables, what, retry=False)
        pod = data.get("podFindAndDeployOnDemand")
        if not pod or not pod.get("id"):
            raise NoCapacityError(f"runpod: no {gpu_type} pod in {cloud} cloud")
        return str(pod["id"])

    def _read_back(self, instance_id: str, spec: LaunchSpec) -> Instance | None:
        try:
            data = self._gql(POD, {"input": {"podId": instance_id}}, f"read back {instance_id}")
        except NotFoundError:
            return None
        pod = data.get("pod")
        if not pod:
            return None
        if not parse_instance_name(str(pod.get("name") or ""), self.fleet):
            pod = {**pod, "name": spec.name}
        return self._instance(pod)

    # -- listing / termination -----------------------------------------------------------

    def _instance(self, pod: dict[str, Any]) -> Instance:
        parsed = parse_instance_name(str(pod.get("name") or ""), self.fleet)
        assert parsed is not None
        ssh = next(
            (
                p
                for p in ((pod.get("runtime") or {}).get("ports") or [])
                if p.get("privatePort") == 22 and p.get("isIpPublic")
            ),
            None,
        )
        pod_type = str(pod.get("podType") or "").upper()
        return Instance(
            provider=self.name,
            id=str(pod["id"]),
            name=str(pod["name"]),
            run=parsed[0],
            generation=parsed[1],
            state=runpod_state(pod),
            price_per_hour=pod.get("costPerHr"),
            ssh_host=ssh.get("ip") if ssh else None,
            ssh_port=int(ssh["publicPort"]) if ssh and ssh.get("publicPort") else None,
            interruptible=True if pod_type in ("INTERRUPTABLE", "BID") else None,
            detail=str(pod.get("desiredStatus") or ""),
        )

    def list_all(self) -> list[Instance]:
        data = self._gql(PODS, {}, "list pods")
        if data.get("myself") is None:
            # runpodctl#46: with no usable key RunPod answers `myself: null`, no error. An
            # empty list here would read as "no instances" and launch duplicates.
            raise InvalidCredentialsError(
                f"runpod: list pods: the account was not recognised; check {self.key_env}"
            )
        pods = data["myself"].get("pods") or []
        return [
            self._instance(p)
            for p in pods
            if parse_instance_name(str(p.get("name") or ""), self.fleet)
        ]

    def check_live(self) -> list[str]:
        lowest = {"gpuCount": 1}
        variables = {
            "community": {**lowest, "secureCloud": False},
            "secure": {**lowest, "secureCloud": True},
        }
        data = self._gql(GPU_TYPES, variables, "gpu types")
        types = data.get("gpuTypes")
        if not isinstance(types, list) or not types:
            return [f"runpod: gpuTypes is {types!r}, expected a list of GPU types"]
        out: list[str] = []
        for t in types[:5]:
            where = f"runpod gpu type {t.get('id') if isinstance(t, dict) else '?'}"
            out += fields.problems(where, t, GPU_TYPE_FIELDS)
            for cloud in ("community", "secure"):
                price = t.get(cloud) if isinstance(t, dict) else None
                if price is not None:
                    out += fields.problems(f"{where} {cloud} price", price, LOWEST_PRICE_FIELDS)
        me = self._gql(PODS, {}, "list pods").get("myself")
        if me is None:
            return [*out, f"runpod: `myself` is null: the key is not recognised ({self.key_env})"]
        for pod in (me.get("pods") or [])[:5]:
            where = f"runpod pod {pod.get('id') if isinstance(pod, dict) else '?'}"
            out += fields.problems(where, pod, POD_FIELDS)
        return out

    def _destroy(self, instance_id: str) -> None:
        self._gql(TERMINATE, {"input": {"podId": instance_id}}, f"terminate {instance_id}")


def _graphql_error(errors: list[dict[str, Any]], what: str, key_env: str) -> ProviderError:
    # Not cut here: the controller redacts secrets before it shortens any text.
    message = "; ".join(str(e.get("message", e)) for e in errors)
    low = message.lower()
    if any(s in low for s in _NO_CAPACITY):
        return NoCapacityError(f"runpod: {what}: {message}")
    if "unauthorized" in low or "api key" in low or "authenticat" in low:
        return InvalidCredentialsError(f"runpod: {what}: {message}; check {key_env}")
    if "not found" in low or "does not exist" in low:  # "pod not found to terminate"
        return NotFoundError(f"runpod: {what}: {message}")
    err = ProviderError(f"runpod: {what}: {message}")
    err.retryable = False
    return err


class RunPodSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key_env: str = Field("RUNPOD_API_KEY", pattern=ENV_NAME)
    api_url: str = Field(API_URL, description="GraphQL endpoint")
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
