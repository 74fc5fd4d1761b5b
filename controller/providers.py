"""The fleet's providers by name, opened through the registry for one tick."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

from respawn.controller.config import FleetConfig
from respawn.provisioning.base import Provider, ProviderError, Secrets
from respawn.provisioning.registry import open_provider

log = logging.getLogger("respawn.controller")


class MissingKeyError(ProviderError):
    """The provider's API key variable is not set: a fallback provider is then skipped."""


def open_providers(
    fleet: FleetConfig, names: Iterable[str], environ: Mapping[str, str] | None = None
) -> dict[str, Provider | Exception]:
    """Each named provider, or the error that kept it from opening (the run then knows why)."""
    settings = fleet.providers
    env = os.environ if environ is None else environ
    ssh = settings.ssh_private_key_env
    if ssh and not env.get(ssh):
        # The SSH key only adds restart-in-place and diagnosis; recovery works without it.
        log.warning("%s is not set: restart-in-place is disabled", ssh)
        ssh = None
    secrets = Secrets(env, ssh)
    out: dict[str, Provider | Exception] = {}
    for name in sorted(set(names)):
        key_env = getattr(getattr(settings, name, None), "api_key_env", None)
        if key_env and not env.get(key_env):
            out[name] = MissingKeyError(f"{name}: environment variable {key_env} is not set")
            continue
        try:
            provider = open_provider(name, getattr(settings, name, None), secrets)
            provider.fleet = fleet.fleet  # only this fleet's instances are ours
            out[name] = provider
        except ProviderError as e:
            out[name] = e
    return out
