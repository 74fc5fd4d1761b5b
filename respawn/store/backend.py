"""The small object-store interface every backend implements (file://, b2://).

Keys are '/'-separated strings relative to the store root. The protocol above this layer
(`respawn.store.store`) is the same for every backend; a backend only moves bytes.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

Progress = Callable[[int], None]
"""Called with the number of bytes just moved."""


class StoreError(Exception):
    """The store could not be read or written; the message says what and why."""


class CorruptError(StoreError):
    """Stored bytes or documents are not what the manifest or schema says (rot, tampering,
    a missing object): falling back or using another copy can help, retrying cannot."""


class MissingObjectError(CorruptError):
    """An object a manifest names is not in the store."""


class TooLargeError(CorruptError):
    """An object read as a small document is larger than any such document can be."""

    def __init__(self, key: str, size: int, max_bytes: int) -> None:
        super().__init__(
            f"{key} holds {size} bytes, more than the {max_bytes} a document of its kind "
            "may hold: not read"
        )


class StoreConfigError(StoreError):
    """The store URL or its credentials are wrong: retrying will not help."""


class StoreMissingError(StoreConfigError):
    """The store (or the run in it) does not exist, and the caller asked not to create it."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    # Seconds since the epoch of the upload, where the backend knows it (aging leftovers).
    mtime: float | None = None
    # The sha1 the backend recorded for the bytes, where its listing reports one (B2): lets
    # the controller check a manifest against the listing without downloading a byte.
    sha1: str | None = None


class Backend(Protocol):
    url: str

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes | None:
        """The object's bytes, or None when there is no such key. `max_bytes`: an object
        larger than this raises TooLargeError, and is never read whole (nor into memory)."""
        ...

    def write_bytes(self, key: str, data: bytes) -> None:
        """Replace the object atomically: a reader sees the old or the new bytes, never a mix."""
        ...

    def upload(
        self,
        key: str,
        src: Path,
        size: int,
        progress: Progress | None = None,
        sha1: str | None = None,
    ) -> str | None:
        """Store the file; return the sha1 of the bytes sent if the backend computed it.
        `sha1`, when the caller already hashed the file, lets the backend record it."""
        ...

    def download(self, key: str, dst: Path, progress: Progress | None = None) -> str | None:
        """Write the object to `dst` (atomically); return its sha1 if computed on the way."""
        ...

    def copy(self, src_key: str, dst_key: str, sha1: str, size: int) -> bool:
        """Server-side copy of an object expected to hold `size` bytes hashing to `sha1`.

        Returns False, copying nothing, when the stored bytes cannot be proven to be those
        (the caller uploads from local disk instead): one rotten object must never be
        propagated into every later step."""
        ...

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, recursively (possibly incomplete:
        listings may be eventually consistent, so callers never infer absence from it)."""
        ...

    def delete(self, keys: builtins.list[str]) -> None:
        """Remove the keys (all versions, where the backend keeps versions); missing is fine."""
        ...
