"""The fleet's providers by name, opened through the registry for one tick."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from respawn.controller.config import FleetConfig
from respawn.provisioning.base import Provider, ProviderError, Secrets
from respawn.provisioning.registry import open_provider


def open_providers(
    fleet: FleetConfig, names: Iterable[str], environ: Mapping[str, str] | None = None
) -> dict[str, Provider | Exception]:
    """Each named provider, or the error that kept it from opening (the run then knows why)."""
    settings = fleet.providers
    secrets = Secrets(os.environ if environ is None else environ, settings.ssh_private_key_env)
    out: dict[str, Provider | Exception] = {}
    for name in sorted(set(names)):
        try:
            provider = open_provider(name, getattr(settings, name, None), secrets)
            provider.fleet = fleet.fleet  # only this fleet's instances are ours
            out[name] = provider
        except ProviderError as e:
            out[name] = e
    return out
