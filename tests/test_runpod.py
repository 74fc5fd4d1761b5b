"""The RunPod provider against a fake RunPod GraphQL API on 127.0.0.1 that executes every
document against RunPod's schema (tests/fakes/runpod_schema.graphql)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from respawn.provisioning.base import (
    InstanceState,
    InvalidCredentialsError,
    LaunchSpec,
    NoCapacityError,
    ProviderError,
    Resources,
    TransientProviderError,
    VerificationError,
)
from respawn.provisioning.failover import launch_first_fit
from respawn.provisioning.runpod import DEPLOY, GPU_TYPES, POD, PODS, TERMINATE, RunPodProvider
from tests.fakes.http import Fault
from tests.fakes.runpod import FakeRunPod

RES = Resources(
    gpus=("H100_SXM",),
    gpu_count=1,
    min_vram_gb=80,
    disk_gb=200,
    max_price_per_hour=3.0,
    market="on_demand",
)


@pytest.fixture
def fake() -> Iterator[FakeRunPod]:
    f = FakeRunPod()
    f.url = f.start() + "/graphql"  # type: ignore[attr-defined]
    yield f
    f.stop()


def provider(fake: FakeRunPod, key: str = "runpod-test-key", cloud: str = "ALL") -> RunPodProvider:
    return RunPodProvider(key, api_url=fake.url, cloud_type=cloud)  # type: ignore[attr-defined]


def spec(env: dict[str, str] | None = None, cap: float = 3.0) -> LaunchSpec:
    return LaunchSpec(
        run="job",
        generation=3,
        image="img:2",
        disk_gb=200,
        max_price_per_hour=cap,
        market="on_demand",
        env=env or {"RESPAWN_RUN": "job"},
    )


def post(fake: FakeRunPod, query: str, variables: dict | None = None) -> requests.Response:
    return requests.post(
        fake.url,  # type: ignore[attr-defined]
        json={"query": query, "variables": variables or {}},
        headers={"Authorization": f"Bearer {fake.api_key}"},
        timeout=5,
    )


@pytest.mark.parametrize("document", [GPU_TYPES, DEPLOY, POD, PODS, TERMINATE])
def test_every_document_respawn_sends_validates_against_the_schema(
    fake: FakeRunPod, document: str
) -> None:
    r = post(fake, document)  # no variables: only validation errors can be about the document
    assert r.status_code == 200 or "Variable" in r.text, r.text


def test_the_fake_rejects_a_misspelt_field_and_the_removed_spot_mutation(
    fake: FakeRunPod,
) -> None:
    r = post(fake, "query { myself { pods { id desiredStatuss } } }")
    assert r.status_code == 400 and "desiredStatuss" in r.text
    r = post(fake, "mutation { podRentInterruptable(input: {bidPerGpu: 1.0}) { id } }")
    assert r.status_code == 400 and "podRentInterruptable" in r.text


def test_the_fake_accepts_inline_arguments_as_the_runpod_sdk_sends_them(
    fake: FakeRunPod,
) -> None:
    inline = (
        'mutation { podFindAndDeployOnDemand(input: { name: "x", imageName: "img", '
        'cloudType: COMMUNITY, gpuTypeId: "NVIDIA GeForce RTX 4090", gpuCount: 1, '
        'dataCenterId: null, env: [{ key: "K", value: "V" }] }) '
        "{ id imageName env machineId machine { podHostId } } }"
    )
    r = post(fake, inline)
    assert r.status_code == 200 and r.json()["data"]["podFindAndDeployOnDemand"]["env"] == ["K=V"]


def test_offers_are_on_demand_community_first_then_secure(fake: FakeRunPod) -> None:
    offers = provider(fake).offers(RES)
    assert [(o.id, o.price_per_hour, o.market) for o in offers] == [
        ("community:NVIDIA H100 80GB HBM3", 1.99, "on_demand"),
        ("secure:NVIDIA H100 80GB HBM3", 2.69, "on_demand"),
    ]
    assert provider(fake, cloud="SECURE").offers(RES)[0].id == "secure:NVIDIA H100 80GB HBM3"


def test_family_name_matches_every_runpod_h100(fake: FakeRunPod) -> None:
    res = RES.model_copy(update={"gpus": ("H100",)})
    assert sorted({o.gpu_name for o in provider(fake).offers(res)}) == [
        "NVIDIA H100 80GB HBM3",
        "NVIDIA H100 PCIe",
    ]


def test_a_spot_only_run_gets_no_runpod_offer_and_failover_says_why(fake: FakeRunPod) -> None:
    res = RES.model_copy(update={"market": "interruptible"})
    p = provider(fake)
    assert p.offers(res) == []
    with pytest.raises(ProviderError, match="runpod: rents on_demand only"):
        launch_first_fit(["runpod"], {"runpod": p}, res, lambda _n, _o: spec())
    assert fake.count("podFindAndDeployOnDemand") == 0


def test_spot_then_on_demand_falls_back_to_runpod(fake: FakeRunPod) -> None:
    res = RES.model_copy(update={"market": "interruptible_then_on_demand"})
    inst, offer = launch_first_fit(["runpod"], {"runpod": provider(fake)}, res, lambda *_: spec())
    assert offer.market == "on_demand" and inst.name == "respawn-job-g3"


def test_out_of_stock_is_no_offer(fake: FakeRunPod) -> None:
    res = RES.model_copy(update={"gpu_count": 8, "max_price_per_hour": 30.0})
    assert provider(fake).offers(res) == []


def test_launch_sends_values_as_variables(fake: FakeRunPod) -> None:
    p = provider(fake)
    tricky = 'he said "hi" \\ and } left'  # would break a query built by string pasting
    inst = p.launch(p.offers(RES)[0], spec({"RESPAWN_RUN": "job", "NOTE": tricky}))
    sent = fake.deploy_inputs[-1]
    assert sent["cloudType"] == "COMMUNITY" and sent["gpuTypeId"] == "NVIDIA H100 80GB HBM3"
    assert sent["gpuCount"] == 1 and sent["name"] == "respawn-job-g3"
    assert "bidPerGpu" not in sent
    assert {"key": "NOTE", "value": tricky} in sent["env"]
    assert inst.state == InstanceState.PENDING and inst.generation == 3
    assert inst.price_per_hour == 1.99


def test_pod_costing_more_than_the_cap_is_terminated(fake: FakeRunPod) -> None:
    fake.overcharge = 0.5
    p = provider(fake)
    with pytest.raises(VerificationError, match="cap"):
        p.launch(p.offers(RES)[0], spec(cap=2.2))
    assert fake.pods == {}


@pytest.mark.parametrize(
    "text",
    [
        "There are no longer any instances available with the requested specifications. "
        "Please refresh and try again.",
        "There are no instances available with the request specifications",
        "There are no longer any instances available with enough disk space.",
        "No compatible CUDA host is currently available.",
    ],
)
def test_no_capacity_texts_move_on_to_the_next_offer(fake: FakeRunPod, text: str) -> None:
    p = provider(fake)
    fake.no_capacity_text = text
    offers = [o for o in p.offers(RES) if o.id.startswith("community")]
    fake.types["NVIDIA H100 80GB HBM3"].stock["COMMUNITY"] = 0
    with pytest.raises(NoCapacityError):
        p.launch(offers[0], spec())


def test_community_full_fails_over_to_secure(fake: FakeRunPod) -> None:
    p = provider(fake)
    offers = p.offers(RES)
    fake.types["NVIDIA H100 80GB HBM3"].stock["COMMUNITY"] = 0  # taken since the listing
    fake.no_capacity_text = "There are no instances available with the request specifications"
    inst, offer = launch_first_fit(["runpod"], {"runpod": p}, RES, lambda *_: spec())
    assert [o.id.split(":")[0] for o in offers] == ["community", "secure"]
    assert offer.id.startswith("secure:") and inst.price_per_hour == 2.69


def test_listing_finds_pods_by_exact_name_with_ssh_port(fake: FakeRunPod) -> None:
    p = provider(fake)
    fake.loading_polls = 2  # the launch's own read-back is one poll
    p.launch(p.offers(RES)[0], spec())
    fake.ssh_port = 40022
    states = [p.list_instances("job")[0] for _ in range(3)]
    assert states[0].state == InstanceState.PENDING
    assert states[-1].state == InstanceState.RUNNING
    assert (states[-1].ssh_host, states[-1].ssh_port) == ("127.0.0.1", 40022)
    assert p.list_instances("jo") == []


def test_stopped_pod_is_stopped_not_gone(fake: FakeRunPod) -> None:
    p = provider(fake)
    inst = p.launch(p.offers(RES)[0], spec())
    fake.preempt(inst.id)
    assert p.list_instances("job")[0].state == InstanceState.STOPPED


def test_terminate_missing_pod_is_fine(fake: FakeRunPod) -> None:
    provider(fake).terminate("pod9999")
    assert fake.count("podTerminate") == 1


def test_bad_key_is_fatal(fake: FakeRunPod) -> None:
    with pytest.raises(InvalidCredentialsError, match="RUNPOD_API_KEY"):
        provider(fake, key="nope").list_instances("job")
    assert fake.count("myself") == 1


def test_unknown_account_is_not_an_empty_fleet(fake: FakeRunPod) -> None:
    fake.unknown_account = True  # `myself: null`, no error (runpodctl#46)
    with pytest.raises(InvalidCredentialsError, match="RUNPOD_API_KEY"):
        provider(fake).list_instances("job")


def test_5xx_retried_then_transient(fake: FakeRunPod) -> None:
    fake.fail("myself", Fault(status=500))
    assert provider(fake).list_instances("job") == []
    fake.fail("myself", *[Fault(status=503)] * 5)
    with pytest.raises(TransientProviderError):
        provider(fake).list_instances("job")


def test_the_real_runpod_sdk_works_against_the_fake(
    fake: FakeRunPod, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runpod SDK builds its documents with inline arguments: the fake parses, validates
    and executes them against the same schema as respawn's variables."""
    import runpod
    from runpod import error

    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake.url.removesuffix("/graphql"))  # type: ignore[attr-defined]
    monkeypatch.setattr(runpod, "api_key", fake.api_key)
    pod = runpod.create_pod(
        "respawn-sdk-g1", "img:1", "NVIDIA GeForce RTX 4090", cloud_type="COMMUNITY", env={"A": "b"}
    )
    assert pod["env"] == ["A=b"] and fake.deploy_inputs[-1]["cloudType"] == "COMMUNITY"
    assert runpod.get_pod(pod["id"])["name"] == "respawn-sdk-g1"
    assert [p["id"] for p in runpod.get_pods()] == [pod["id"]]
    runpod.terminate_pod(pod["id"])
    assert fake.pods == {}
    # Why respawn sends variables: the SDK pastes values into the document.
    with pytest.raises(error.QueryError, match="Syntax Error"):
        runpod.create_pod("respawn-sdk-g2", "img:1", "NVIDIA GeForce RTX 4090", env={"A": 'x"y'})
