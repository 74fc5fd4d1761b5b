from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckptstore.file_backend import FileBackend
from ckptstore.sources import LocalFile
from ckptstore.store import CheckpointStore

ROOT = Path(__file__).resolve().parent.parent


def make_step(tmp: Path, step: int, files: dict[str, bytes]) -> list[LocalFile]:
    """Write files for one step under tmp/src_<step>/ and describe them as LocalFiles."""
    base = tmp / f"src_{step}"
    out = []
    for rel, data in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out.append(LocalFile(rel, p, len(data)))
    return out


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(FileBackend.from_url(f"file://{tmp_path / 'store'}"), "run-a")


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=timeout,
    )
