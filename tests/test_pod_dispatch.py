"""The pod asks GitHub for a tick (issue 10, item 3), against a loopback fake of the REST API."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from respawn.contract.pod import DispatchSpec
from respawn.pod.dispatch import TickRequester
from respawn.store.schema import TickRecord, utcnow
from respawn.store.store import CheckpointStore
from tests.conftest import wait_for
from tests.fakes.github import FakeGitHub
from tests.fakes.http import Fault
from tests.test_pod import TOY, pod_spec, start_pod

TOKEN = "github_pat_11TESTONLY"


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    gh = FakeGitHub(TOKEN, "me/train", {"respawn.yml": {"run", "action", "dry_run"}})
    gh.url = gh.start()  # type: ignore[attr-defined]
    yield gh
    gh.stop()


def spec(github: FakeGitHub, **kw: object) -> DispatchSpec:
    return DispatchSpec.model_validate(
        {
            "repository": "me/train",
            "workflow": "respawn.yml",
            "api_url": github.url,  # type: ignore[attr-defined]
            **kw,
        }
    )


def test_dispatch_sends_the_documented_request(github: FakeGitHub) -> None:
    req = TickRequester(spec(github), "run-a", {"RESPAWN_DISPATCH_TOKEN": TOKEN}, backoff=0)
    assert req.request("test")
    assert github.dispatches == [
        {"workflow": "respawn.yml", "ref": "main", "inputs": {"run": "run-a"}}
    ]


def test_dispatch_is_rate_limited(github: FakeGitHub) -> None:
    now = [0.0]
    req = TickRequester(
        spec(github), "r", {"RESPAWN_DISPATCH_TOKEN": TOKEN}, clock=lambda: now[0], backoff=0
    )
    assert req.request("one") and not req.request("two")
    now[0] += 301
    assert req.request("three")
    assert len(github.dispatches) == 2


def test_dispatch_retries_server_errors_not_client_errors(
    github: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    github.fail("dispatch", Fault(503))
    req = TickRequester(spec(github), "r", {"RESPAWN_DISPATCH_TOKEN": TOKEN}, backoff=0)
    assert req.request("after a 503")
    assert github.count("dispatch") == 2

    bad = TickRequester(
        spec(github, min_interval="1ms"), "r", {"RESPAWN_DISPATCH_TOKEN": "wrong"}, backoff=0
    )
    with caplog.at_level(logging.INFO):
        assert not bad.request("bad token")
    assert github.count("dispatch") == 3  # a 401 is not retried
    assert "rejected" in caplog.text and "wrong" not in caplog.text and TOKEN not in caplog.text

    missing = TickRequester(
        spec(github, workflow="nope.yml"), "r", {"RESPAWN_DISPATCH_TOKEN": TOKEN}, backoff=0
    )
    assert not missing.request("unknown workflow")
    assert "no workflow 'nope.yml'" in caplog.text


def test_dispatch_token_must_reach_the_pod() -> None:
    with pytest.raises(ValueError, match="must also be listed in secret_env"):
        pod_spec(TOY % (10, "0"), dispatch={"repository": "me/train", "workflow": "r.yml"})


def pod_with_dispatch(github: FakeGitHub, command: str, **kw: object) -> object:
    return pod_spec(
        command,
        secret_env=["RESPAWN_DISPATCH_TOKEN"],
        dispatch={
            "repository": "me/train",
            "workflow": "respawn.yml",
            "api_url": github.url,  # type: ignore[attr-defined]
            "overdue_after": "1m",
        },
        **kw,
    )


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")


@pytest.fixture(autouse=True)
def token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESPAWN_DISPATCH_TOKEN", TOKEN)


def test_sigterm_asks_for_a_tick(
    tmp_path: Path, store: CheckpointStore, github: FakeGitHub
) -> None:
    proc = start_pod(tmp_path, pod_with_dispatch(github, TOY % (400, "0.05")))  # type: ignore[arg-type]
    try:
        wait_for(lambda: (p := store.read_pointer()) is not None and p.step >= 5)
        assert github.dispatches == []  # no tick record: nothing is overdue
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert [d["inputs"] for d in github.dispatches] == [{"run": "r"}], out
    assert TOKEN not in out


def test_trainer_failure_asks_for_a_tick(
    tmp_path: Path, store: CheckpointStore, github: FakeGitHub
) -> None:
    command = "{python} -c 'import sys; sys.exit(5)' {resume_step}"
    proc = start_pod(tmp_path, pod_with_dispatch(github, command, max_trainer_restarts=0))  # type: ignore[arg-type]
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, out
    assert len(github.dispatches) == 1, out


def test_overdue_ticks_ask_for_a_tick(
    tmp_path: Path, store: CheckpointStore, github: FakeGitHub
) -> None:
    store.write_tick(TickRecord(run="r", at=utcnow() - timedelta(hours=2)))
    proc = start_pod(tmp_path, pod_with_dispatch(github, TOY % (400, "0.05")))  # type: ignore[arg-type]
    try:
        wait_for(lambda: len(github.dispatches) >= 1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the supervisor stops its trainer's group too
        proc.communicate(timeout=20)
    assert github.dispatches[0]["inputs"] == {"run": "r"}


def test_the_trainer_never_sees_the_dispatch_token(
    tmp_path: Path, store: CheckpointStore, github: FakeGitHub
) -> None:
    command = (
        "{python} -c \"import os, sys; sys.exit(7 if 'RESPAWN_DISPATCH_TOKEN' in os.environ "
        'else 0)" {resume_step}'
    )
    proc = start_pod(tmp_path, pod_with_dispatch(github, command, max_trainer_restarts=0))  # type: ignore[arg-type]
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out  # exit 7 would have made the pod give up
