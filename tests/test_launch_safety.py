"""A create is never retried blind: when its answer is lost, the instance it may have made is
found by its unique name, read back and verified (kept only if it is what was asked for)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from respawn.provisioning import calls
from respawn.provisioning.base import LaunchSpec, Resources, VerificationError
from respawn.provisioning.vast import VastProvider
from tests.fakes.http import Fault
from tests.fakes.vast import FakeVast

RES = Resources(gpus=("RTX_4090",), gpu_count=1, disk_gb=100, max_price_per_hour=0.3)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVast]:
    monkeypatch.setattr(calls, "BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(calls, "TIMEOUT_SECONDS", 0.3)  # the client gives up before the answer
    f = FakeVast()
    f.url = f.start()  # type: ignore[attr-defined]
    yield f
    f.stop()


def spec() -> LaunchSpec:
    return LaunchSpec(
        run="job", generation=1, image="img:1", disk_gb=100, max_price_per_hour=0.3, env={}
    )


def test_lost_create_answer_adopts_the_instance_instead_of_creating_another(
    fake: FakeVast,
) -> None:
    p = VastProvider(fake.api_key, server_url=fake.url)  # type: ignore[attr-defined]
    offer = p.offers(RES)[0]
    fake.fail("create", Fault(delay=0.8, lost_answer=True))
    inst = p.launch(offer, spec())
    assert fake.count("create") == 1, "a create must never be retried blind"
    assert list(fake.instances) == [int(inst.id)]
    assert inst.name == "respawn-job-g1" and inst.interruptible is True


def test_lost_create_answer_for_an_on_demand_instance_destroys_it(fake: FakeVast) -> None:
    """The adopted instance passes the same read-back as any other: on-demand is refused."""
    p = VastProvider(fake.api_key, server_url=fake.url)  # type: ignore[attr-defined]
    offer = p.offers(RES)[0]
    fake.ignore_price = True  # the cloud rented it on-demand
    fake.fail("create", Fault(delay=0.8, lost_answer=True))
    with pytest.raises(VerificationError, match="on-demand"):
        p.launch(offer, spec())
    assert fake.instances == {}, "the unverified instance must not be left billing"
