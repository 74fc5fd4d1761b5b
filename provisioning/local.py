"""The `local` provider: an "instance" is a detached process session on this machine.

It is the embedded default (demo, tests, a single box you own). Launch starts the pod
bootstrap in a new session with the launch environment and a fresh working directory (its
"disk"). Instances outlive the controller: each one is a small JSON record in `state_dir`,
found again on the next tick; an instance is alive while any process of its session is.
Linux only: liveness reads /proc, so a reused PID is never mistaken for the instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from respawn.contract.pod import ENV_INSTANCE_ID, ENV_PIDFILE, POD_MODULE
from respawn.provisioning.base import (
    Instance,
    InstanceState,
    LaunchSpec,
    NotFoundError,
    Offer,
    Provider,
    ProviderError,
    Resources,
    Secrets,
    WithTrainerControl,
    markets_of,
    parse_instance_name,
)

# The interpreter respawn runs in has the pod side: no PATH lookup of `respawn-pod` needed.
POD_ENTRYPOINT = [sys.executable, "-m", POD_MODULE]


def _session_processes(sid: int) -> list[int]:
    """PIDs of live (non-zombie) processes whose session id is `sid`."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp session ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] not in ("Z", "X") and int(fields[3]) == sid:
            out.append(int(entry.name))
    return out


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[19])


class LocalProvider(WithTrainerControl, Provider):
    name = "local"

    def __init__(
        self, state_dir: str | Path, term_grace: float = 30.0, keep_disks: bool = False
    ) -> None:
        self.state_dir = Path(state_dir)
        self.term_grace = term_grace
        self.keep_disks = keep_disks
        self._records = self.state_dir / "instances"

    def _ensure_dirs(self) -> None:
        # 0700: records and logs name sessions and may hold a trainer's output.
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._records.mkdir(mode=0o700, exist_ok=True)

    # -- records -------------------------------------------------------------------------

    def _record_path(self, instance_id: str) -> Path:
        return self._records / f"{instance_id}.json"

    def _read(self, path: Path) -> dict[str, object] | None:
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def _alive(self, rec: dict[str, object]) -> list[int]:
        sid = int(str(rec["sid"]))
        members = _session_processes(sid)
        # The session leader may be gone while its children live on; but if the leader's PID
        # now belongs to a different process (reuse), this session is long over.
        ticks = _start_ticks(sid)
        if ticks is not None and sid in members and ticks != rec["start_ticks"]:
            return []
        return members

    # -- Provider ------------------------------------------------------------------------

    def offers(self, resources: Resources) -> list[Offer]:
        return [
            Offer(
                provider=self.name,
                id="localhost",
                gpu_name="local",
                gpu_count=resources.gpu_count,
                vram_gb=resources.min_vram_gb,
                price_per_hour=0.0,
                market=markets_of(resources.market)[0],  # a local process is either
                reliability=1.0,
                location="localhost",
            )
        ]

    def _create(self, offer: Offer, spec: LaunchSpec) -> str:
        self._ensure_dirs()
        instance_id = f"local-{uuid.uuid4().hex[:10]}"
        disk = self.state_dir / "disks" / instance_id
        disk.mkdir(parents=True)
        log_path = self.state_dir / "logs" / f"{instance_id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Only the launch environment, as a cloud would pass it: never the controller's own
        # (its cloud keys). PATH and HOME so the trainer's tools are found.
        inherited = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        env = {
            **inherited,
            **spec.env,
            ENV_INSTANCE_ID: instance_id,
            ENV_PIDFILE: str(disk / "supervisor.pid"),
        }
        created = datetime.now(UTC)
        with open(log_path, "ab") as log:
            try:
                proc = subprocess.Popen(
                    POD_ENTRYPOINT,
                    cwd=disk,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as e:
                raise ProviderError(f"local: cannot start the pod bootstrap: {e}") from e
        record = {
            "id": instance_id,
            "name": spec.name,
            "run": spec.run,
            "generation": spec.generation,
            "sid": proc.pid,
            "start_ticks": _start_ticks(proc.pid),
            "created_at": created.isoformat(),
            "disk": str(disk),
            "log": str(log_path),
        }
        tmp = self._record_path(instance_id).with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self._record_path(instance_id))
        return instance_id

    def _read_back(self, instance_id: str, spec: LaunchSpec) -> Instance | None:
        rec = self.record(instance_id)
        if rec is None:
            return None
        state = InstanceState.RUNNING if self._alive(rec) else InstanceState.STOPPED
        return self._instance(rec, state)

    def _instance(self, rec: dict[str, object], state: InstanceState) -> Instance:
        return Instance(
            provider=self.name,
            id=str(rec["id"]),
            name=str(rec["name"]),
            run=str(rec["run"]),
            generation=int(str(rec["generation"])),
            state=state,
            created_at=datetime.fromisoformat(str(rec["created_at"])),
            price_per_hour=0.0,
            detail=f"session {rec['sid']}, log {rec['log']}",
        )

    def list_all(self) -> list[Instance]:
        out = []
        for path in sorted(self._records.glob("*.json")):
            rec = self._read(path)
            if rec is None:
                continue
            if parse_instance_name(str(rec.get("name", "")), self.fleet) is None:
                continue
            if self._alive(rec):
                out.append(self._instance(rec, InstanceState.RUNNING))
            else:
                # A process that is gone bills nothing: forget it, as a cloud forgets a
                # destroyed instance, disk and all (its log stays in logs/).
                self._forget(rec, path)
        return out

    def record(self, instance_id: str) -> dict[str, object] | None:
        return self._read(self._record_path(instance_id))

    def signal(self, instance_id: str, sig: int) -> int:
        """Send `sig` to every process of the instance; return how many were signalled."""
        rec = self.record(instance_id)
        if rec is None:
            return 0
        members = self._alive(rec)
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return len(members)

    def _destroy(self, instance_id: str) -> None:
        rec = self.record(instance_id)
        if rec is None:
            raise NotFoundError(f"local: no instance {instance_id}")
        if self.signal(instance_id, signal.SIGTERM):
            deadline = time.monotonic() + self.term_grace
            while self._alive(rec) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.signal(instance_id, signal.SIGKILL)
            while self._alive(rec) and time.monotonic() < deadline + 5:
                time.sleep(0.02)
        if self._alive(rec):
            raise ProviderError(f"local: instance {instance_id} survived SIGKILL")
        self._forget(rec, self._record_path(instance_id))

    def _forget(self, rec: dict[str, object], path: Path) -> None:
        # A cloud's destroyed instance takes its disk with it; checkpoints live in the store.
        if not self.keep_disks and rec.get("disk"):
            shutil.rmtree(str(rec["disk"]), ignore_errors=True)
        path.unlink(missing_ok=True)

    def diagnose(self, instance_id: str, host_keys: Sequence[str] = ()) -> dict[str, str]:
        rec = self.record(instance_id)
        if rec is None:
            raise ProviderError(f"local: no instance {instance_id}")
        log_lines = Path(str(rec["log"])).read_text(errors="replace").splitlines()[-40:]
        usage = shutil.disk_usage(str(rec["disk"]))
        return {
            "processes": " ".join(map(str, self._alive(rec))) or "none",
            "log": "\n".join(log_lines),
            "disk": f"{usage.used / 2**30:.1f} GiB used, {usage.free / 2**30:.1f} GiB free",
        }

    def restart_trainer(self, instance_id: str, host_keys: Sequence[str] = ()) -> None:
        # A local process: no SSH, so no host key to check.
        """Ask the pod's supervisor to restart its trainer (SIGUSR1 to the session leader)."""
        rec = self.record(instance_id)
        if rec is None or not self._alive(rec):
            raise ProviderError(f"local: instance {instance_id} is not running")
        os.kill(int(str(rec["sid"])), signal.SIGUSR1)


class LocalSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    state_dir: str = Field(description="where the local provider keeps its instance records")
    keep_disks: bool = Field(
        False, description="keep a terminated instance's working directory (for post-mortems)"
    )


def from_settings(settings: LocalSettings, secrets: Secrets) -> LocalProvider:
    return LocalProvider(settings.state_dir, keep_disks=settings.keep_disks)
