"""The checkpoint store protocol, shared by the pod (writer) and the controller (reader).

`CheckpointStore` is the one object callers use; each job lives in its own module:

- `core.py`: a run's small documents, the fence, listings, repair records;
- `publish.py`: files → manifest → pointer;
- `pointer.py`: every move of the pointer, and rebuilding it from the manifests;
- `restore.py`: pull and verify, other copies, fall back and quarantine;
- `retention.py`: deleting old steps and crash-left temporaries.

Generations fence writers: a pod launched before the newest launch stops writing.
"""

from __future__ import annotations

from respawn.store.backend import CorruptError, StoreError
from respawn.store.core import (
    BackwardsError,
    FencedError,
    ManifestRef,
    NothingVerifiesError,
    StoreUnavailableError,
)
from respawn.store.publish import Publishing, PublishResult
from respawn.store.restore import PullResult, Restoring, owned_by_sources
from respawn.store.retention import LEFTOVER_AGE_S, Retention

__all__ = [
    "LEFTOVER_AGE_S",
    "BackwardsError",
    "CheckpointStore",
    "CorruptError",
    "FencedError",
    "ManifestRef",
    "NothingVerifiesError",
    "PublishResult",
    "PullResult",
    "StoreError",
    "StoreUnavailableError",
    "owned_by_sources",
]


class CheckpointStore(Publishing, Restoring, Retention):
    """One run's checkpoints and documents in one store."""
