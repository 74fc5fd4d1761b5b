"""Offer filtering, ranking and bidding: pure functions, as tables."""

from __future__ import annotations

import pytest

from respawn.provisioning.base import Offer, Resources
from respawn.provisioning.offers import bid_for, fits, gpu_key, rank, select

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
