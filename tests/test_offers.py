"""Offer filtering, ranking and bidding: pure functions, as tables."""

from __future__ import annotations

import pytest

from respawn.provisioning.base import (
    Instance,
    InstanceState,
    LaunchSpec,
    Offer,
    Resources,
    markets_of,
    verification_problem,
)
from respawn.provisioning.offers import (
    bid_for,
    fits,
    gpu_key,
    matching_names,
    provider_gpu_names,
    rank,
    select,
    vram_ok,
)

RES = Resources(
    gpus=("H100_SXM", "H100 NVL"), gpu_count=8, min_vram_gb=80, disk_gb=500, max_price_per_hour=16
)


def offer(**kw: object) -> Offer:
    base: dict[str, object] = {
        "provider": "vast",
        "id": "1",
        "gpu_name": "H100 SXM",
        "gpu_count": 8,
        "vram_gb": 80,
        "price_per_hour": 12.0,
        "disk_gb": 800,
        "reliability": 0.99,
    }
    base.update(kw)
    return Offer(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "ok"),
    [
        ({}, True),
        ({"gpu_name": "NVIDIA H100-SXM"}, True),
        ({"gpu_name": "H100 NVL"}, True),
        ({"gpu_name": "H100 PCIE"}, False),
        ({"gpu_count": 4}, False),
        ({"vram_gb": 40}, False),
        ({"disk_gb": 200}, False),
        ({"disk_gb": None}, True),  # unknown disk (RunPod sizes it at create)
        ({"price_per_hour": 16.0}, True),
        ({"price_per_hour": 16.01}, False),
    ],
)
def test_fits(kw: dict[str, object], ok: bool) -> None:
    assert fits(offer(**kw), RES) is ok


def test_any_gpu_when_none_named() -> None:
    assert fits(offer(gpu_name="A100"), RES.model_copy(update={"gpus": ()}))


def test_rank_cheapest_then_most_reliable() -> None:
    offers = [
        offer(id="a", price_per_hour=10, reliability=0.9),
        offer(id="b", price_per_hour=9),
        offer(id="c", price_per_hour=10, reliability=0.999),
    ]
    assert [o.id for o in rank(offers)] == ["b", "c", "a"]
    assert [o.id for o in select([*offers, offer(id="d", gpu_count=1)], RES)] == ["b", "c", "a"]


@pytest.mark.parametrize(
    ("min_bid", "margin", "cap", "bid"),
    [(1.0, 0.1, 5.0, 1.1), (1.0, 0.1, 1.05, 1.05), (2.0, 0.1, 1.5, None), (0.0, 0.1, 1.0, 0.0)],
)
def test_bid_for(min_bid: float, margin: float, cap: float, bid: float | None) -> None:
    assert bid_for(min_bid, margin, cap) == bid


def test_gpu_key_normalizes() -> None:
    assert gpu_key("NVIDIA GeForce RTX 4090") == gpu_key("RTX_4090") == "rtx4090"


@pytest.mark.parametrize(
    ("reported_gb", "nominal", "ok"),
    [
        (81559 / 1024, 80, True),  # Vast H100 80GB
        (24564 / 1024, 24, True),  # Vast RTX 4090
        (80, 80, True),  # RunPod reports whole nominal GB
        (49140 / 1024, 80, False),  # a 48 GB card is not an 80 GB one
        (40960 / 1024, 48, False),
    ],
)
def test_vram_is_nominal_with_a_tolerance(reported_gb: float, nominal: float, ok: bool) -> None:
    assert vram_ok(reported_gb, nominal) is ok
    assert fits(offer(vram_gb=reported_gb), RES.model_copy(update={"min_vram_gb": nominal})) is ok


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("H100 SXM", True),
        ("H100 PCIE", True),
        ("H100 NVL", True),
        ("NVIDIA H100 80GB HBM3", True),
        ("NVIDIA H100 PCIe", True),
        ("NVIDIA H100 NVL", True),
        ("H200", False),
        ("A100 SXM4", False),
    ],
)
def test_a_family_name_matches_every_cloud_spelling(name: str, ok: bool) -> None:
    assert fits(offer(gpu_name=name), RES.model_copy(update={"gpus": ("H100",)})) is ok


def test_a_variant_matches_only_itself_on_every_cloud() -> None:
    res = RES.model_copy(update={"gpus": ("H100_SXM",)})
    assert fits(offer(gpu_name="NVIDIA H100 80GB HBM3"), res)
    assert not fits(offer(gpu_name="NVIDIA H100 PCIe"), res)


def test_provider_names_for_the_configured_gpus() -> None:
    assert provider_gpu_names(["H100"], "vast") == ["H100 SXM", "H100 PCIE", "H100 NVL"]
    assert provider_gpu_names(["H100_SXM", "A40"], "runpod") == ["NVIDIA H100 80GB HBM3", "A40"]
    lines = matching_names(RES.model_copy(update={"gpus": ("H100",)}), ["vast", "runpod"])
    assert lines[0].startswith("gpus on vast: H100 SXM, H100 PCIE, H100 NVL, >= 80 GB")
    assert "NVIDIA H100 80GB HBM3" in lines[1]


def test_markets_in_the_order_they_are_tried() -> None:
    assert markets_of("interruptible_then_on_demand") == ("interruptible", "on_demand")
    assert markets_of("on_demand") == ("on_demand",)


def _inst(interruptible: bool | None, price: float = 1.0) -> Instance:
    return Instance(
        provider="p",
        id="1",
        name="respawn-a-g1",
        run="a",
        generation=1,
        state=InstanceState.PENDING,
        price_per_hour=price,
        interruptible=interruptible,
    )


@pytest.mark.parametrize(
    ("market", "interruptible", "problem"),
    [
        ("interruptible", False, "on-demand"),
        ("interruptible", True, None),
        ("on_demand", True, "interruptible"),
        ("on_demand", False, None),
        ("on_demand", None, None),  # RunPod does not say: the price cap still holds
    ],
)
def test_a_launch_is_verified_against_its_market(
    market: str, interruptible: bool | None, problem: str | None
) -> None:
    spec = LaunchSpec(
        run="a",
        generation=1,
        image=None,
        disk_gb=10,
        max_price_per_hour=2.0,
        market=market,  # type: ignore[arg-type]
        env={},
    )
    found = verification_problem(_inst(interruptible), spec)
    assert (found is None) if problem is None else (problem in (found or ""))
