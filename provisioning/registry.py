"""Every cloud respawn can rent from: adding one is its adapter module plus one line here
(`docs/adding-a-cloud.md`).

An entry names the adapter's settings model (the `providers.<name>` block of the fleet
config) and its factory. Adapter modules import their SDK lazily, so reading this registry
(and validating a config) loads no cloud SDK.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from respawn.provisioning import local, runpod, vast
from respawn.provisioning.base import Provider, ProviderError, Secrets


@dataclass(frozen=True)
class Entry:
    settings: type[BaseModel]
    factory: Callable[[Any, Secrets], Provider]
    needs_settings: bool = False  # the block must be written in the config to use the cloud


REGISTRY: Mapping[str, Entry] = {
    "local": Entry(local.LocalSettings, local.from_settings, needs_settings=True),
    "vast": Entry(vast.VastSettings, vast.from_settings),
    "runpod": Entry(runpod.RunPodSettings, runpod.from_settings),
}


def open_provider(name: str, settings: BaseModel | None, secrets: Secrets) -> Provider:
    entry = REGISTRY.get(name)
    if entry is None:
        raise ProviderError(f"unknown provider {name!r}; known: {', '.join(REGISTRY)}")
    if settings is None:
        raise ProviderError(f"provider {name!r} needs a providers.{name} block in the config")
    return entry.factory(settings, secrets)
