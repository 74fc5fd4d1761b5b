"""Shell access to an instance over SSH (paramiko): diagnose it, restart its trainer in place.

Instances are new machines every time, so there is no host key to pin: the key is accepted
and its fingerprint logged. The private key comes from an environment variable (a GitHub
secret), never from the config file.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import paramiko

from respawn.contract.pod import SUPERVISOR_PIDFILE
from respawn.provisioning.base import ProviderError, TransientProviderError

log = logging.getLogger("respawn.remote")
CONNECT_TIMEOUT = 20.0
COMMAND_TIMEOUT = 60.0

# Signal the supervisor through its pidfile: a `pkill -f` pattern also matches the `sh -c`
# that runs it (killing the wrapper, so success reads as failure) and misses `python3`.
RESTART = f'kill -USR1 "$(cat {SUPERVISOR_PIDFILE})" && echo signalled'
DIAGNOSE = {
    "gpus": "nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total "
    "--format=csv,noheader 2>&1 || echo 'nvidia-smi failed'",
    "log": "tail -n 40 /var/log/respawn/pod.log 2>&1",
    "disk": "df -h / /workspace 2>&1",
}


class _LogHostKey(paramiko.MissingHostKeyPolicy):
    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        log.info("ssh %s: host key %s %s", hostname, key.get_name(), key.fingerprint)


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

    def run(self, host: str, port: int, command: str) -> tuple[int, str]:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_LogHostKey())
        try:
            client.connect(
                host,
                port=port,
                username=self.user,
                pkey=self.key,
                timeout=CONNECT_TIMEOUT,
                banner_timeout=CONNECT_TIMEOUT,
                auth_timeout=CONNECT_TIMEOUT,
                allow_agent=False,
                look_for_keys=False,
            )
            _stdin, stdout, _stderr = client.exec_command(command, timeout=COMMAND_TIMEOUT)
            out = stdout.read().decode(errors="replace")
            return stdout.channel.recv_exit_status(), out
        except paramiko.AuthenticationException as e:
            raise ProviderError(f"ssh {host}:{port}: authentication failed ({e})") from e
        except (OSError, paramiko.SSHException) as e:
            raise TransientProviderError(f"ssh {host}:{port}: {e}") from e
        finally:
            client.close()

    def restart_trainer(self, host: str, port: int) -> None:
        rc, out = self.run(host, port, RESTART)
        if rc != 0:
            raise ProviderError(f"ssh {host}:{port}: no pod supervisor to signal ({out.strip()})")

    def diagnose(self, host: str, port: int) -> dict[str, str]:
        return {name: self.run(host, port, cmd)[1] for name, cmd in DIAGNOSE.items()}
