"""GPU watchdog: notice a dead sidecar or an idle box while the trainer process lives on.

The incident it exists for: an inference server on GPU 0 died silently (its memory went to
0 MiB) while the trainer, waiting for it, stayed alive and wrote nothing for hours. The
trainer's own liveness says nothing about that; the GPUs do. Two rules:

- a GPU that held memory since the trainer started and now holds ~none: something that ran
  on it is gone, so the trainer is restarted from the published step;
- every GPU at 0 % utilization for `idle_after`: nothing is computing, same remedy.

`nvidia-smi` is read with a timeout (it can hang on a sick driver); a failed read is not
evidence of anything and trips nothing.
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass

log = logging.getLogger("respawn.pod")

QUERY = [
    "nvidia-smi",
    "--query-gpu=index,name,utilization.gpu,memory.used,memory.total",
    "--format=csv,noheader",
]
#: Memory at or below this counts as "empty" (the driver's own context is a few MiB).
EMPTY_MIB = 64
#: A GPU counts as "in use" once it held more than this.
IN_USE_MIB = 1024
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    utilization: int | None  # percent; None when the driver reports [N/A]
    memory_used_mib: int | None
    memory_total_mib: int | None


def _number(text: str) -> int | None:
    m = _NUMBER.match(text)
    return int(float(m.group(1))) if m else None


def parse(csv_text: str) -> list[GpuSample]:
    """Lines of `index, name, utilization.gpu, memory.used, memory.total`, with or without
    units (`71234 MiB`, `0 %`); malformed lines are skipped."""
    out = []
    for line in csv_text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5 or not parts[0].isdigit():
            continue
        out.append(
            GpuSample(
                index=int(parts[0]),
                name=parts[1],
                utilization=_number(parts[2]),
                memory_used_mib=_number(parts[3]),
                memory_total_mib=_number(parts[4]),
            )
        )
    return out


def query(timeout: float = 20.0) -> list[GpuSample] | None:
    """The GPUs as nvidia-smi (first on PATH) sees them; None when it cannot be read."""
    try:
        proc = subprocess.run(QUERY, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return None
    except subprocess.TimeoutExpired:
        log.warning("nvidia-smi did not answer within %.0fs", timeout)
        return None
    if proc.returncode != 0:
        log.warning("nvidia-smi failed (%d): %s", proc.returncode, proc.stderr.strip()[:200])
        return None
    samples = parse(proc.stdout)
    return samples or None


class GpuWatch:
    """Feed it samples with their (monotonic) time; it answers why the trainer should be
    restarted, or None. `reset()` when the trainer (re)starts."""

    def __init__(self, idle_after: float | None) -> None:
        self.idle_after = idle_after
        self.reset()

    def reset(self) -> None:
        self._in_use: set[int] = set()
        self._idle_since: float | None = None

    def check(self, samples: list[GpuSample], now: float) -> str | None:
        for g in samples:
            used = g.memory_used_mib
            if used is None:
                continue
            if used > IN_USE_MIB:
                self._in_use.add(g.index)
            elif used <= EMPTY_MIB and g.index in self._in_use:
                return (
                    f"GPU {g.index} memory dropped to {used} MiB while the trainer runs "
                    "(a process on it died)"
                )
        utils = [g.utilization for g in samples]
        if self.idle_after is None or not utils or any(u is None or u > 0 for u in utils):
            self._idle_since = None
            return None
        if self._idle_since is None:
            self._idle_since = now
        idle = now - self._idle_since
        if idle >= self.idle_after:
            return f"all {len(samples)} GPU(s) at 0% utilization for {idle:.0f}s"
        return None
