"""The RunPod provider against a fake RunPod GraphQL API on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from respawn.provisioning import calls
from respawn.provisioning.base import (
    InstanceState,
    InvalidCredentialsError,
    LaunchSpec,
    NoCapacityError,
    Resources,
    TransientProviderError,
    VerificationError,
)
from respawn.provisioning.runpod import RunPodProvider
from tests.fakes.http import Fault
from tests.fakes.runpod import FakeRunPod

RES = Resources(
    gpus=("H100_SXM",), gpu_count=1, min_vram_gb=80, disk_gb=200, max_price_per_hour=2.0
)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calls, "BACKOFF_SECONDS", 0.0)


@pytest.fixture
def fake() -> Iterator[FakeRunPod]:
    f = FakeRunPod()
    f.url = f.start() + "/graphql"  # type: ignore[attr-defined]
    yield f
    f.stop()


def provider(fake: FakeRunPod, key: str = "runpod-test-key") -> RunPodProvider:
    return RunPodProvider(key, api_url=fake.url, bid_margin=0.1)  # type: ignore[attr-defined]


def spec(env: dict[str, str] | None = None) -> LaunchSpec:
    return LaunchSpec(
        run="job",
        generation=3,
        image="img:2",
        disk_gb=200,
        max_price_per_hour=2.0,
        env=env or {"RESPAWN_RUN": "job"},
    )


def test_offers_bid_over_minimum_per_gpu(fake: FakeRunPod) -> None:
    (offer,) = provider(fake).offers(RES)
    assert offer.id == "NVIDIA H100 80GB HBM3" and offer.price_per_hour == 1.76
    assert offer.min_bid == 1.6


def test_no_spot_stock_means_no_offer(fake: FakeRunPod) -> None:
    res = RES.model_copy(update={"gpu_count": 2, "max_price_per_hour": 4.0})
    assert provider(fake).offers(res) == []


def test_launch_sends_values_as_variables(fake: FakeRunPod) -> None:
    p = provider(fake)
    tricky = 'he said "hi" \\ and } left'  # would break a query built by string pasting
    inst = p.launch(p.offers(RES)[0], spec({"RESPAWN_RUN": "job", "NOTE": tricky}))
    sent = fake.rent_inputs[-1]
    assert sent["bidPerGpu"] == 1.76 and sent["gpuCount"] == 1 and sent["name"] == "respawn-job-g3"
    assert {"key": "NOTE", "value": tricky} in sent["env"]
    assert inst.state == InstanceState.PENDING and inst.generation == 3


def test_pod_rented_above_the_bid_is_terminated(fake: FakeRunPod) -> None:
    fake.on_demand_anyway = True
    p = provider(fake)
    res = RES.model_copy(update={"max_price_per_hour": 2.5})
    with pytest.raises(VerificationError):
        p.launch(p.offers(res)[0], spec().model_copy(update={"max_price_per_hour": 2.5}))
    assert fake.pods == {}


def test_no_capacity_is_typed(fake: FakeRunPod) -> None:
    p = provider(fake)
    offer = p.offers(RES)[0]
    fake.types["NVIDIA H100 80GB HBM3"][4] = 0
    with pytest.raises(NoCapacityError):
        p.launch(offer, spec())


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


def test_preempted_pod_is_stopped_not_gone(fake: FakeRunPod) -> None:
    p = provider(fake)
    inst = p.launch(p.offers(RES)[0], spec())
    fake.preempt(inst.id)
    assert p.list_instances("job")[0].state == InstanceState.STOPPED


def test_terminate_missing_pod_is_fine(fake: FakeRunPod) -> None:
    provider(fake).terminate("pod9999")  # no error: it is gone, which is what was asked
    assert fake.count("podTerminate") == 1, "the terminate must still be sent"


def test_bad_key_is_fatal(fake: FakeRunPod) -> None:
    with pytest.raises(InvalidCredentialsError, match="RUNPOD_API_KEY"):
        provider(fake, key="nope").list_instances("job")
    assert fake.count("myself") == 1


def test_5xx_retried_then_transient(fake: FakeRunPod) -> None:
    fake.fail("myself", Fault(status=500))
    assert provider(fake).list_instances("job") == []
    fake.fail("myself", *[Fault(status=503)] * 5)
    with pytest.raises(TransientProviderError):
        provider(fake).list_instances("job")
