"""Provider by name. Cloud SDKs are imported only when their provider is used."""

from __future__ import annotations

import os
from collections.abc import Mapping

from controller.config import ProviderSettings
from provisioning.base import InvalidCredentialsError, Provider, ProviderError


def _secret(name: str, environ: Mapping[str, str], what: str) -> str:
    value = environ.get(name)
    if not value:
        raise InvalidCredentialsError(f"{what}: environment variable {name} is not set")
    return value


def _remote(settings: ProviderSettings, environ: Mapping[str, str]) -> object | None:
    if settings.ssh_private_key_env is None:
        return None
    from provisioning.remote import Remote, load_key

    pem = _secret(settings.ssh_private_key_env, environ, "ssh")
    return Remote(load_key(pem))


def get_provider(
    name: str, settings: ProviderSettings, environ: Mapping[str, str] | None = None
) -> Provider:
    env = os.environ if environ is None else environ
    if name == "local":
        from provisioning.local import LocalProvider

        if settings.local is None:
            raise ProviderError("provider 'local' needs providers.local.state_dir in the config")
        return LocalProvider(settings.local.state_dir)
    if name == "vast":
        from provisioning.vast import VastProvider

        vs = settings.vast
        return VastProvider(
            _secret(vs.api_key_env, env, "vast"),
            key_env=vs.api_key_env,
            server_url=vs.server_url,
            bid_margin=vs.bid_margin,
            remote=_remote(settings, env),
        )
    if name == "runpod":
        from provisioning.runpod import RunPodProvider

        rs = settings.runpod
        return RunPodProvider(
            _secret(rs.api_key_env, env, "runpod"),
            key_env=rs.api_key_env,
            api_url=rs.api_url,
            bid_margin=rs.bid_margin,
            cloud_type=rs.cloud_type,
            remote=_remote(settings, env),
        )
    raise ProviderError(f"unknown provider {name!r}")
