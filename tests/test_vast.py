"""The Vast provider, with the real vastai SDK pointed at a fake Vast API on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
from respawn.provisioning.vast import VastProvider
from tests.fakes.http import Fault
from tests.fakes.vast import FakeVast

RES = Resources(
    gpus=("RTX_4090",), gpu_count=1, min_vram_gb=20, disk_gb=100, max_price_per_hour=0.30
)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calls, "BACKOFF_SECONDS", 0.0)


@pytest.fixture
def fake() -> Iterator[FakeVast]:
    f = FakeVast()
    f.url = f.start()  # type: ignore[attr-defined]
    yield f
    f.stop()


def provider(fake: FakeVast, key: str = "vast-test-key") -> VastProvider:
    return VastProvider(key, server_url=fake.url, bid_margin=0.1)  # type: ignore[attr-defined]


def spec(gen: int = 1, run: str = "job") -> LaunchSpec:
    return LaunchSpec(
        run=run,
        generation=gen,
        image="img:1",
        disk_gb=100,
        max_price_per_hour=0.30,
        env={"RESPAWN_RUN": run, "HF_TOKEN": "s3cr3t"},
    )


def test_offers_are_bids_filtered_and_ranked(fake: FakeVast) -> None:
    offers = provider(fake).offers(RES)
    # The H100 is filtered by name; both 4090s bid min_bid * 1.1, cheapest first.
    assert [(o.id, o.price_per_hour) for o in offers] == [("102", 0.165), ("101", 0.22)]
    assert offers[0].min_bid == 0.15 and offers[0].vram_gb == pytest.approx(24, abs=0.1)


def test_price_cap_excludes_offers_whose_minimum_bid_is_above_it(fake: FakeVast) -> None:
    res = RES.model_copy(update={"max_price_per_hour": 0.16})
    assert [(o.id, o.price_per_hour) for o in provider(fake).offers(res)] == [("102", 0.16)]


def test_launch_bids_labels_and_passes_the_environment(fake: FakeVast) -> None:
    p = provider(fake)
    offer = p.offers(RES)[0]
    inst = p.launch(offer, spec())
    assert inst.name == "respawn-job-g1" and inst.generation == 1
    assert inst.state == InstanceState.PENDING
    body = fake.bodies[-1]
    assert body["price"] == 0.165 and body["label"] == "respawn-job-g1"
    assert body["env"]["HF_TOKEN"] == "s3cr3t" and body["image"] == "img:1"
    assert "onstart.sh" in body["onstart"] and body["disk"] == 100
    assert "s3cr3t" not in repr(spec())  # the spec never prints its secrets


def test_on_demand_rental_is_destroyed(fake: FakeVast) -> None:
    fake.ignore_price = True  # a create that silently rents on-demand
    p = provider(fake)
    with pytest.raises(ProviderError, match="on-demand"):
        p.launch(p.offers(RES)[0], spec())
    assert fake.instances == {}


def test_bid_instance_created_stopped_is_destroyed(fake: FakeVast) -> None:
    p = provider(fake)
    offer = p.offers(RES)[0].model_copy(update={"price_per_hour": 0.01})  # under min_bid
    with pytest.raises(VerificationError, match="created stopped"):
        p.launch(offer, spec())
    assert fake.instances == {}


def test_offer_taken_is_no_capacity(fake: FakeVast) -> None:
    p = provider(fake)
    offer = p.offers(RES)[0]
    fake.offers.pop(int(offer.id))
    with pytest.raises(NoCapacityError, match="gone"):
        p.launch(offer, spec())


def test_listing_matches_labels_exactly_and_pages(fake: FakeVast) -> None:
    for gen in range(1, 28):  # more than one page of 25
        fake.add_instance(f"respawn-job-g{gen}")
    fake.add_instance("respawn-job-b-g1")  # run "job-b", not "job"
    fake.add_instance("someone-elses-box")
    job = provider(fake).list_instances("job")
    assert sorted(i.generation for i in job) == list(range(1, 28))
    assert [i.name for i in provider(fake).list_instances("job-b")] == ["respawn-job-b-g1"]
    assert fake.count("list") >= 2


def test_listing_counts_every_billing_state(fake: FakeVast) -> None:
    p = provider(fake)
    fake.stuck_loading = True
    loading = p.launch(p.offers(RES)[0], spec(1))
    running = fake.add_instance("respawn-job-g2")
    paused = fake.add_instance("respawn-job-g3")
    fake.outbid(paused)
    states = {i.id: i.state for i in p.list_instances("job")}
    assert states == {
        loading.id: InstanceState.PENDING,
        str(running): InstanceState.RUNNING,
        str(paused): InstanceState.STOPPED,
    }
    fake.resume(paused)  # Vast resumes an outbid instance on its own
    assert {i.id: i.state for i in p.list_instances("job")}[str(paused)] == InstanceState.RUNNING


def test_loading_becomes_running(fake: FakeVast) -> None:
    p = provider(fake)
    inst = p.launch(p.offers(RES)[0], spec())
    states = [p.list_instances("job")[0].state for _ in range(3)]
    assert states[0] == InstanceState.PENDING and states[-1] == InstanceState.RUNNING
    assert inst.ssh_host == "127.0.0.1"


@pytest.mark.parametrize(
    "fault",
    [Fault(status=503), Fault(status=429, headers={"Retry-After": "0"}), Fault(malformed=True)],
    ids=["5xx", "429", "malformed-json"],
)
def test_transient_failures_are_retried(fake: FakeVast, fault: Fault) -> None:
    fake.fail("list", fault)
    fake.add_instance("respawn-job-g1")
    assert len(provider(fake).list_instances("job")) == 1
    assert fake.count("list") == 2


def test_persistent_failure_is_transient_error_after_bounded_retries(fake: FakeVast) -> None:
    fake.fail("list", *[Fault(status=502)] * 10)
    with pytest.raises(TransientProviderError, match="HTTP 502"):
        provider(fake).list_instances("job")
    assert fake.count("list") == calls.ATTEMPTS


def test_timeout_is_transient(fake: FakeVast, monkeypatch: pytest.MonkeyPatch) -> None:
    p = provider(fake)
    p.sdk.client.timeout = 0.2
    fake.fail("list", *[Fault(status=200, delay=0.6)] * calls.ATTEMPTS)
    with pytest.raises(TransientProviderError, match="Timeout"):
        p.list_instances("job")


def test_bad_key_is_fatal_and_not_retried(fake: FakeVast) -> None:
    with pytest.raises(InvalidCredentialsError, match="VAST_API_KEY"):
        provider(fake, key="wrong").list_instances("job")
    assert fake.count("list") == 1


def test_terminate_missing_instance_is_fine(fake: FakeVast) -> None:
    p = provider(fake)
    iid = fake.add_instance("respawn-job-g1")
    p.terminate(str(iid))
    p.terminate(str(iid))
    assert fake.instances == {}


def test_rate_limit_waits_for_retry_after(fake: FakeVast, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(calls, "sleep", waits.append)
    fake.fail("list", Fault(status=429, headers={"Retry-After": "7"}))
    provider(fake).list_instances("job")
    assert waits == [7.0]  # backoff is 0 here: only Retry-After made it wait
    assert fake.count("list") == 2
