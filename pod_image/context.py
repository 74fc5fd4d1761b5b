"""What a pod knows about itself: its store, run, generation, writer name, workdir and spec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from respawn.contract.pod import PodSpec
from respawn.pod.hostkeys import host_key_fingerprints
from respawn.store.schema import Heartbeat, Phase, utcnow
from respawn.store.store import CheckpointStore


@dataclass(frozen=True)
class PodContext:
    store: CheckpointStore
    run: str
    generation: int
    writer: str
    workdir: Path
    pod: PodSpec
    wandb_run_id: str | None = None
    ssh_host_keys: tuple[str, ...] = ()

    def heartbeat(self, phase: Phase, **fields: object) -> Heartbeat:
        return Heartbeat.model_validate(
            {
                "run": self.run,
                "generation": self.generation,
                "writer": self.writer,
                "at": utcnow(),
                "phase": phase,
                # sshd may generate its host keys after the pod started: look again until found.
                "ssh_host_keys": self.ssh_host_keys or host_key_fingerprints(),
                **fields,
            }
        )
