from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from respawn.store.disk import LocalFile
from respawn.store.file_backend import FileBackend
from respawn.store.store import CheckpointStore

if TYPE_CHECKING:
    from tests.fakes.runpod import FakeRunPod
    from tests.fakes.vast import FakeVast

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


def b2_simulator() -> tuple[Any, Any]:
    """b2sdk's own RawSimulator behind the real B2Api: a complete offline B2."""
    from b2sdk.v2 import B2Api, B2HttpApiConfig, InMemoryAccountInfo, RawSimulator

    api = B2Api(
        InMemoryAccountInfo(),
        api_config=B2HttpApiConfig(_raw_api_class=RawSimulator),
        max_upload_workers=4,
        max_download_workers=4,
    )
    sim = api.session.raw_api
    api.authorize_account("production", *sim.create_account())
    api.create_bucket("respawn-test", "allPrivate")
    return api, sim


@pytest.fixture(autouse=True)
def quick_tick_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tick lease waits before reading its lease back; in-process tests need not."""
    from respawn.controller import lease

    monkeypatch.setattr(lease, "SETTLE_SECONDS", 0.02)
    monkeypatch.setattr(lease, "LOCAL_SETTLE_SECONDS", 0.02)


@pytest.fixture(params=["file", "b2"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    """The same contract suite runs against every backend."""
    if request.param == "file":
        return CheckpointStore(FileBackend.from_url(f"file://{tmp_path / 'store'}"), "run-a")
    from respawn.store.b2_backend import B2Backend

    api, _sim = b2_simulator()
    return CheckpointStore(B2Backend(api, "respawn-test", "fleet/prefix"), "run-a")


def run_cli(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 60,
    environ: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`respawn ARGS` in a subprocess; `environ`: its environment instead of this one's."""
    env = {**(os.environ if environ is None else environ), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "respawn", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=timeout,
    )


def wait_for(cond: Callable[[], bool], timeout: float = 15) -> None:
    """Poll until cond() holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_vast_pacing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Vast's documented rate limits pace real calls (search: one per 6 s); a loopback fake
    has none, and waiting for them would only slow the suite. The pacing test sets its own."""
    from respawn.provisioning import vast

    monkeypatch.setattr(vast, "PACE_SECONDS", {})


@pytest.fixture(autouse=True)
def no_retry_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries still happen, without the exponential wait between them (tests of the waits
    themselves replace `calls.sleep`)."""
    from respawn.provisioning import calls
    from respawn.store import b2_backend, core

    monkeypatch.setattr(calls, "BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(b2_backend, "BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(core, "OUTAGE_WAIT_S", 0.01)
    monkeypatch.setattr(core, "OUTAGE_MAX_WAIT_S", 0.05)


@pytest.fixture
def clouds(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeVast, FakeRunPod]]:
    """The Vast and RunPod (REST v2) fakes on loopback, with the controller's keys set."""
    from tests.fakes.runpod import FakeRunPod
    from tests.fakes.vast import FakeVast

    vast, runpod = FakeVast(), FakeRunPod()
    vast.url, runpod.url = vast.start(), runpod.start()  # type: ignore[attr-defined]
    monkeypatch.setenv("VAST_API_KEY", vast.api_key)
    monkeypatch.setenv("RUNPOD_API_KEY", runpod.api_key)
    yield vast, runpod
    vast.stop()
    runpod.stop()
