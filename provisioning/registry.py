"""Every cloud respawn can rent from: adding one is its adapter module plus one line here
(`docs/adding-a-cloud.md`).

An entry names the adapter's settings model (the `providers.<name>` block of the fleet
config) and its factory. Adapter modules import their SDK lazily, so reading this registry
(and validating a config) loads no cloud SDK.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
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
    # Seconds the cloud leaves between SIGTERM and SIGKILL when it stops an instance; None
    # when it does not say. A longer `pod.term_grace` is cut short there.
    grace_seconds: float | None = None


REGISTRY: Mapping[str, Entry] = {
    "local": Entry(local.LocalSettings, local.from_settings, needs_settings=True),
    "vast": Entry(vast.VastSettings, vast.from_settings),
    "runpod": Entry(
        runpod.RunPodSettings, runpod.from_settings, grace_seconds=runpod.GRACE_SECONDS
    ),
}


def open_provider(name: str, settings: BaseModel | None, secrets: Secrets) -> Provider:
    entry = REGISTRY.get(name)
    if entry is None:
        raise ProviderError(f"unknown provider {name!r}; known: {', '.join(REGISTRY)}")
    if settings is None:
        raise ProviderError(f"provider {name!r} needs a providers.{name} block in the config")
    return entry.factory(settings, secrets)


def grace_warnings(providers: Iterable[str], term_grace_seconds: float) -> list[str]:
    """One line per provider that kills a pod sooner than the pod's `term_grace` expects."""
    out = []
    for name in providers:
        entry = REGISTRY.get(name)
        grace = entry.grace_seconds if entry else None
        if grace is not None and term_grace_seconds > grace:
            out.append(
                f"pod.term_grace is {term_grace_seconds:g}s but {name} kills a pod about "
                f"{grace:g}s after SIGTERM: checkpoint more often, or expect to lose the "
                "steps since the last one there"
            )
    return out
