"""Opening the fleet's checkpoint store for one run (the config itself does no I/O)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from respawn.controller.config import StoreSettings
from respawn.controller.seal import sealed
from respawn.store import open_backend
from respawn.store.backend import Backend
from respawn.store.store import CheckpointStore


def open_fleet_backend(settings: StoreSettings, create: bool = True) -> Backend:
    """The store as the controller sees it: its ledgers signed when a secret is configured.
    `create=False`: a missing file store raises StoreMissingError instead of being made."""
    backend = open_backend(settings.url, settings.credential_envs, create=create)
    return sealed(backend, settings.ledger_secret_env)


def unmade_file_store(settings: StoreSettings) -> Backend:
    """A file store that does not exist yet, as read-only commands see it: empty, and left
    uncreated."""
    from respawn.store.file_backend import FileBackend

    path = Path(unquote(urlparse(settings.url).path))
    return sealed(FileBackend(path), settings.ledger_secret_env)


def open_run_store(settings: StoreSettings, run: str, read_only: bool = False) -> CheckpointStore:
    """`read_only`: for commands that only look (docs/contracts.md): a controller document
    still at its old key is read there and not moved (a move writes and deletes), and a file
    store that does not exist is read as empty, not made."""
    from respawn.store.backend import StoreMissingError

    try:
        backend = open_fleet_backend(settings, create=not read_only)
    except StoreMissingError:
        backend = unmade_file_store(settings)
    store = CheckpointStore(backend, run)
    store.move_legacy = not read_only
    return store
