"""The sha1 of a local file: one pass, one reused buffer (no allocation per chunk)."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 8 << 20


def sha1_file(path: Path) -> str:
    digest = hashlib.sha1()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()
