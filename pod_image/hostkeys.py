"""The pod's SSH host key fingerprints, published in its heartbeat so the controller can pin
them (an SSH server at the instance's address that presents another key is not this pod)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

HOST_KEY_DIR = Path("/etc/ssh")


def fingerprint(public_line: str) -> str | None:
    """`SHA256:...` of one OpenSSH public key line (`TYPE BASE64 [comment]`), as `ssh-keygen
    -l` and paramiko print it; None when the line is not a key."""
    parts = public_line.split()
    if len(parts) < 2:
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        return None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def host_key_fingerprints(directory: Path = HOST_KEY_DIR) -> tuple[str, ...]:
    """Every host key sshd may present (`ssh_host_*_key.pub`); none where there is no sshd."""
    out = []
    for pub in sorted(directory.glob("ssh_host_*_key.pub")):
        try:
            fp = fingerprint(pub.read_text())
        except OSError:
            continue
        if fp:
            out.append(fp)
    return tuple(out)
