"""Private pod images: `pod.registry_auth_env` reaches each cloud's create call (issue 10,
item 4), and never a repr."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from respawn.provisioning.base import LaunchSpec, ProviderError
from tests import test_runpod, test_vast
from tests.fakes.runpod import FakeRunPod
from tests.fakes.vast import FakeVast


@pytest.fixture
def vast() -> Iterator[FakeVast]:
    f = FakeVast()
    f.url = f.start()  # type: ignore[attr-defined]
    yield f
    f.stop()


@pytest.fixture
def runpod() -> Iterator[FakeRunPod]:
    f = FakeRunPod()
    f.url = f.start()  # type: ignore[attr-defined]
    yield f
    f.stop()


def spec(image: str, auth: str | None) -> LaunchSpec:
    return LaunchSpec(
        run="job",
        generation=1,
        image=image,
        disk_gb=100,
        max_price_per_hour=0.30,
        env={"RESPAWN_RUN": "job"},
        registry_auth=auth,
    )


def test_registry_host_of_an_image() -> None:
    assert spec("ghcr.io/me/pod@sha256:ab", None).registry_host() == "ghcr.io"
    assert spec("me/pod:1", None).registry_host() == "docker.io"
    assert spec("registry.local:5000/pod", None).registry_host() == "registry.local:5000"


def test_vast_create_logs_in_to_the_private_registry(vast: FakeVast) -> None:
    p = test_vast.provider(vast)
    p._create(p.offers(test_vast.RES)[0], spec("ghcr.io/me/pod:1", "me:ghp_tok3n"))
    assert vast.bodies[-1]["image_login"] == "-u me -p ghp_tok3n ghcr.io"
    assert "ghp_tok3n" not in repr(spec("ghcr.io/me/pod:1", "me:ghp_tok3n"))


def test_vast_rejects_a_malformed_credential_before_creating(vast: FakeVast) -> None:
    p = test_vast.provider(vast)
    with pytest.raises(ProviderError, match="USER:TOKEN") as e:
        p._create(p.offers(test_vast.RES)[0], spec("ghcr.io/me/pod:1", "no-colon"))
    assert not e.value.retryable and vast.bodies == []


def test_runpod_rent_names_the_saved_registry_auth(runpod: FakeRunPod) -> None:
    p = test_runpod.provider(runpod)
    offer = p.offers(test_runpod.RES)[0]
    p._create(offer, spec("ghcr.io/me/pod:1", "clx123authid"))
    assert runpod.deploy_inputs[-1]["registry"] == "clx123authid"
    with pytest.raises(ProviderError, match="Container Registry Auth"):
        p._create(offer, spec("ghcr.io/me/pod:1", "me:tok"))
