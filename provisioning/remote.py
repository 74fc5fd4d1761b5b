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

from provisioning.base import Instance, ProviderError, TransientProviderError

log = logging.getLogger("respawn.remote")
CONNECT_TIMEOUT = 20.0
COMMAND_TIMEOUT = 60.0

RESTART = "pkill -USR1 -f 'python -m pod_image.bootstrap' && echo signalled"
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


class ShellAccess:
    """Listing by run, restart in place and diagnosis for a cloud whose instances have an SSH
    address. The cloud adapter provides `name`, `remote` and `_all()`."""

    name: str
    remote: Remote | None

    def _all(self) -> list[Instance]:
        raise NotImplementedError

    @property
    def can_restart(self) -> bool:
        return self.remote is not None

    def list_instances(self, run: str) -> list[Instance]:
        return [i for i in self._all() if i.run == run]

    def _remote_at(self, instance_id: str) -> tuple[Remote, str, int]:
        if self.remote is None:
            raise ProviderError(f"{self.name}: no SSH key (set providers.ssh_private_key_env)")
        inst = next((i for i in self._all() if i.id == instance_id), None)
        if inst is None or not inst.ssh_host or not inst.ssh_port:
            raise ProviderError(f"{self.name}: instance {instance_id} has no SSH address")
        return self.remote, inst.ssh_host, inst.ssh_port

    def restart_trainer(self, instance_id: str) -> None:
        remote, host, port = self._remote_at(instance_id)
        remote.restart_trainer(host, port)

    def diagnose(self, instance_id: str) -> dict[str, str]:
        remote, host, port = self._remote_at(instance_id)
        return remote.diagnose(host, port)
