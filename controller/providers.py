"""Provider by name. Cloud SDKs are imported only when their provider is used."""

from __future__ import annotations

from controller.config import ProviderSettings
from provisioning.base import Provider, ProviderError


def get_provider(name: str, settings: ProviderSettings) -> Provider:
    if name == "local":
        from provisioning.local import LocalProvider

        if settings.local is None:
            raise ProviderError("provider 'local' needs providers.local.state_dir in the config")
        return LocalProvider(settings.local.state_dir)
    raise ProviderError(f"provider {name!r} is not available in this version of respawn")
