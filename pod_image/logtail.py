"""The trainer's recent output, for `respawn logs` after the instance is gone.

The trainer's stdout and stderr pass through the pod unchanged (to the pod's own output,
which `onstart.sh` keeps in `pod.log`); the last `LIMIT` bytes are also kept here, and the
heartbeat thread uploads them, when they changed, to `RUN/logs/gNNNNNN.log` — one object per
generation, overwritten, never larger than `LIMIT`. Every secret value the pod holds is masked
before a byte leaves the machine. The controller deletes the logs of old generations.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from typing import BinaryIO

from respawn.contract.pod import ENV_SECRET_NAMES, ENV_STORE_KEY, ENV_STORE_KEY_ID

#: Bytes of output kept and uploaded per generation.
LIMIT = 64 * 1024
#: Shorter values are not masked (they would mask ordinary words); `respawn validate` warns.
MIN_SECRET = 6
MASK = b"***"


class LogTail:
    def __init__(self, secrets: Iterable[str] = (), limit: int = LIMIT) -> None:
        self.limit = limit
        self._secrets = sorted(
            {s.encode() for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True
        )
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._version = 0
        self._shipped = 0

    def pump(self, stream: BinaryIO, out: BinaryIO | None) -> None:
        """Copy `stream` to `out` until EOF, keeping its tail. Runs in its own thread: the
        trainer must never block on a full pipe, so this only ever reads and appends."""
        fd = stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            if out is not None:
                try:
                    out.write(chunk)
                    out.flush()
                except (OSError, ValueError):
                    out = None  # the pod's own output went away: keep the tail regardless
            self.add(chunk)

    def add(self, chunk: bytes) -> None:
        with self._lock:
            self._buf += chunk
            # Keep a margin beyond the limit, so a secret cut at the window's start is still
            # whole when masked.
            keep = self.limit + 4096
            if len(self._buf) > keep:
                del self._buf[: len(self._buf) - keep]
            self._version += 1

    @property
    def version(self) -> int:
        """Grows with every chunk added: what was printed after a moment is `since(version)`."""
        with self._lock:
            return self._version

    def text(self) -> str:
        """The masked tail as text (for a failure's reason)."""
        with self._lock:
            data = bytes(self._buf)
        for secret in self._secrets:
            data = data.replace(secret, MASK)
        return data[-self.limit :].decode(errors="replace")

    def pending(self) -> tuple[int, bytes] | None:
        """(version, the masked tail) if it changed since the last `shipped`, else None."""
        with self._lock:
            if self._version == self._shipped:
                return None
            version, data = self._version, bytes(self._buf)
        for secret in self._secrets:
            data = data.replace(secret, MASK)
        return version, data[-self.limit :]

    def shipped(self, version: int) -> None:
        """The tail as of `version` reached the store (a failed upload is simply not marked,
        so the next one carries it)."""
        with self._lock:
            self._shipped = max(self._shipped, version)


#: Always masked when set: the W&B key under its usual name, the store key and the cloud API
#: keys an instance may be given (the trainer should never see these; if it does, they still
#: never leave the machine through its log).
ALWAYS_SECRET = (
    "WANDB_API_KEY",
    ENV_STORE_KEY_ID,
    ENV_STORE_KEY,
    "RUNPOD_API_KEY",
    "CONTAINER_API_KEY",
    "VAST_API_KEY",
)


def pod_secrets(environ: Mapping[str, str], names: Iterable[str]) -> list[str]:
    """The values of the variables that are secret and set: the named ones (`pod.secret_env`),
    those the controller said it passed as secrets (`ENV_SECRET_NAMES`: the W&B key under the
    config's name, the store key) and `ALWAYS_SECRET`."""
    passed = (n.strip() for n in environ.get(ENV_SECRET_NAMES, "").split(","))
    wanted = dict.fromkeys([*names, *(n for n in passed if n), *ALWAYS_SECRET])
    return [environ[n] for n in wanted if environ.get(n)]
