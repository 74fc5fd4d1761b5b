"""Shell access to an instance over SSH (paramiko): diagnose it, restart its trainer in place.

Instances are new machines every time, so no host key is known in advance: the pod publishes
its host keys' fingerprints in its heartbeat at boot and only a server presenting one of
them is talked to (`RejectPolicy` otherwise: whoever answers at the address may be anyone).
Every command has a total deadline and an output cap, so a hostile or wedged pod cannot hold
a tick. The private key comes from an environment variable (a GitHub secret), never from the
config file.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import paramiko

from respawn.contract.pod import SUPERVISOR_PIDFILE
from respawn.provisioning.base import ProviderError, TransientProviderError

log = logging.getLogger("respawn.remote")
CONNECT_TIMEOUT = 20.0
#: The whole command, connection included, ends by then.
COMMAND_DEADLINE = 60.0
#: More output than this is cut (a log tail is a few kB).
MAX_OUTPUT = 256 * 1024

# Signal the supervisor through its pidfile: a `pkill -f` pattern also matches the `sh -c`
# that runs it (killing the wrapper, so success reads as failure) and misses `python3`.
RESTART = f'kill -USR1 "$(cat {SUPERVISOR_PIDFILE})" && echo signalled'
DIAGNOSE = {
    "gpus": "nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total "
    "--format=csv,noheader 2>&1 || echo 'nvidia-smi failed'",
    "log": "tail -n 40 /var/log/respawn/pod.log 2>&1",
    "disk": "df -h / /workspace 2>&1",
}


class HostKeyMismatch(ProviderError):
    """The server's host key is not one the pod published: not our pod, or not only ours."""

    retryable = False


class _PinnedHostKey(paramiko.MissingHostKeyPolicy):
    """Accept only a host key whose fingerprint the pod published (`SHA256:...`)."""

    def __init__(self, pins: Sequence[str]) -> None:
        self.pins = frozenset(pins)

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        if key.fingerprint in self.pins:
            return
        if not self.pins:
            raise HostKeyMismatch(
                f"ssh {hostname}: the pod has published no host key fingerprint (its heartbeat "
                f"lacks ssh_host_keys): refusing {key.get_name()} {key.fingerprint}"
            )
        raise HostKeyMismatch(
            f"ssh {hostname}: host key {key.get_name()} {key.fingerprint} is not one the pod "
            "published: refusing to connect"
        )


def load_key(pem: str) -> paramiko.PKey:
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(pem))
        except (paramiko.SSHException, ValueError) as e:
            errors.append(f"{cls.__name__}: {e}")
    raise ProviderError("the SSH private key could not be read: " + "; ".join(errors))


@dataclass
class Remote:
    key: paramiko.PKey
    user: str = "root"

    def run(
        self, host: str, port: int, command: str, host_keys: Sequence[str] = ()
    ) -> tuple[int, str]:
        """(exit status, output) of one command; raises when the deadline passes."""
        deadline = time.monotonic() + COMMAND_DEADLINE
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_PinnedHostKey(host_keys))
        try:
            # Three connect phases (TCP, banner, auth) and the session open, a quarter of the
            # deadline each at most: the whole command ends by the deadline.
            wait = min(CONNECT_TIMEOUT, COMMAND_DEADLINE / 4)
            client.connect(
                host,
                port=port,
                username=self.user,
                pkey=self.key,
                timeout=wait,
                banner_timeout=wait,
                auth_timeout=wait,
                allow_agent=False,
                look_for_keys=False,
            )
            transport = client.get_transport()
            if transport is None:  # connect returned without a session: nothing to run on
                raise TransientProviderError(f"ssh {host}:{port}: no transport after connect")
            channel = transport.open_session(timeout=wait)
            channel.exec_command(command)
            return _collect(channel, deadline, f"ssh {host}:{port}")
        except HostKeyMismatch:
            raise
        except paramiko.AuthenticationException as e:
            raise ProviderError(f"ssh {host}:{port}: authentication failed ({e})") from e
        except (OSError, paramiko.SSHException) as e:
            raise TransientProviderError(f"ssh {host}:{port}: {e}") from e
        finally:
            client.close()

    def restart_trainer(self, host: str, port: int, host_keys: Sequence[str] = ()) -> None:
        rc, out = self.run(host, port, RESTART, host_keys)
        if rc != 0:
            raise ProviderError(f"ssh {host}:{port}: no pod supervisor to signal ({out.strip()})")

    def diagnose(self, host: str, port: int, host_keys: Sequence[str] = ()) -> dict[str, str]:
        return {name: self.run(host, port, cmd, host_keys)[1] for name, cmd in DIAGNOSE.items()}


def _collect(channel: paramiko.Channel, deadline: float, where: str) -> tuple[int, str]:
    """Read the command's output until it exits, at most MAX_OUTPUT bytes, until `deadline`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransientProviderError(f"{where}: no answer within {COMMAND_DEADLINE:g}s")
        channel.settimeout(min(left, 1.0))
        try:
            data = channel.recv(32768)
        except TimeoutError:  # socket.timeout is TimeoutError
            continue
        if not data:
            break
        if size < MAX_OUTPUT:
            chunks.append(data[: MAX_OUTPUT - size])
        size += len(data)
        if size > 4 * MAX_OUTPUT:
            # Nothing we run prints this much: stop reading a stream that never ends.
            raise TransientProviderError(f"{where}: more than {4 * MAX_OUTPUT} bytes of output")
    while not channel.exit_status_ready():
        if time.monotonic() > deadline:
            raise TransientProviderError(f"{where}: no exit status within {COMMAND_DEADLINE:g}s")
        time.sleep(0.01)
    out = b"".join(chunks).decode(errors="replace")
    if size > MAX_OUTPUT:
        out += f"\n[output cut at {MAX_OUTPUT} bytes]"
    return channel.recv_exit_status(), out
