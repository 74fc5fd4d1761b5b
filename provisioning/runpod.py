"""RunPod through its GraphQL API, with variables: interruptible (spot) pods only.

The runpod SDK (1.11) can't rent interruptible pods. It builds queries by pasting values into
strings (a quote in an env value breaks the mutation), and it has no timeout and no retry. So
this adapter speaks GraphQL itself: `requests`, variables for every value, typed errors and
bounded retries from `provisioning.calls`.

Pods have no labels: they are found by `name` (`respawn-<run>-g<N>`), matched exactly.
"""

from __future__ import annotations

from typing import Any, Literal

import requests
from pydantic import BaseModel, ConfigDict, Field

from respawn.contract.pod import ENV_NAME
from respawn.provisioning.base import (
    Instance,
    InstanceState,
    InvalidCredentialsError,
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
from respawn.provisioning.offers import bid_for, gpu_key, select
from respawn.provisioning.shell import ShellAccess

API_URL = "https://api.runpod.io/graphql"

GPU_TYPES = """
query GpuTypes($gpuCount: Int!) {
  gpuTypes {
    id displayName memoryInGb
    lowestPrice(input: {gpuCount: $gpuCount}) { minimumBidPrice uninterruptablePrice }
  }
}"""

RENT = """
mutation Rent($input: PodRentInterruptableInput!) {
  podRentInterruptable(input: $input) { id name desiredStatus costPerHr }
}"""

PODS = """
query Pods {
  myself {
    pods {
      id name desiredStatus costPerHr
      runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort } }
    }
  }
}"""

TERMINATE = """
mutation Terminate($input: PodTerminateInput!) { podTerminate(input: $input) }"""

_NO_CAPACITY = ("no longer any instances available", "not enough", "no available", "capacity")


def runpod_state(pod: dict[str, Any]) -> InstanceState:
    desired = (pod.get("desiredStatus") or "").upper()
    if desired == "RUNNING":
        return InstanceState.RUNNING if pod.get("runtime") else InstanceState.PENDING
    if desired in ("CREATED", "PENDING"):
        return InstanceState.PENDING
    if desired == "TERMINATED":
        return InstanceState.TERMINATED
    return InstanceState.STOPPED  # EXITED (spot reclaimed), STOPPED: the volume still bills


class RunPodProvider(ShellAccess, Provider):
    name = "runpod"

    def __init__(
        self,
        api_key: str,
        key_env: str = "RUNPOD_API_KEY",
        api_url: str = API_URL,
        bid_margin: float = 0.1,
        cloud_type: str = "ALL",
        remote: Any = None,
    ) -> None:
        self.api_url = api_url
        self.key_env = key_env
        self.bid_margin = bid_margin
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
        count = max(1, resources.gpu_count)
        data = self._gql(GPU_TYPES, {"gpuCount": count}, "gpu types")
        wanted = {gpu_key(g) for g in resources.gpus}
        out = []
        for t in data["gpuTypes"] or []:
            names = {gpu_key(t["id"]), gpu_key(t.get("displayName") or "")}
            if wanted and not names & wanted:
                continue
            lowest = t.get("lowestPrice") or {}
            min_bid = lowest.get("minimumBidPrice")
            if min_bid is None:
                continue  # no spot capacity for this type now
            per_gpu = bid_for(float(min_bid), self.bid_margin, resources.max_price_per_hour / count)
            if per_gpu is None:
                continue
            out.append(
                Offer(
                    provider=self.name,
                    id=str(t["id"]),
                    gpu_name=str(t.get("displayName") or t["id"]),
                    gpu_count=resources.gpu_count,
                    vram_gb=float(t.get("memoryInGb") or 0),
                    price_per_hour=round(per_gpu * count, 4),
                    min_bid=float(min_bid) * count,
                )
            )
        return select(out, resources)

    # -- launch (the safety rules are in Provider.launch) -------------------------------

    def _create(self, offer: Offer, spec: LaunchSpec) -> str:
        count = max(1, offer.gpu_count)
        bid_per_gpu = round(offer.price_per_hour / count, 4)
        variables = {
            "input": {
                "bidPerGpu": bid_per_gpu,
                "gpuTypeId": offer.id,
                "gpuCount": offer.gpu_count,
                "cloudType": self.cloud_type,
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
        data = self._gql(RENT, variables, f"rent {offer.gpu_count}x {offer.id}", retry=False)
        pod = data.get("podRentInterruptable")
        if not pod or not pod.get("id"):
            raise NoCapacityError(f"runpod: no {offer.id} pod at ${bid_per_gpu:g}/GPU/h")
        return str(pod["id"])

    def _read_back(self, instance_id: str, spec: LaunchSpec) -> Instance | None:
        return next((i for i in self.list_all() if i.id == instance_id), None)

    # -- listing / termination -----------------------------------------------------------

    def _instance(self, pod: dict[str, Any]) -> Instance:
        parsed = parse_instance_name(str(pod.get("name") or ""))
        assert parsed is not None
        ssh = next(
            (
                p
                for p in ((pod.get("runtime") or {}).get("ports") or [])
                if p.get("privatePort") == 22 and p.get("isIpPublic")
            ),
            None,
        )
        return Instance(
            provider=self.name,
            id=str(pod["id"]),
            name=str(pod["name"]),
            run=parsed[0],
            generation=parsed[1],
            state=runpod_state(pod),
            price_per_hour=pod.get("costPerHr"),
            ssh_host=ssh.get("ip") if ssh else None,
            ssh_port=int(ssh["publicPort"]) if ssh else None,
            detail=str(pod.get("desiredStatus") or ""),
        )

    def list_all(self) -> list[Instance]:
        data = self._gql(PODS, {}, "list pods")
        pods = (data.get("myself") or {}).get("pods") or []
        return [self._instance(p) for p in pods if parse_instance_name(str(p.get("name") or ""))]

    def _destroy(self, instance_id: str) -> None:
        self._gql(TERMINATE, {"input": {"podId": instance_id}}, f"terminate {instance_id}")


def _graphql_error(errors: list[dict[str, Any]], what: str, key_env: str) -> ProviderError:
    message = "; ".join(str(e.get("message", e)) for e in errors)[:300]
    low = message.lower()
    if any(s in low for s in _NO_CAPACITY):
        return NoCapacityError(f"runpod: {what}: {message}")
    if "unauthorized" in low or "api key" in low or "authenticat" in low:
        return InvalidCredentialsError(f"runpod: {what}: {message}; check {key_env}")
    if "not found" in low or "does not exist" in low:
        return NotFoundError(f"runpod: {what}: {message}")
    err = ProviderError(f"runpod: {what}: {message}")
    err.retryable = False
    return err


class RunPodSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key_env: str = Field("RUNPOD_API_KEY", pattern=ENV_NAME)
    bid_margin: float = Field(0.1, ge=0, le=5, description="bid this much over the minimum")
    api_url: str = Field(API_URL, description="GraphQL endpoint")
    cloud_type: Literal["ALL", "SECURE", "COMMUNITY"] = "ALL"


def from_settings(settings: RunPodSettings, secrets: Secrets) -> RunPodProvider:
    return RunPodProvider(
        secrets.require(settings.api_key_env, "runpod"),
        key_env=settings.api_key_env,
        api_url=settings.api_url,
        bid_margin=settings.bid_margin,
        cloud_type=settings.cloud_type,
        remote=secrets.remote(),
    )
