"""CLI polish found trying respawn as a new user (issue 10, item 7)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from respawn import __version__
from tests.conftest import ROOT, run_cli


@pytest.fixture
def fleet_path(tmp_path: Path) -> Path:
    text = (ROOT / "examples" / "local.yaml").read_text()
    path = tmp_path / "fleet.yaml"
    path.write_text(text.replace("/tmp/respawn-local", str(tmp_path / "state")))
    return path


def test_fresh_run_is_new_not_dead_and_prints_no_python_none(fleet_path: Path) -> None:
    proc = run_cli("status", "-c", str(fleet_path))
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()[:2]
    assert header.split()[:4] == ["RUN", "HEALTH", "STEP", "REASON"], proc.stdout
    assert row.split()[:2] == ["toy", "new"], proc.stdout
    assert "None" not in proc.stdout
    assert "fresh start" in proc.stdout


def test_read_only_commands_create_no_directories(fleet_path: Path, tmp_path: Path) -> None:
    assert run_cli("status", "-c", str(fleet_path)).returncode == 0
    assert run_cli("reconcile", "--dry-run", "-c", str(fleet_path)).returncode == 0
    proc = run_cli("ckpt", "ls", "--store", f"file://{tmp_path}/nowhere", "--run", "toy")
    assert proc.returncode == 2 and "not a directory" in proc.stderr  # a typo, not a new store
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "nowhere").exists()


def test_verbose_after_the_subcommand(fleet_path: Path) -> None:
    proc = run_cli("status", "-c", str(fleet_path), "-v")
    assert proc.returncode == 0, proc.stderr
    assert "DEBUG" in proc.stderr or proc.stderr == ""  # accepted, not "unrecognized"
    assert run_cli("-v", "status", "-c", str(fleet_path)).returncode == 0


def test_subcommand_help_has_a_description() -> None:
    for cmd in ("status", "reconcile", "resume", "schema"):
        out = run_cli(cmd, "--help").stdout
        body = out.split("\n\n")[1]  # usage, then the description
        assert not body.startswith(("options", "positional")), out
    out = run_cli("ckpt", "ls", "--help").stdout
    assert "list published steps" in out


def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"respawn {__version__}"


def test_schema_into_a_closed_pipe_is_quiet() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "respawn", "schema"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert "BrokenPipeError" not in err and "Traceback" not in err


def test_schema_duration_defaults_match_their_pattern() -> None:
    import re

    doc = json.loads(run_cli("schema").stdout)
    seen = 0

    def walk(node: object) -> None:
        nonlocal seen
        if isinstance(node, dict):
            if "pattern" in node and isinstance(node.get("default"), str):
                seen += 1
                assert re.match(node["pattern"], node["default"]), node
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert seen >= 5


def test_provider_errors_are_not_prefixed_twice(fleet_path: Path) -> None:
    from respawn.controller import cli

    class Down:
        def offers(self, _resources: object) -> list[object]:
            raise RuntimeError("local: the API is down")

    import respawn.controller.providers as providers

    real = providers.open_providers
    providers.open_providers = lambda _f, _names: {"local": Down()}  # type: ignore[assignment]
    try:
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            cli.main(["offers", "-c", str(fleet_path), "--run", "toy"])
    finally:
        providers.open_providers = real
    assert "local: local:" not in err.getvalue()
    assert "local: the API is down" in err.getvalue()


def test_each_tick_is_recorded_and_status_shows_the_lag(fleet_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from respawn.controller.config import load_config
    from respawn.controller.reconcile import Mode, tick
    from respawn.controller.report import to_markdown, to_text

    fleet = load_config(fleet_path)
    t0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    first = tick(fleet, mode=Mode.DRY_RUN, now=t0)
    assert "no earlier tick recorded" in to_text(first)
    tick(fleet, mode=Mode.ACT, now=t0)
    try:
        later = tick(fleet, mode=Mode.OBSERVE, now=t0 + timedelta(minutes=47))
        assert "previous tick 47m ago (2026-11-25 12:00:00Z)" in to_text(later)
        assert "47m ago" in to_markdown(later)
        doc = json.loads(run_cli("status", "-c", str(fleet_path), "--json").stdout)
        assert doc["runs"][0]["previous_tick_at"].startswith("2026-11-25T12:00:00")
    finally:
        run_cli("terminate", "-c", str(fleet_path), "--run", "toy")
