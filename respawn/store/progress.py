"""Progress for long transfers: bytes, rate and ETA, on a terminal or as log lines."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

BIG_TRANSFER = 64 << 20  # below this a transfer reports only if it is slow


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class TransferProgress:
    """Thread-safe byte counter that reports at most every `interval` seconds.

    On a TTY it redraws one line; elsewhere (a pod log, CI) it prints one line per report so
    the log shows the transfer advancing.
    """

    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO | None = None,
        interval: float = 2.0,
        quiet: bool = False,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._interval = 0.2 if self._tty else interval
        self._quiet = quiet
        self._start = time.monotonic()
        self._last = self._start  # the first report comes after one interval: small is silent
        self._reported = False
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if not self._quiet and now - self._last >= self._interval:
                self._last = now
                self._reported = True
                self._emit(now, final=False)

    def _emit(self, now: float, final: bool) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_txt = "done" if final else (f"ETA {eta:.0f}s" if eta != float("inf") else "ETA ?")
        line = (
            f"{self.label}: {human_bytes(self.done)} / {human_bytes(self.total)} "
            f"({pct:.0f}%) {human_bytes(rate)}/s {eta_txt}"
        )
        if self._tty:
            self._stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def finish(self) -> None:
        if not self._quiet and (self._reported or self.total >= BIG_TRANSFER):
            with self._lock:
                self._emit(time.monotonic(), final=True)
