"""SSH to an instance (issue 12.7): only the host key the pod published is trusted, and a
hostile pod cannot hold a tick with a command that never ends or output that never stops."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from respawn.pod.hostkeys import fingerprint, host_key_fingerprints
from respawn.provisioning import remote
from respawn.provisioning.base import ProviderError, TransientProviderError
from respawn.provisioning.remote import HostKeyMismatch, Remote
from tests.fakes.ssh import FakeSSH

CLIENT_KEY = paramiko.RSAKey.generate(2048)
POD_KEY = paramiko.RSAKey.generate(1024)
IMPOSTOR_KEY = paramiko.RSAKey.generate(1024)


@pytest.fixture
def impostor() -> Iterator[FakeSSH]:
    """Whoever answers at the pod's address now: same login accepted, another host key."""
    ssh = FakeSSH(CLIENT_KEY, {"kill -USR1": (0, "signalled\n")}, host_key=IMPOSTOR_KEY)
    yield ssh
    ssh.stop()


def test_changed_host_key_is_refused_before_any_command(impostor: FakeSSH) -> None:
    with pytest.raises(HostKeyMismatch, match="not one the pod published"):
        Remote(CLIENT_KEY).restart_trainer("127.0.0.1", impostor.port, (POD_KEY.fingerprint,))
    assert impostor.commands == []


def test_no_published_host_key_means_no_connection(impostor: FakeSSH) -> None:
    with pytest.raises(HostKeyMismatch, match="published no host key"):
        Remote(CLIENT_KEY).diagnose("127.0.0.1", impostor.port)
    assert impostor.commands == []


def test_the_published_host_key_is_accepted() -> None:
    ssh = FakeSSH(CLIENT_KEY, {"kill -USR1": (0, "signalled\n")}, host_key=POD_KEY)
    try:
        Remote(CLIENT_KEY).restart_trainer("127.0.0.1", ssh.port, (POD_KEY.fingerprint,))
        assert ssh.commands and ssh.commands[0].startswith("kill -USR1")
    finally:
        ssh.stop()


def _bounded(fn: object, limit: float) -> BaseException | None:
    """Run fn in a thread; fail the test (instead of hanging) when it outlives `limit`."""
    box: list[BaseException | None] = []

    def go() -> None:
        try:
            fn()  # type: ignore[operator]
            box.append(None)
        except BaseException as e:
            box.append(e)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(limit)
    assert box, f"the SSH command was still running after {limit}s"
    return box[0]


def test_a_pod_streaming_forever_cannot_hold_the_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "COMMAND_DEADLINE", 1.0)
    monkeypatch.setattr(remote, "MAX_OUTPUT", 64 * 1024)
    ssh = FakeSSH(CLIENT_KEY, {}, host_key=POD_KEY, stream_forever=("tail",))
    try:
        pins = (POD_KEY.fingerprint,)
        err = _bounded(lambda: Remote(CLIENT_KEY).diagnose("127.0.0.1", ssh.port, pins), 20)
        assert isinstance(err, TransientProviderError)
    finally:
        ssh.stop()


def test_output_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "MAX_OUTPUT", 1000)
    ssh = FakeSSH(CLIENT_KEY, {"tail": (0, "x" * 3000)}, host_key=POD_KEY)
    try:
        rc, out = Remote(CLIENT_KEY).run("127.0.0.1", ssh.port, "tail", (POD_KEY.fingerprint,))
        assert rc == 0 and out.startswith("x" * 1000) and "output cut at 1000 bytes" in out
        assert out.count("x") == 1000
    finally:
        ssh.stop()


def test_restart_that_finds_no_supervisor_is_an_error() -> None:
    ssh = FakeSSH(CLIENT_KEY, {"kill -USR1": (1, "no such process\n")}, host_key=POD_KEY)
    try:
        with pytest.raises(ProviderError, match="no pod supervisor"):
            Remote(CLIENT_KEY).restart_trainer("127.0.0.1", ssh.port, (POD_KEY.fingerprint,))
    finally:
        ssh.stop()


def test_pod_publishes_the_fingerprint_ssh_clients_see(tmp_path: Path) -> None:
    (tmp_path / "ssh_host_rsa_key.pub").write_text(
        f"{POD_KEY.get_name()} {POD_KEY.get_base64()} root@pod\n"
    )
    (tmp_path / "ssh_host_junk_key.pub").write_text("garbage\n")
    assert host_key_fingerprints(tmp_path) == (POD_KEY.fingerprint,)
    assert fingerprint("ssh-ed25519 !!!notbase64") is None
