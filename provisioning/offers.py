"""Offers: filter and rank by pure functions; bids for spot instances."""

from __future__ import annotations

import re

from respawn.provisioning.base import Offer, Resources


def gpu_key(name: str) -> str:
    """'H100 SXM', 'h100_sxm', 'NVIDIA H100-SXM' all compare equal."""
    key = re.sub(r"[^a-z0-9]+", "", name.lower())
    return key.removeprefix("nvidia").removeprefix("geforce")


def fits(offer: Offer, res: Resources) -> bool:
    if res.gpus and gpu_key(offer.gpu_name) not in {gpu_key(g) for g in res.gpus}:
        return False
    if offer.gpu_count != res.gpu_count:
        return False
    if offer.vram_gb < res.min_vram_gb:
        return False
    if offer.disk_gb is not None and offer.disk_gb < res.disk_gb:
        return False
    return offer.price_per_hour <= res.max_price_per_hour


def rank(offers: list[Offer]) -> list[Offer]:
    """Cheapest first; among equal prices, the more reliable host."""
    return sorted(offers, key=lambda o: (o.price_per_hour, -(o.reliability or 0.0), o.id))


def select(offers: list[Offer], res: Resources) -> list[Offer]:
    return rank([o for o in offers if fits(o, res)])


def bid_for(min_bid: float, margin: float, cap: float) -> float | None:
    """Bid a margin over the minimum so a small price move does not outbid us at once, never
    above the cap; None when even the minimum is over the cap."""
    if min_bid > cap:
        return None
    return round(min(cap, min_bid * (1.0 + margin)), 4)
