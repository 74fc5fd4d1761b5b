"""Opening the fleet's checkpoint store for one run (the config itself does no I/O)."""

from __future__ import annotations

from respawn.controller.config import StoreSettings
from respawn.controller.seal import sealed
from respawn.store import open_backend
from respawn.store.backend import Backend
from respawn.store.store import CheckpointStore


def open_fleet_backend(settings: StoreSettings) -> Backend:
    """The store as the controller sees it: its ledgers signed when a secret is configured."""
    backend = open_backend(settings.url, settings.credential_envs)
    return sealed(backend, settings.ledger_secret_env)  # type: ignore[no-any-return]


def open_run_store(settings: StoreSettings, run: str) -> CheckpointStore:
    return CheckpointStore(open_fleet_backend(settings), run)
