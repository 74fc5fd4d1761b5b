"""Shell access as a provider capability: restart the trainer in place and diagnose, over SSH.

paramiko is imported only when a key is configured (`respawn.provisioning.remote`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from respawn.provisioning.base import Instance, ProviderError, WithTrainerControl

if TYPE_CHECKING:
    from respawn.provisioning.remote import Remote


class ShellAccess(WithTrainerControl):
    """Restart in place and diagnosis over SSH, for a cloud whose instances have an SSH
    address. The cloud adapter provides `name`, `remote` and `list_all()`."""

    name: ClassVar[str]
    remote: Remote | None

    @abstractmethod
    def list_all(self) -> list[Instance]: ...

    @property
    def can_restart(self) -> bool:
        return self.remote is not None

    def _remote_at(self, instance_id: str) -> tuple[Remote, str, int]:
        if self.remote is None:
            raise ProviderError(f"{self.name}: no SSH key (set providers.ssh_private_key_env)")
        inst = next((i for i in self.list_all() if i.id == instance_id), None)
        if inst is None or not inst.ssh_host or not inst.ssh_port:
            raise ProviderError(f"{self.name}: instance {instance_id} has no SSH address")
        return self.remote, inst.ssh_host, inst.ssh_port

    def restart_trainer(self, instance_id: str, host_keys: Sequence[str] = ()) -> None:
        remote, host, port = self._remote_at(instance_id)
        remote.restart_trainer(host, port, host_keys)

    def diagnose(self, instance_id: str, host_keys: Sequence[str] = ()) -> dict[str, str]:
        remote, host, port = self._remote_at(instance_id)
        return remote.diagnose(host, port, host_keys)
