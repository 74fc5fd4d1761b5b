"""An object store in memory: the far side of the store's wire for randomized tests that
publish thousands of objects (the protocol above the backend is what they exercise)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

from respawn.store.backend import MissingObjectError, ObjectInfo, Progress, TooLargeError


class MemoryBackend:
    def __init__(self) -> None:
        self.url = "mem://"
        self.objects: dict[str, tuple[bytes, float]] = {}
        self.lock = threading.Lock()

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes | None:
        with self.lock:
            got = self.objects.get(key)
        if got and max_bytes is not None and len(got[0]) > max_bytes:
            raise TooLargeError(key, len(got[0]), max_bytes)
        return got[0] if got else None

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.lock:
            self.objects[key] = (bytes(data), time.time())

    def upload(
        self,
        key: str,
        src: Path,
        size: int,
        progress: Progress | None = None,
        sha1: str | None = None,
    ) -> str:
        data = src.read_bytes()
        self.write_bytes(key, data)
        if progress:
            progress(len(data))
        return hashlib.sha1(data).hexdigest()

    def download(self, key: str, dst: Path, progress: Progress | None = None) -> str:
        data = self.read_bytes(key)
        if data is None:
            raise MissingObjectError(f"missing object {key}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)
        return hashlib.sha1(data).hexdigest()

    def copy(self, src_key: str, dst_key: str, sha1: str, size: int) -> bool:
        data = self.read_bytes(src_key)
        if data is None or len(data) != size or hashlib.sha1(data).hexdigest() != sha1:
            return False
        self.write_bytes(dst_key, data)
        return True

    def list(self, prefix: str) -> list[ObjectInfo]:
        with self.lock:
            items = sorted(self.objects.items())
        return [ObjectInfo(k, len(d), at) for k, (d, at) in items if k.startswith(prefix)]

    def delete(self, keys: list[str]) -> None:
        with self.lock:
            for k in keys:
                self.objects.pop(k, None)
