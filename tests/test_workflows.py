"""The GitHub Actions workflows: static analysis, the reusable tick's contract, and its tick
step run exactly as the workflow runs it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from respawn.store.keys import Keys
from tests.conftest import ROOT, run_cli

WORKFLOWS = ROOT / ".github" / "workflows"
DOCS = ROOT / "docs"


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def on(doc: dict[str, Any]) -> dict[str, Any]:
    return doc[True] if True in doc else doc["on"]  # YAML 1.1 reads a bare `on` as true


def test_control_plane_calls_the_reusable_tick_every_ten_minutes() -> None:
    doc = load("control.yml")
    crons = [c["cron"] for c in on(doc)["schedule"]]
    assert "*/10 * * * *" in crons and len(crons) == 2  # ticks + weekly keepalive
    assert "workflow_dispatch" in on(doc)
    assert doc["permissions"] == {}
    job = doc["jobs"]["tick"]
    assert job["uses"] == "./.github/workflows/tick.yml"
    assert job["with"]["respawn_ref"] == "${{ github.sha }}"


def test_reusable_tick_contract() -> None:
    doc = load("tick.yml")
    call = on(doc)["workflow_call"]
    assert set(call["inputs"]) >= {"action", "run", "dry_run", "config", "respawn_ref"}
    tick = doc["jobs"]["tick"]
    assert tick["concurrency"]["cancel-in-progress"] is False  # ticks queue, never overlap
    assert tick["environment"] == "${{ inputs.environment }}"
    assert tick["permissions"] == {"contents": "read"}
    assert doc["jobs"]["keepalive"]["permissions"] == {"actions": "write"}
    for step in tick["steps"]:
        uses = step.get("uses")
        if uses:  # every action pinned to a full commit
            assert len(uses.split("@")[1].split()[0]) == 40, uses


def test_zizmor_finds_nothing() -> None:
    zizmor = shutil.which("zizmor", path=os.path.dirname(sys.executable)) or shutil.which("zizmor")
    if zizmor is None:
        pytest.skip("zizmor is not installed (pip install -e '.[test]')")
    proc = subprocess.run([zizmor, "--offline", str(WORKFLOWS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_caller_example_in_the_docs_is_a_valid_caller() -> None:
    text = (DOCS / "use-from-your-repository.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    doc = yaml.safe_load(block)
    assert len(block.strip().splitlines()) <= 30
    job = doc["jobs"]["respawn"]
    assert job["uses"].startswith("OWNER/respawn/.github/workflows/tick.yml@")
    inputs = on(load("tick.yml"))["workflow_call"]["inputs"]
    assert set(job["with"]) <= set(inputs)
    required = {name for name, spec in inputs.items() if spec.get("required")}
    assert required <= set(job["with"]), required - set(job["with"])
    repo, sha = job["uses"].split("/.github/")[0], job["uses"].split("@")[1]
    assert job["with"]["respawn_repository"] == repo and job["with"]["respawn_ref"] == sha
    assert "run" in on(doc)["workflow_dispatch"]["inputs"]  # the pod dispatches with `run`


def tick_step() -> str:
    (step,) = [s for s in load("tick.yml")["jobs"]["tick"]["steps"] if s.get("name") == "Tick"]
    return str(step["run"])


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    text = (ROOT / "examples" / "local.yaml").read_text()
    path.write_text(text.replace("/tmp/respawn-local", str(tmp_path)))
    return path


def run_step(tmp_path: Path, fleet: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        "FLEET_CONFIG": str(fleet),
        "ACTION": "reconcile",
        "ONLY_RUN": "toy",
        "DRY_RUN": "false",
        "STEP": "",
        **env,
    }
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", tick_step()],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("dry_run", ["true", "false"])
def test_tick_step_runs_as_in_the_workflow(tmp_path: Path, fleet: Path, dry_run: str) -> None:
    proc = run_step(tmp_path, fleet, DRY_RUN=dry_run)
    try:
        assert proc.returncode == 0, proc.stderr
        assert "toy" in proc.stdout and "never launched" in proc.stdout
        launched = (tmp_path / "store" / Keys("toy").ledger).exists()
        assert launched == (dry_run == "false")
    finally:
        run_cli("terminate", "-c", str(fleet), "--run", "toy")


def test_tick_step_rejects_an_unknown_action(tmp_path: Path, fleet: Path) -> None:
    proc = run_step(tmp_path, fleet, ACTION="destroy-everything")
    assert proc.returncode == 2 and "unknown action" in proc.stdout


def test_secrets_the_config_names_reach_respawn_without_the_workflow_naming_them(
    tmp_path: Path, fleet: Path
) -> None:
    """The tick passes every secret as one JSON; respawn exports them to itself only."""
    from respawn.controller.cli import export_workflow_secrets

    env = {
        "RESPAWN_SECRETS_JSON": json.dumps(
            {"MY_B2_ID": "k1", "github_token": "ghs_x", "PRESET": "new"}
        ),
        "PRESET": "old",
    }
    export_workflow_secrets(env)
    assert env == {"MY_B2_ID": "k1", "PRESET": "old"}

    text = fleet.read_text().replace("store:\n", "store:\n  key_id_env: MY_B2_ID\n")
    fleet.write_text(text)
    proc = run_step(
        tmp_path,
        fleet,
        ACTION="status",
        RESPAWN_SECRETS_JSON=json.dumps({"MY_B2_ID": "s3cr3t-value"}),
    )
    assert proc.returncode == 0, proc.stderr
    assert "s3cr3t-value" not in proc.stdout + proc.stderr


def test_keepalive_re_enables_the_calling_workflow_through_the_api() -> None:
    from tests.fakes.github import FakeGitHub

    (step,) = load("tick.yml")["jobs"]["keepalive"]["steps"]
    gh = FakeGitHub("ghs_job_token", "me/train", {"respawn.yml": {"run"}})
    url = gh.start()
    try:
        env = {
            "PATH": os.environ["PATH"],
            "GH_TOKEN": "ghs_job_token",
            "API": url,
            "REPO": "me/train",
            "CALLER": "me/train/.github/workflows/respawn.yml@refs/heads/main",
        }
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", step["run"]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert gh.enabled == ["respawn.yml"]
        assert "ghs_job_token" not in proc.stdout + proc.stderr

        env["GH_TOKEN"] = "wrong"
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", step["run"]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0  # a rejected token fails the job, visibly
    finally:
        gh.stop()


def test_lock_pins_every_dependency_with_hashes() -> None:
    """The workflow installs requirements/control.lock with --require-hashes."""
    import tomllib

    text = (ROOT / "requirements" / "control.lock").read_text()
    pins: dict[str, int] = {}
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name = line.split("==", 1)[0].lower()
        assert "==" in line, f"not pinned: {line[:80]}"
        pins[name] = line.count("--hash=sha256:")
    assert pins and all(pins.values()), [n for n, h in pins.items() if not h]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = [*project["dependencies"], *project["optional-dependencies"]["control"]]
    for req in direct:
        name = re.split(r"[<>=\[ ;]", req, maxsplit=1)[0].lower()
        assert name in pins, f"{name} is in pyproject.toml but not in the lock: regenerate it"


def _lock_pins() -> dict[str, tuple[str, int]]:
    """name → (pinned version, number of hashes) of requirements/control.lock."""
    text = (ROOT / "requirements" / "control.lock").read_text()
    pins: dict[str, tuple[str, int]] = {}
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, rest = line.partition("==")
            pins[name.lower()] = (rest.split()[0], line.count("--hash=sha256:"))
    return pins


def test_the_build_backend_is_locked_and_hashed_and_nothing_else_is_fetched() -> None:
    """Issue 19.8: installing respawn from its source used to fetch `setuptools>=68` (its build
    backend: code that runs in the job, ahead of the step holding the secrets) unpinned and
    unhashed into an isolated build environment. The backend now comes from the lock, hash
    checked, and respawn is built against it without build isolation."""
    import tomllib

    from packaging.requirements import Requirement

    pins = _lock_pins()
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for raw in build:
        req = Requirement(raw)
        assert req.name.lower() in pins, f"{req.name} (build-system) is not in the lock"
        version, hashes = pins[req.name.lower()]
        assert hashes and req.specifier.contains(version), (raw, version, hashes)
    step = next(
        s for s in load("tick.yml")["jobs"]["tick"]["steps"] if s["name"].startswith("Install")
    )
    installs = [
        " ".join(cmd.split())
        for cmd in step["run"].replace("\\\n", " ").splitlines()
        if "pip install" in cmd
    ]
    assert installs
    for cmd in installs:
        locked = "--require-hashes" in cmd and " -r " in cmd
        built = "--no-build-isolation" in cmd and "--no-deps" in cmd
        assert locked or built, f"installs something neither locked nor built offline: {cmd}"


def test_callers_pass_secrets_inherit_so_environment_secrets_arrive() -> None:
    """Issue 20.9: in a `workflow_call` job, environment secrets resolve empty unless the
    caller passes `secrets: inherit` (docs/use-from-your-repository.md cites why)."""
    text = (DOCS / "use-from-your-repository.md").read_text()
    caller = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert caller["jobs"]["respawn"].get("secrets") == "inherit"
    assert load("control.yml")["jobs"]["tick"].get("secrets") == "inherit"
    for cited in (
        "docs.github.com/en/actions/how-tos/reuse-automations/reuse-workflows",
        "actions/runner/issues/4453",
        "control-workflow-concurrency",
    ):
        assert cited in text


def _concurrency_group(action: str, run_id: int) -> str:
    """The tick job's concurrency group as GitHub evaluates it, for one call."""
    from types import SimpleNamespace

    group = str(load("tick.yml")["jobs"]["tick"]["concurrency"]["group"]).strip()
    if not group.startswith("${{"):
        return group
    expr = group.removeprefix("${{").removesuffix("}}")
    expr = expr.replace("&&", " and ").replace("||", " or ").replace("!=", " != ")

    def fmt(template: str, *args: object) -> str:
        return template.format(*args)

    namespace = {
        "inputs": SimpleNamespace(action=action),
        "github": SimpleNamespace(repository="me/train", run_id=run_id, workflow="respawn"),
        "format": fmt,
    }
    return str(eval(" ".join(expr.split()), {"__builtins__": {}}, namespace))


def test_a_queued_terminate_is_never_replaced_by_the_next_cron_tick() -> None:
    """GitHub keeps one pending run per concurrency group and cancels it when another is
    queued: a terminate waiting behind a running tick must not share the ticks' group."""
    job = load("tick.yml")["jobs"]["tick"]
    assert job["concurrency"]["cancel-in-progress"] is False
    ticks = {_concurrency_group("reconcile", run_id) for run_id in (101, 102, 103)}
    assert len(ticks) == 1  # reconciles never overlap
    for action in ("terminate", "resume", "rollback", "status"):
        mine = {_concurrency_group(action, run_id) for run_id in (104, 105)}
        assert len(mine) == 2 and not mine & ticks, (action, mine, ticks)
    assert "concurrency" not in load("control.yml")  # a caller's group would undo it


def preflight_step() -> str:
    steps = load("tick.yml")["jobs"]["tick"]["steps"]
    names = [s.get("name", "") for s in steps]
    first = next(i for i, s in enumerate(steps) if "secrets" in json.dumps(s.get("env", {})))
    assert names[first] == "Check the secrets the fleet config names", names
    return str(steps[first]["run"])


@pytest.mark.parametrize(
    ("action", "secrets", "rc"),
    [
        ("reconcile", {}, 1),
        ("terminate", {}, 0),
        ("reconcile", {"NEWCOMER_TOKEN": "t0ken-v4lue"}, 0),
    ],
)
def test_the_tick_fails_first_naming_the_missing_secrets(
    tmp_path: Path, fleet: Path, action: str, secrets: dict[str, str], rc: int
) -> None:
    doc = yaml.safe_load(fleet.read_text())
    doc["runs"][0]["pod"]["secret_env"] = ["NEWCOMER_TOKEN"]
    fleet.write_text(yaml.safe_dump(doc))
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        "FLEET_CONFIG": str(fleet),
        "ACTION": action,
        "ENVIRONMENT": "respawn",
        "RESPAWN_SECRETS_JSON": json.dumps({"github_token": "ghs_x", **secrets}),
    }
    env.pop("NEWCOMER_TOKEN", None)
    proc = subprocess.run(
        ["bash", "-e", "-c", preflight_step()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == rc, proc.stdout + proc.stderr
    if not secrets:
        kind = "::error" if action == "reconcile" else "::warning"
        (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith(kind)]
        assert "NEWCOMER_TOKEN" in line and "secrets: inherit" in line
    assert "t0ken-v4lue" not in proc.stdout + proc.stderr
