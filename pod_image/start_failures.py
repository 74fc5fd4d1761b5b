"""A trainer that fails at start the same way twice will fail so on any machine.

An import error (`ModuleNotFoundError: No module named 'torch'`), a typo in the command, a
missing data file: the trainer exits within seconds, before writing any step, with the same
last line each time. Restarting it, or renting another instance, repeats it at a price; the
pod reports it as a failure that will repeat (the controller halts the run with the reason).
Output that names the machine (CUDA, NCCL, the disk, the network) anywhere since the start (a
launcher such as torchrun prints its own summary after the cause), and a death by a signal (the
kernel's OOM killer: this machine's RAM), are not taken for the same failure elsewhere: those
restart and replace as before.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A failure later than this after the start is not a failure "at start".
EARLY_SECONDS = 120.0
#: Lines of the trainer's output a reported failure carries.
REASON_LINES = 5
#: Output naming the machine rather than the trainer: another instance may well succeed.
MACHINE_SIGNS = (
    "cuda",
    "nccl",
    "nvml",
    "nvidia",
    "gpu",
    "ecc",
    "out of memory",
    "no space left",
    "connection",
    "timed out",
    "timeout",
    "temporary failure",
    "network",
)


def last_lines(text: str, n: int = REASON_LINES) -> str:
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-n:])


@dataclass
class StartFailures:
    """Remembers the previous failure at start; `observe` says when one repeats."""

    previous: tuple[int, str] | None = None

    def observe(self, rc: int, seconds: float, stepped: bool, output: str) -> str | None:
        """The reason to report when this exit repeats the previous failure at start, else
        None. `stepped`: a new step appeared since the start; `output`: what the trainer
        printed since the start (masked)."""
        tail = last_lines(output)
        early = seconds < EARLY_SECONDS and not stepped and bool(tail)
        last = tail.splitlines()[-1] if tail else ""
        printed = output.lower()
        killed = rc < 0 or rc == 128 + 9  # SIGKILL, directly or through a shell
        if not early or killed or any(sign in printed for sign in MACHINE_SIGNS):
            self.previous = None
            return None
        now = (rc, last)
        repeated = self.previous == now
        self.previous = now
        if not repeated:
            return None
        return (
            f"the trainer exits {rc} at start the same way twice, before any step "
            f"(it would on any instance):\n{tail}"
        )
