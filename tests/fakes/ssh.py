"""An SSH server on 127.0.0.1: paramiko's server side in the test process.

It accepts one public key for `root`, records every exec'd command and answers from a table
of canned replies (first matching prefix wins; real `nvidia-smi` output lives in fixtures).
"""

from __future__ import annotations

import socket
import threading
import time

import paramiko


class _Iface(paramiko.ServerInterface):
    def __init__(self, fake: FakeSSH) -> None:
        self.fake = fake

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == "root" and key == self.fake.authorized:
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        text = command.decode()
        self.fake.commands.append(text)
        if any(text.startswith(p) for p in self.fake.stream_forever):

            def flood() -> None:
                chunk = b"y" * 4096
                try:
                    while not self.fake.stopped.is_set():
                        channel.sendall(chunk)
                except (OSError, EOFError):
                    return

            threading.Thread(target=flood, daemon=True).start()
            return True
        rc, out = next(
            (
                (rc, out)
                for prefix, (rc, out) in self.fake.replies.items()
                if text.startswith(prefix)
            ),
            (127, f"sh: {text.split()[0]}: not found\n"),
        )

        def answer() -> None:
            time.sleep(0.05)  # let paramiko acknowledge the exec request first
            channel.sendall(out.encode())
            channel.send_exit_status(rc)
            channel.close()

        threading.Thread(target=answer, daemon=True).start()
        return True


class FakeSSH:
    host_key = paramiko.RSAKey.generate(2048)

    def __init__(
        self,
        authorized: paramiko.PKey,
        replies: dict[str, tuple[int, str]],
        host_key: paramiko.PKey | None = None,
        stream_forever: tuple[str, ...] = (),
    ) -> None:
        self.authorized = authorized
        self.replies = replies
        if host_key is not None:
            self.host_key = host_key
        self.stream_forever = stream_forever  # commands answered with an endless stream
        self.stopped = threading.Event()
        self.commands: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._transports: list[paramiko.Transport] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            try:
                transport.start_server(server=_Iface(self))
            except (OSError, EOFError, paramiko.SSHException):
                # A client that refuses our host key hangs up mid-handshake: that is the
                # behaviour under test, not a failure of this server.
                transport.close()
                continue
            self._transports.append(transport)

    @property
    def fingerprint(self) -> str:
        return str(self.host_key.fingerprint)

    def stop(self) -> None:
        self.stopped.set()
        self._stop.set()
        for t in self._transports:
            t.close()
        self._sock.close()
