"""Opening the fleet's checkpoint store for one run (the config itself does no I/O)."""

from __future__ import annotations

from respawn.controller.config import StoreSettings
from respawn.store.store import CheckpointStore


def open_run_store(settings: StoreSettings, run: str) -> CheckpointStore:
    return CheckpointStore.open(settings.url, run, credential_envs=settings.credential_envs)
