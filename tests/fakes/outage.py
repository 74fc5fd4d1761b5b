"""The far side of a store that stops answering for a while: every read (object, document,
listing) fails like a bucket returning 503s, or a file store whose disk went away, until the
outage ends. Writes pass (the tests are about restoring)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from respawn.store.backend import Backend, ObjectInfo, Progress, StoreError


class OutageBackend:
    def __init__(self, inner: Backend, seconds: float = float("inf"), reads: str = "all") -> None:
        """`seconds`: how long from now reads fail; `reads`: "all", or "objects" (only the
        checkpoint files' downloads fail: documents and listings answer)."""
        self.inner = inner
        self.url = inner.url
        self.until = time.monotonic() + seconds
        self.reads = reads
        self.failed = 0

    def _down(self, what: str, objects: bool = False) -> None:
        if time.monotonic() < self.until and (self.reads == "all" or objects):
            self.failed += 1
            raise StoreError(f"{what}: 503 service_unavailable (the store is out)")

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes | None:
        self._down(f"reading {key}")
        return self.inner.read_bytes(key, max_bytes=max_bytes)

    def download(self, key: str, dst: Path, progress: Progress | None = None) -> str | None:
        self._down(f"downloading {key}", objects=True)
        return self.inner.download(key, dst, progress)

    def list(self, prefix: str) -> list[ObjectInfo]:
        self._down(f"listing {prefix}")
        return self.inner.list(prefix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
