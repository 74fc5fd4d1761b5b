"""Offers: filter and rank by pure functions; bids for spot instances; GPU names and VRAM
compared the same way on every cloud."""

from __future__ import annotations

import re
from collections.abc import Iterable

from respawn.provisioning.base import Offer, Resources

# Clouds report VRAM a little under the nominal size a card is sold as (Vast: H100 80GB =
# 81559 MB, RTX 4090 = 24564 MB; RunPod reports whole nominal GB). `min_vram_gb` is nominal
# GB and matches down to this fraction of it, as gpuhunt does (x1024 x0.93).
VRAM_TOLERANCE = 0.93

# A family name in a config means every card of the family; each cloud spells its cards its
# own way (Vast: `H100 SXM`; RunPod: `NVIDIA H100 80GB HBM3`). Names not listed here compare
# by `gpu_key` only.
GPU_ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "H100": {
        "vast": ("H100 SXM", "H100 PCIE", "H100 NVL"),
        "runpod": ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL"),
    },
    "H100_SXM": {"vast": ("H100 SXM",), "runpod": ("NVIDIA H100 80GB HBM3",)},
    "H100_PCIE": {"vast": ("H100 PCIE",), "runpod": ("NVIDIA H100 PCIe",)},
    "H100_NVL": {"vast": ("H100 NVL",), "runpod": ("NVIDIA H100 NVL",)},
    "RTX_4090": {"vast": ("RTX 4090",), "runpod": ("NVIDIA GeForce RTX 4090",)},
}


def gpu_key(name: str) -> str:
    """'H100 SXM', 'h100_sxm', 'NVIDIA H100-SXM' all compare equal."""
    key = re.sub(r"[^a-z0-9]+", "", name.lower())
    return key.removeprefix("nvidia").removeprefix("geforce")


_ALIAS_BY_KEY = {gpu_key(family): spellings for family, spellings in GPU_ALIASES.items()}


def provider_gpu_names(gpus: Iterable[str], provider: str) -> list[str]:
    """The names a provider lists for the configured GPUs (unknown names as written, `_` as
    a space, which is how Vast spells its names)."""
    out: list[str] = []
    for g in gpus:
        spellings = _ALIAS_BY_KEY.get(gpu_key(g), {})
        for name in spellings.get(provider, (g.replace("_", " "),)):
            if name not in out:
                out.append(name)
    return out


def gpu_keys(gpus: Iterable[str]) -> set[str]:
    """Every normalized name that counts as one of the configured GPUs, on any cloud."""
    keys: set[str] = set()
    for g in gpus:
        keys.add(gpu_key(g))
        for names in _ALIAS_BY_KEY.get(gpu_key(g), {}).values():
            keys.update(gpu_key(n) for n in names)
    return keys


def vram_ok(reported_gb: float, min_gb: float) -> bool:
    return reported_gb >= min_gb * VRAM_TOLERANCE


def fits(offer: Offer, res: Resources) -> bool:
    if res.gpus and gpu_key(offer.gpu_name) not in gpu_keys(res.gpus):
        return False
    if offer.gpu_count != res.gpu_count:
        return False
    if not vram_ok(offer.vram_gb, res.min_vram_gb):
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


def matching_names(res: Resources, providers: Iterable[str]) -> list[str]:
    """What a run's GPU names and VRAM mean on each provider, for `respawn offers`."""
    vram = f", >= {res.min_vram_gb:g} GB nominal VRAM" if res.min_vram_gb else ""
    if not res.gpus:
        return [f"gpus: any {res.gpu_count}x GPU{vram}, market {res.market}"]
    return [
        f"gpus on {p}: {', '.join(provider_gpu_names(res.gpus, p))}{vram}, market {res.market}"
        for p in providers
        if p != "local"
    ]
