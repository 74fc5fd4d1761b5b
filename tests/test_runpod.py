"""The RunPod provider against a fake of RunPod's REST API v2 on 127.0.0.1 that validates
every request and reply against RunPod's published OpenAPI document
(tests/fakes/runpod_openapi.json)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import paramiko
import pytest
import requests

from respawn.provisioning import calls
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
from respawn.provisioning.remote import Remote
from respawn.provisioning.runpod import RunPodProvider, RunPodSettings
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
    f.url = f.start()  # type: ignore[attr-defined]
    yield f
    f.stop()


def provider(
    fake: FakeRunPod, key: str = "runpod-test-key", cloud: str = "ALL", remote: object = None
) -> RunPodProvider:
    return RunPodProvider(key, api_url=fake.url, cloud_type=cloud, remote=remote)  # type: ignore[attr-defined]


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


def send(fake: FakeRunPod, method: str, path: str, **kw: object) -> requests.Response:
    return requests.request(
        method,
        fake.url + path,  # type: ignore[attr-defined]
        headers={"Authorization": f"Bearer {fake.api_key}"},
        timeout=5,
        **kw,  # type: ignore[arg-type]
    )


# -- the fake holds to RunPod's document -----------------------------------------------------


def test_the_fake_refuses_graphql_era_fields_by_name_with_a_problem_body(
    fake: FakeRunPod,
) -> None:
    body = {
        "name": "x",
        "imageName": "img",  # v1/GraphQL spelling
        "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1},
        "env": [{"key": "K", "value": "V"}],  # v2 wants an object
    }
    r = send(fake, "POST", "/v2/pods", json=body)
    assert r.status_code == 422
    doc = r.json()
    assert doc["status"] == 422 and all(isinstance(e, str) for e in doc["errors"])
    assert "imageName" in r.text and "$.env" in r.text
    assert fake.pods == {}


def test_the_fake_catalog_requires_product_with_availability(fake: FakeRunPod) -> None:
    assert (
        send(fake, "GET", "/v2/catalog/gpus", params={"include": "AVAILABILITY"}).status_code == 400
    )
    assert send(fake, "GET", "/v2/catalog/gpus", params={"count": "2"}).status_code == 400
    r = send(fake, "GET", "/v2/catalog/gpus", params={"include": "AVAILABILITY", "product": "POD"})
    assert r.status_code == 200 and r.json()["gpus"][0]["availability"] == "HIGH"


def test_an_old_graphql_api_url_reaches_the_rest_api_on_the_same_host(fake: FakeRunPod) -> None:
    settings = RunPodSettings(api_url=fake.url + "/graphql")  # type: ignore[attr-defined]
    p = RunPodProvider("runpod-test-key", api_url=settings.api_url)
    assert p.offers(RES)[0].id == "community:NVIDIA H100 80GB HBM3"


# -- offers ----------------------------------------------------------------------------------


def test_offers_are_on_demand_community_first_then_secure(fake: FakeRunPod) -> None:
    offers = provider(fake).offers(RES)
    assert [(o.id, o.price_per_hour, o.market) for o in offers] == [
        ("community:NVIDIA H100 80GB HBM3", 1.99, "on_demand"),
        ("secure:NVIDIA H100 80GB HBM3", 2.69, "on_demand"),
    ]
    assert {q["cloud"] for q in fake.catalog_queries} == {"COMMUNITY", "SECURE"}
    assert all(
        q["include"] == "AVAILABILITY" and q["product"] == "POD" and q["count"] == "1"
        for q in fake.catalog_queries
    )
    assert provider(fake, cloud="SECURE").offers(RES)[0].id == "secure:NVIDIA H100 80GB HBM3"


def test_family_name_matches_every_runpod_h100(fake: FakeRunPod) -> None:
    res = RES.model_copy(update={"gpus": ("H100",)})
    assert sorted({o.gpu_name for o in provider(fake).offers(res)}) == [
        "NVIDIA H100 80GB HBM3",
        "NVIDIA H100 PCIe",
    ]


def test_multi_gpu_offers_price_every_gpu_and_ask_stock_for_that_count(fake: FakeRunPod) -> None:
    res = RES.model_copy(update={"gpu_count": 4, "max_price_per_hour": 30.0})
    offers = provider(fake).offers(res)
    assert [(o.id, o.price_per_hour) for o in offers] == [
        ("community:NVIDIA H100 80GB HBM3", 7.96),
        ("secure:NVIDIA H100 80GB HBM3", 10.76),
    ]
    assert {q["count"] for q in fake.catalog_queries} == {"4"}


def test_out_of_stock_is_no_offer(fake: FakeRunPod) -> None:
    res = RES.model_copy(update={"gpu_count": 8, "max_price_per_hour": 30.0})
    assert provider(fake).offers(res) == []  # availability NONE for 8 in both clouds


def test_a_spot_only_run_gets_no_runpod_offer_and_failover_says_why(fake: FakeRunPod) -> None:
    res = RES.model_copy(update={"market": "interruptible"})
    p = provider(fake)
    assert p.offers(res) == []
    with pytest.raises(ProviderError, match="runpod: rents on_demand only"):
        launch_first_fit(["runpod"], {"runpod": p}, res, lambda _n, _o: spec())
    assert fake.count("createPod") == 0


def test_spot_then_on_demand_falls_back_to_runpod(fake: FakeRunPod) -> None:
    res = RES.model_copy(update={"market": "interruptible_then_on_demand"})
    inst, offer = launch_first_fit(["runpod"], {"runpod": provider(fake)}, res, lambda *_: spec())
    assert offer.market == "on_demand" and inst.name == "respawn-job-g3"


# -- create ----------------------------------------------------------------------------------


def test_create_sends_the_documented_nested_body(fake: FakeRunPod) -> None:
    p = provider(fake)
    tricky = 'he said "hi" \\ and } left'
    inst = p.launch(p.offers(RES)[0], spec({"RESPAWN_RUN": "job", "NOTE": tricky}))
    sent = fake.deploy_inputs[-1]
    assert sent["gpu"] == {"id": "NVIDIA H100 80GB HBM3", "count": 1}
    assert sent["cloud"] == "COMMUNITY"  # said: RunPod's default would be SECURE
    assert sent["env"] == {"RESPAWN_RUN": "job", "NOTE": tricky}
    assert sent["name"] == "respawn-job-g3" and sent["image"] == "img:2" and sent["disk"] == 200
    assert sent["ports"] == ["22/tcp"] and sent["startSsh"] is True
    assert fake.pods[inst.id]["env"]["NOTE"] == tricky
    assert inst.state == InstanceState.PENDING and inst.generation == 3
    assert inst.price_per_hour == 1.99 and inst.interruptible is False
    assert inst.created_at is not None


def test_with_an_ssh_key_the_pod_gets_respawns_public_key(fake: FakeRunPod) -> None:
    """`startSsh` alone injects only the account's registered keys: respawn's own key is put
    in PUBLIC_KEY so restart in place needs no key registered at RunPod."""
    key = paramiko.RSAKey.generate(1024)
    p = provider(fake, remote=Remote(key))
    inst = p.launch(p.offers(RES)[0], spec())
    public = fake.pods[inst.id]["env"]["PUBLIC_KEY"]
    assert public.startswith(f"ssh-rsa {key.get_base64()}")
    other = provider(fake).launch(p.offers(RES)[0], spec())
    assert "PUBLIC_KEY" not in fake.pods[other.id]["env"]  # RunPod fills in the account's keys


def test_pod_costing_more_than_the_cap_is_terminated(fake: FakeRunPod) -> None:
    fake.overcharge = 0.5
    p = provider(fake)
    with pytest.raises(VerificationError, match="cap"):
        p.launch(p.offers(RES)[0], spec(cap=2.2))
    assert fake.pods == {}


def test_400_no_capacity_fails_over_to_the_secure_cloud(fake: FakeRunPod) -> None:
    p = provider(fake)
    offers = p.offers(RES)
    fake.unplaceable.add(("NVIDIA H100 80GB HBM3", "COMMUNITY"))  # taken since the listing
    inst, offer = launch_first_fit(["runpod"], {"runpod": p}, RES, lambda *_: spec())
    assert [o.id.split(":")[0] for o in offers] == ["community", "secure"]
    assert offer.id.startswith("secure:") and inst.price_per_hour == 2.69
    assert fake.count("createPod") == 2


def test_400_is_an_offer_refusal_that_quotes_runpods_detail(fake: FakeRunPod) -> None:
    p = provider(fake)
    offer = p.offers(RES)[0]
    fake.types["NVIDIA H100 80GB HBM3"].stock["COMMUNITY"] = 0
    with pytest.raises(NoCapacityError, match="HTTP 400: There are no longer any instances"):
        p.launch(offer, spec())
    assert fake.count("createPod") == 1  # never retried


def test_403_on_a_gpu_pool_is_the_next_offer_not_a_bad_key(fake: FakeRunPod) -> None:
    res = RES.model_copy(update={"gpus": ("H100",)})
    fake.forbidden_types.add("NVIDIA H100 80GB HBM3")
    inst, offer = launch_first_fit(["runpod"], {"runpod": provider(fake)}, res, lambda *_: spec())
    assert offer.gpu_name == "NVIDIA H100 PCIe" and inst.price_per_hour == 2.39


def test_402_no_balance_stops_at_the_first_runpod_offer(fake: FakeRunPod) -> None:
    """No balance fails every offer alike (RunPod: "no candidate will succeed"): failover
    moves on to the next provider instead of spending a create on each RunPod offer."""
    fake.no_balance = True
    with pytest.raises(ProviderError, match=r"HTTP 402.*add funds") as e:
        launch_first_fit(["runpod"], {"runpod": provider(fake)}, RES, lambda *_: spec())
    assert not isinstance(e.value, NoCapacityError | InvalidCredentialsError)
    assert fake.count("createPod") == 1


def test_422_quotes_runpods_errors_and_is_never_retried(fake: FakeRunPod) -> None:
    p = provider(fake)
    offer = p.offers(RES)[0]
    fake.echo_invalid_input = True
    said = r"HTTP 422: Request validation failed\.; \$: got invalid"
    with pytest.raises(ProviderError, match=said) as e:
        p.launch(offer, spec())
    assert e.value.retryable is False and not isinstance(e.value, NoCapacityError)
    assert fake.count("createPod") == 1


def test_lost_create_answer_adopts_the_pod_by_name(
    fake: FakeRunPod, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(calls, "TIMEOUT_SECONDS", 0.3)  # the client gives up before the answer
    p = provider(fake)
    offer = p.offers(RES)[0]
    fake.fail("createPod", Fault(delay=0.8, lost_answer=True))
    inst = p.launch(offer, spec())
    assert fake.count("createPod") == 1, "a create must never be retried blind"
    assert list(fake.pods) == [inst.id] and inst.name == "respawn-job-g3"


def test_5xx_on_create_is_not_retried_and_nothing_made_is_reported(fake: FakeRunPod) -> None:
    p = provider(fake)
    offer = p.offers(RES)[0]
    fake.fail("createPod", Fault(status=503))
    with pytest.raises(TransientProviderError, match="nothing made"):
        p.launch(offer, spec())
    assert fake.count("createPod") == 1 and fake.pods == {}


# -- listing, states, terminate --------------------------------------------------------------


def test_listing_finds_pods_by_exact_name_with_the_direct_ssh_address(fake: FakeRunPod) -> None:
    p = provider(fake)
    fake.loading_polls = 2  # the launch's own read-back is one poll
    p.launch(p.offers(RES)[0], spec())
    fake.add_pod("respawn-job-x-g1")  # run `job-x`, not `job`
    fake.add_pod("someone-elses-pod")
    fake.ssh_port = 40022
    states = [p.list_instances("job")[0] for _ in range(4)]
    assert [s.state for s in states] == [InstanceState.PENDING] * 3 + [InstanceState.RUNNING]
    assert [s.detail for s in states[:3]] == ["PROVISIONING", "STARTING", "STARTING"]
    assert (states[0].ssh_host, states[0].ssh_port) == (None, None)
    assert (states[-1].ssh_host, states[-1].ssh_port) == ("127.0.0.1", 40022)
    assert [i.run for i in p.list_all()] == ["job", "job-x"]
    assert p.list_instances("jo") == []


@pytest.mark.parametrize("status", ["EXITED", "ERROR"])
def test_an_exited_or_failed_pod_is_stopped_not_gone(fake: FakeRunPod, status: str) -> None:
    fake.add_pod("respawn-job-g1", status=status)
    [inst] = provider(fake).list_instances("job")
    assert inst.state == InstanceState.STOPPED and inst.billing and inst.detail == status


def test_a_preempted_pod_is_stopped(fake: FakeRunPod) -> None:
    p = provider(fake)
    inst = p.launch(p.offers(RES)[0], spec())
    fake.preempt(inst.id)
    assert p.list_instances("job")[0].state == InstanceState.STOPPED


def test_terminate_deletes_and_a_missing_pod_is_fine(fake: FakeRunPod) -> None:
    pod_id = fake.add_pod("respawn-job-g1")
    p = provider(fake)
    p.terminate(pod_id)
    p.terminate(pod_id)
    assert fake.pods == {} and fake.count("deletePod") == 2


def test_bad_key_is_fatal_and_names_the_variable(fake: FakeRunPod) -> None:
    with pytest.raises(InvalidCredentialsError, match="RUNPOD_API_KEY"):
        provider(fake, key="nope").list_instances("job")
    assert fake.count("listPods") == 1


def test_403_on_a_read_is_a_key_without_permission(fake: FakeRunPod) -> None:
    body = b'{"title": "Forbidden", "status": 403, "detail": "access denied"}'
    fake.fail("listPods", Fault(status=403, body=body))
    with pytest.raises(InvalidCredentialsError, match=r"access denied.*lacks a permission"):
        provider(fake).list_instances("job")


def test_an_answer_without_the_pod_list_is_not_an_empty_fleet(fake: FakeRunPod) -> None:
    fake.fail("listPods", Fault(status=200, body=b'{"items": [{"env": {"K": "secret"}}]}'))
    with pytest.raises(ProviderError, match=r"no `pods` list \(\['items'\]\)") as e:
        provider(fake).list_instances("job")
    assert "secret" not in str(e.value)


def test_5xx_retried_then_transient(fake: FakeRunPod) -> None:
    fake.fail("listPods", Fault(status=500))
    assert provider(fake).list_instances("job") == []
    fake.fail("listPods", *[Fault(status=503)] * 5)
    with pytest.raises(TransientProviderError):
        provider(fake).list_instances("job")


def test_429_waits_for_retry_after(fake: FakeRunPod, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(calls, "sleep", waits.append)
    body = b'{"title": "Too Many Requests", "status": 429, "detail": "rate limit exceeded"}'
    fake.fail("listGpuTypes", Fault(status=429, body=body, headers={"Retry-After": "12"}))
    assert provider(fake, cloud="COMMUNITY").offers(RES)
    assert waits == [12.0] and fake.count("listGpuTypes") == 2


def test_check_live_finds_nothing_wrong_with_the_documented_shapes(fake: FakeRunPod) -> None:
    p = provider(fake)
    p.launch(p.offers(RES)[0], spec())
    assert p.check_live() == []


def test_check_live_names_a_field_that_changed(fake: FakeRunPod) -> None:
    body = b'{"gpus": [{"id": "X", "name": "X", "memory": "24", "secure": true}]}'
    fake.fail("listGpuTypes", Fault(status=200, body=body))
    problems = provider(fake).check_live()
    assert "runpod gpu type X: field 'memory' is str, expected int or float" in problems
    assert "runpod gpu type X: field 'community' is missing" in problems


def test_a_changed_catalog_field_is_no_offer_not_a_crash(fake: FakeRunPod) -> None:
    row = {
        "id": "NVIDIA H100 80GB HBM3",
        "name": "H100 SXM",
        "memory": "80",
        "community": True,
        "price": {"community": "1.99"},
        "maxCount": {"community": "8"},
        "availability": "HIGH",
    }
    fake.fail("listGpuTypes", Fault(status=200, body=json.dumps({"gpus": [row]}).encode()))
    assert provider(fake, cloud="COMMUNITY").offers(RES) == []
