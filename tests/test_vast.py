"""The Vast provider, with the real vastai SDK pointed at a fake Vast API on 127.0.0.1."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from respawn.provisioning import calls
from respawn.provisioning import vast as vast_adapter
from respawn.provisioning.base import (
    InstanceState,
    InvalidCredentialsError,
    LaunchSpec,
    NoCapacityError,
    ProviderError,
    QuotaExceededError,
    Resources,
    TransientProviderError,
    VerificationError,
)
from respawn.provisioning.failover import launch_first_fit
from respawn.provisioning.vast import VastProvider, vast_state
from tests.fakes.http import Fault
from tests.fakes.vast import RATE_LIMITS, FakeVast

RES = Resources(
    gpus=("RTX_4090",), gpu_count=1, min_vram_gb=20, disk_gb=100, max_price_per_hour=0.30
)


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


DISK_COST = 0.15 * 100 / 720  # storage_cost $/GB/month x 100 GB / 720 h


def test_offers_are_bids_ranked_with_disk_in_the_price(fake: FakeVast) -> None:
    offers = provider(fake).offers(RES)
    # The H100 is filtered by name; both 4090s bid min_bid * 1.1 and pay the disk on top.
    assert [(o.id, o.bid) for o in offers] == [("102", 0.165), ("101", 0.22)]
    assert [o.price_per_hour for o in offers] == pytest.approx(
        [0.165 + DISK_COST, 0.22 + DISK_COST], abs=1e-5
    )
    assert offers[0].min_bid == 0.15 and offers[0].vram_gb == pytest.approx(24, abs=0.1)
    assert {o.market for o in offers} == {"interruptible"}


def test_price_cap_excludes_offers_whose_minimum_bid_plus_disk_is_above_it(
    fake: FakeVast,
) -> None:
    res = RES.model_copy(update={"max_price_per_hour": 0.15 + DISK_COST + 0.01})
    assert [o.id for o in provider(fake).offers(res)] == ["102"]
    res = RES.model_copy(update={"max_price_per_hour": 0.16})  # min bid fits, disk does not
    assert provider(fake).offers(res) == []


def test_a_bid_near_the_cap_leaves_room_for_the_disk(fake: FakeVast) -> None:
    """dph_total = bid + disk: a bid clamped to the whole cap is read back over it."""
    cap = 0.18
    p = provider(fake)
    offer = p.offers(RES.model_copy(update={"max_price_per_hour": cap}))[0]
    inst = p.launch(offer, spec().model_copy(update={"max_price_per_hour": cap}))
    assert inst.price_per_hour is not None and inst.price_per_hour <= cap
    assert fake.bodies[-1]["price"] == pytest.approx(cap - DISK_COST, abs=1e-4)


@pytest.mark.parametrize(
    ("gpus", "vram", "ids"),
    [(("RTX_4090",), 24, ["102", "101"]), (("H100",), 80, ["103"]), ((), 80, ["103"])],
)
def test_vram_is_nominal_gb(
    fake: FakeVast, gpus: tuple[str, ...], vram: int, ids: list[str]
) -> None:
    """A 4090 reports 24564 MB and an H100 80GB 81559 MB: `24` and `80` must match them."""
    res = RES.model_copy(update={"gpus": gpus, "min_vram_gb": vram, "max_price_per_hour": 5.0})
    assert [o.id for o in provider(fake).offers(res)] == ids
    reported_mb = 24564 if vram == 24 else 81559
    assert fake.searches[-1]["gpu_ram"]["gte"] <= reported_mb


def test_h100_family_searches_every_vast_spelling(fake: FakeVast) -> None:
    res = RES.model_copy(update={"gpus": ("H100",), "max_price_per_hour": 5.0})
    provider(fake).offers(res)
    assert fake.searches[-1]["gpu_name"] == {"in": ["H100 SXM", "H100 PCIE", "H100 NVL"]}


def test_on_demand_market_rents_without_a_bid(fake: FakeVast) -> None:
    res = RES.model_copy(update={"market": "on_demand", "max_price_per_hour": 0.5})
    p = provider(fake)
    offers = p.offers(res)
    assert [(o.id, o.market, o.bid) for o in offers] == [
        ("102", "on_demand", None),
        ("101", "on_demand", None),
    ]
    assert offers[0].price_per_hour == pytest.approx(0.35 + DISK_COST, abs=1e-5)
    assert fake.searches[-1]["type"] == "on-demand"
    inst = p.launch(
        offers[0], spec().model_copy(update={"market": "on_demand", "max_price_per_hour": 0.5})
    )
    assert fake.bodies[-1]["price"] is None and inst.interruptible is False


def test_spot_then_on_demand_lists_spot_first(fake: FakeVast) -> None:
    res = RES.model_copy(
        update={"market": "interruptible_then_on_demand", "max_price_per_hour": 0.5}
    )
    offers = provider(fake).offers(res)
    assert [o.market for o in offers] == ["interruptible"] * 2 + ["on_demand"] * 2


def test_launch_bids_labels_and_passes_the_environment(fake: FakeVast) -> None:
    p = provider(fake)
    offer = p.offers(RES)[0]
    inst = p.launch(offer, spec())
    assert inst.name == "respawn-job-g1" and inst.generation == 1
    assert inst.state == InstanceState.PENDING
    body = fake.bodies[-1]
    assert body["price"] == 0.165 and body["label"] == "respawn-job-g1"
    assert inst.price_per_hour == pytest.approx(0.165 + DISK_COST, abs=1e-5)
    assert body["env"]["HF_TOKEN"] == "s3cr3t" and body["image"] == "img:1"
    assert "onstart.sh" in body["onstart"] and body["disk"] == 100
    assert "s3cr3t" not in repr(spec())  # the spec never prints its secrets


def test_on_demand_rental_is_destroyed(fake: FakeVast) -> None:
    fake.ignore_price = True  # a create that silently rents on-demand
    p = provider(fake)
    with pytest.raises(ProviderError, match="on-demand"):
        p.launch(p.offers(RES)[0], spec())
    assert fake.instances == {}


@pytest.mark.parametrize("status", [200, 400, 402])
def test_created_stopped_reply_destroys_the_contract(fake: FakeVast, status: int) -> None:
    """A too-low bid: Vast creates the contract stopped and answers an error carrying its id
    and its API key. The contract is destroyed; the key appears nowhere."""
    fake.stopped_reply_status = status
    p = provider(fake)
    offer = p.offers(RES)[0]
    fake.offers[int(offer.id)]["min_bid"] = 0.25  # the market moved above our bid
    with pytest.raises(NoCapacityError, match="refused") as info:
        p.launch(offer, spec())
    assert fake.instances == {} and fake.count("destroy") == 1
    assert fake.api_keys and fake.api_keys[-1] not in str(info.value)


def test_refused_bid_moves_on_to_the_next_offer(fake: FakeVast) -> None:
    p = provider(fake)
    fake.offers[102]["min_bid"] = 0.16  # listed at 0.15, the bid of 0.165 still clears
    first = p.offers(RES)[0]
    fake.offers[102]["min_bid"] = 0.30
    inst, offer = launch_first_fit(["vast"], {"vast": p}, RES, lambda _n, _o: spec())
    assert first.id == "102" and offer.id == "101"
    assert [r["id"] for r in fake.instances.values()] == [int(inst.id)]


def test_403_on_create_refuses_the_offer_not_the_key(fake: FakeVast) -> None:
    p = provider(fake)
    fake.refuse_403.add(102)
    inst, offer = launch_first_fit(["vast"], {"vast": p}, RES, lambda _n, _o: spec())
    assert offer.id == "101" and inst.state == InstanceState.PENDING


def test_image_that_cannot_start_fails_at_once(fake: FakeVast) -> None:
    fake.created_status_msg = (
        "Error response from daemon: pull access denied for ghcr.io/lab/nope, repository "
        "does not exist"
    )
    p = provider(fake)
    with pytest.raises(VerificationError, match="pull access denied"):
        p.launch(p.offers(RES)[0], spec())
    assert fake.instances == {}


@pytest.mark.parametrize(
    ("actual", "intended", "msg", "state"),
    [
        ("running", "running", None, InstanceState.RUNNING),
        ("rebooting", "running", None, InstanceState.PENDING),  # transient: still live
        (None, "running", None, InstanceState.PENDING),
        ("created", "running", None, InstanceState.PENDING),
        ("created", "running", 'OCI runtime create failed: exec: "x"', InstanceState.STOPPED),
        ("exited", "stopped", "outbid", InstanceState.STOPPED),
        ("offline", "running", None, InstanceState.STOPPED),
        ("frozen", "frozen", None, InstanceState.PENDING),  # paused, GPU still billed
        ("running", "frozen", None, InstanceState.PENDING),  # being frozen
        ("frozen", "running", None, InstanceState.PENDING),  # being unfrozen
    ],
)
def test_vast_states(actual: str | None, intended: str, msg: str | None, state: str) -> None:
    row = {"actual_status": actual, "intended_status": intended, "status_msg": msg}
    assert vast_state(row) == state


def test_env_value_over_vasts_limit_is_refused_before_the_create(fake: FakeVast) -> None:
    p = provider(fake)
    long_spec = spec().model_copy(update={"env": {"RESPAWN_RUN": "job", "BIG": "x" * 300}})
    with pytest.raises(ProviderError, match=r"BIG.*256"):
        p.launch(p.offers(RES)[0], long_spec)
    assert fake.count("create") == 0


def test_the_fake_enforces_the_env_limit(fake: FakeVast) -> None:
    """So that every launch through the fake proves the real environment fits."""
    import requests

    r = requests.put(
        f"{fake.url}/api/v0/asks/101/",  # type: ignore[attr-defined]
        json={"env": {"X": "y" * 257}, "price": 0.3, "disk": 10},
        headers={"Authorization": f"Bearer {fake.api_key}"},
        timeout=5,
    )
    assert r.status_code == 400 and "256" in r.json()["msg"]


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
    assert fake.count("list") == 4


def test_a_failed_page_is_retried_without_restarting_the_listing(fake: FakeVast) -> None:
    for gen in range(1, 28):
        fake.add_instance(f"respawn-job-g{gen}")
    fake.fail_next_page = 1
    assert len(provider(fake).list_instances("job")) == 27
    assert fake.first_pages == 1 and fake.count("list") == 3  # page 1, page 2 (503), page 2


def test_a_row_without_start_date_does_not_fail_the_listing(fake: FakeVast) -> None:
    """The SDK's own show_instance(s) subtract from start_date and crash on null."""
    iid = fake.add_instance("respawn-job-g1", actual=None)  # type: ignore[arg-type]
    fake.instances[iid]["start_date"] = None
    fake.instances[iid]["extra_env"] = None
    p = provider(fake)
    (inst,) = p.list_instances("job")
    assert inst.created_at is None and inst.state == InstanceState.PENDING
    assert p._read_back(str(iid), spec()) is not None


def test_spent_daily_search_quota_is_not_retried(fake: FakeVast) -> None:
    fake.search_quota_spent = True
    with pytest.raises(QuotaExceededError, match="quota"):
        provider(fake).offers(RES)
    assert fake.count("search") == 1


def test_calls_are_paced_to_vasts_documented_intervals(
    fake: FakeVast, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(vast_adapter, "PACE_SECONDS", {"search": 6.0, "list": 1.0})
    monkeypatch.setattr(vast_adapter, "PACER", vast_adapter._Pacer())
    monkeypatch.setattr(vast_adapter, "_clock", lambda: 100.0)  # no time passes
    monkeypatch.setattr(vast_adapter, "_sleep", slept.append)
    p = provider(fake)
    p.offers(RES)
    p.list_instances("job")
    assert slept == []  # different endpoints do not wait for each other
    p.offers(RES)
    provider(fake).offers(RES)  # another provider object: the same account and IP
    assert slept == [6.0, 12.0]


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


def test_a_throttled_call_says_what_it_waits_for(
    fake: FakeVast, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A tick paused on a throttled provider shows why and for how long (issue 21.6)."""
    monkeypatch.setattr(calls, "sleep", lambda _s: None)
    fake.fail("list", Fault(status=429, headers={"Retry-After": "7"}))
    with caplog.at_level(logging.INFO, logger="respawn.provisioning"):
        provider(fake).list_instances("job")
    waits = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert len(waits) == 1 and "in 7 s (attempt 2 of" in waits[0]
    assert "vast" in waits[0] and "429" in waits[0]


def test_a_read_back_over_the_cap_moves_on_to_the_next_offer(fake: FakeVast) -> None:
    p = provider(fake)
    fake.overcharge[102] = 0.5  # the host bills more than the offer said
    inst, offer = launch_first_fit(["vast"], {"vast": p}, RES, lambda _n, _o: spec())
    assert offer.id == "101" and list(fake.instances) == [int(inst.id)]
    assert fake.count("destroy") == 1  # the over-priced instance was not kept


def test_a_malformed_offer_row_is_skipped_not_fatal(fake: FakeVast) -> None:
    fake.offers[101]["min_bid"] = "n/a"
    assert [o.id for o in provider(fake).offers(RES)] == ["102"]


@pytest.mark.parametrize(
    ("cond", "ids"),
    [
        ({"num_gpus": {"eq": "1"}}, [101, 102, 103]),  # the CLI sends numbers as strings
        ({"gpu_name": {"neq": "RTX 4090"}}, [103]),
        ({"min_bid": {"gt": 0.15}}, [101, 103]),
        ({"min_bid": {"gte": "0.15"}}, [101, 102, 103]),
        ({"min_bid": {"lt": 1}}, [101, 102]),
        ({"min_bid": {"lte": 0.15}}, [102]),
        ({"geolocation": {"in": ["Norway, NO", "Quebec, CA"]}}, [101, 103]),
        ({"geolocation": {"notin": ["Norway, NO"]}}, [102, 103]),
    ],
)
def test_the_fake_answers_every_documented_search_operator(
    fake: FakeVast, cond: dict, ids: list[int]
) -> None:
    import requests

    body = {**cond, "type": "bid", "order": [["id", "asc"]], "allocated_storage": 10}
    r = requests.post(
        f"{fake.url}/api/v0/bundles/",  # type: ignore[attr-defined]
        json=body,
        headers={"Authorization": f"Bearer {fake.api_key}"},
        timeout=5,
    )
    assert r.status_code == 200 and [o["id"] for o in r.json()["offers"]] == ids


# -- a create waits as long as the SDK's own create ------------------------------------------


def test_a_create_gets_the_sdks_own_wait_and_other_calls_keep_theirs(fake: FakeVast) -> None:
    from vastai.api.client import VastClient

    p = provider(fake)
    sdk_wait = inspect.signature(VastClient.__init__).parameters["timeout"].default
    assert p.create_timeout == sdk_wait == 120
    assert p.sdk.client.timeout == calls.TIMEOUT_SECONDS


def test_a_slow_create_is_waited_for_instead_of_adopted_too_early(fake: FakeVast) -> None:
    """Vast can take longer than a read's timeout to place a contract. Giving up early made the
    adapter look for the instance by name before it existed, find none, and move on to the
    next offer while the first contract was still being made: two instances, one unknown."""
    p = provider(fake)
    p.sdk.client.timeout = 0.3  # every other call's timeout (30 s), scaled down
    p.create_timeout = 3.0  # the SDK's create wait (120 s), scaled down
    fake.create_seconds = 1.0
    inst, offer = launch_first_fit(["vast"], {"vast": p}, RES, lambda _n, _o: spec())
    assert offer.id == "102" and list(fake.instances) == [int(inst.id)]
    assert fake.count("create") == 1


def test_a_create_past_the_sdks_wait_is_adopted_by_name(fake: FakeVast) -> None:
    p = provider(fake)
    p.create_timeout = 0.3
    fake.fail("create", Fault(lost_answer=True, delay=1.0))  # made, but the answer is late
    inst = p.launch(p.offers(RES)[0], spec())
    assert list(fake.instances) == [int(inst.id)] and inst.name == "respawn-job-g1"


# -- frozen still bills -----------------------------------------------------------------------


def test_a_frozen_instance_is_live_it_bills_like_a_running_one(fake: FakeVast) -> None:
    """Vast documents `frozen` as paused with its memory kept, GPU charges applying."""
    iid = fake.add_instance("respawn-job-g1")
    fake.freeze(iid)
    (inst,) = provider(fake).list_instances("job")
    assert inst.live and inst.billing


def test_a_frozen_instance_is_counted_by_the_budget_and_not_launched_over(
    fake: FakeVast,
) -> None:
    """A tick died between its create and its ledger write; the instance it made is frozen.
    The next tick records it (so the spend cap and crash-loop breaker count it) and keeps it
    as the generation's instance instead of launching a second one beside it."""
    from respawn.controller.classify import heartbeat_digest
    from respawn.controller.config import parse_config
    from respawn.controller.decide import decide
    from respawn.controller.model import HeartbeatMark, LaunchRecord, Ledger, Observation
    from respawn.store.schema import Heartbeat

    now = datetime.now(UTC)
    run = parse_config(
        """
store: {url: "file:///tmp/s"}
providers: {vast: {}}
runs:
  - name: job
    pod:
      image: img:1
      command: "train --resume {resume_step}"
      checkpoints: {sources: [{path: "s_{step}", marker: OK}]}
    resources: {max_price_per_hour: 5}
    providers: [vast]
    budget: {max_launches_per_day: 3, max_spend_per_day: 100}
"""
    ).runs[0]
    iid = fake.add_instance("respawn-job-g1")
    fake.freeze(iid)
    hb = Heartbeat(run="job", generation=1, writer="w", at=now, phase="restoring")
    seen = HeartbeatMark(generation=1, digest=heartbeat_digest(hb), at=now - timedelta(minutes=1))
    ledger = Ledger(
        run="job",
        generation=1,
        launches=(LaunchRecord(generation=1, at=now - timedelta(minutes=2)),),
        heartbeat_seen=seen,
    )
    obs = Observation(
        run="job", ledger=ledger, heartbeat=hb, instances=tuple(provider(fake).list_all())
    )
    plan = decide(run, obs, now)
    assert [a.kind for a in plan.actions] == []
    launch = plan.ledger.launch_of(1)
    assert launch is not None and launch.instance_id == str(iid)
    assert launch.price_per_hour > 0


# -- Vast's documented throttle ---------------------------------------------------------------


class Clock:
    """Time for the fake's limits and every wait of the adapter: sleeping advances it."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.waits: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.t += seconds


@pytest.fixture
def clock(fake: FakeVast, monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    fake.throttle(c.now)
    monkeypatch.setattr(calls, "sleep", c.sleep)
    monkeypatch.setattr(vast_adapter, "_sleep", c.sleep)
    monkeypatch.setattr(vast_adapter, "_clock", c.now)
    monkeypatch.setattr(vast_adapter, "PACE_SECONDS", dict(RATE_LIMITS))
    monkeypatch.setattr(vast_adapter, "PACER", vast_adapter._Pacer())
    return c


def test_the_fake_refuses_calls_closer_than_vasts_documented_interval(
    fake: FakeVast, clock: Clock
) -> None:
    import requests

    def search() -> requests.Response:
        return requests.post(
            f"{fake.url}/api/v0/bundles/",  # type: ignore[attr-defined]
            json={"type": "bid"},
            headers={"Authorization": f"Bearer {fake.api_key}"},
            timeout=5,
        )

    assert search().status_code == 200
    clock.t += 5.9
    refused = search()
    assert refused.status_code == 429 and "too frequent" in refused.json()["msg"]
    assert "Retry-After" not in refused.headers
    clock.t += 0.2
    assert search().status_code == 200


def test_a_search_refused_by_the_throttle_waits_vasts_interval_then_succeeds(
    fake: FakeVast, clock: Clock
) -> None:
    """The pacer only knows this process's calls; another tick or the CLI on the same key and
    IP can take the slot. Vast sends no Retry-After, so the adapter waits the endpoint's
    documented interval, not a backoff of a second or two that is refused again."""
    fake.called("search")  # someone else with this key just searched
    offers = provider(fake).offers(RES)
    assert [o.id for o in offers] == ["102", "101"]
    assert clock.waits == [6.0] and fake.count("search") == 2


def test_retry_after_is_honoured_when_vast_sends_one(fake: FakeVast, clock: Clock) -> None:
    fake.retry_after_header = True
    fake.called("search")
    clock.t += 4.0
    provider(fake).offers(RES)
    assert clock.waits[0] == 2.0 and fake.count("search") == 2


def test_a_create_refused_by_the_throttle_is_sent_again_after_the_penalty(
    fake: FakeVast, clock: Clock
) -> None:
    """A 429 comes from the limiter before the create is handled: nothing was made, so the
    create is safe to send again, after the full interval (one sent sooner restarts it)."""
    p = provider(fake)
    offer = p.offers(RES)[0]
    fake.called("create")
    inst = p.launch(offer, spec())
    assert list(fake.instances) == [int(inst.id)]
    assert fake.count("create") == 2 and 4.5 in clock.waits


def test_a_spent_daily_search_quota_ends_vast_for_the_tick_with_a_clear_reason(
    fake: FakeVast,
) -> None:
    fake.search_quota = 1
    p = provider(fake)
    p.offers(RES)
    with pytest.raises(QuotaExceededError, match="daily search quota") as info:
        p.offers(RES)
    assert "UTC midnight" in str(info.value)
    # The rest of the tick does not spend calls on a quota that resets at midnight.
    with pytest.raises(QuotaExceededError, match="daily search quota"):
        p.offers(RES.model_copy(update={"market": "on_demand"}))
    assert fake.count("search") == 2
    with pytest.raises(ProviderError, match="daily search quota"):
        launch_first_fit(["vast"], {"vast": p}, RES, lambda _n, _o: spec())
    assert fake.count("search") == 2
