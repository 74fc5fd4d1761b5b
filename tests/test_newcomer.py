"""What a new user meets first (issue 20.10): the commands' own answers, the examples, the
errors. Each test is one defect a newcomer hit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from respawn.controller.cli import main
from tests.conftest import ROOT, run_cli

PRODUCTION = ROOT / "examples" / "production.yaml"


def _production_with_every_kind_of_secret(tmp: Path) -> Path:
    doc = yaml.safe_load(PRODUCTION.read_text())
    doc["runs"][0]["pod"]["registry_auth_env"] = "REGISTRY_LOGIN"
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _named(text: str) -> set[str]:
    return set(re.findall(r"\b[A-Z][A-Z0-9_]{3,}\b", text))


def test_validate_env_and_doctor_check_one_set_of_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _production_with_every_kind_of_secret(tmp_path)
    for name in _named(path.read_text()):
        monkeypatch.delenv(name, raising=False)
    assert main(["validate", "-c", str(path), "--env"]) != 0
    validate = capsys.readouterr().err
    assert main(["doctor", "-c", str(path)]) != 0
    doctor = capsys.readouterr().out
    expected = {
        "B2_APPLICATION_KEY_ID",
        "B2_APPLICATION_KEY",
        "B2_POD_KEY_ID",
        "B2_POD_KEY",
        "RESPAWN_LEDGER_SECRET",
        "VAST_API_KEY",
        "RUNPOD_API_KEY",
        "RESPAWN_SSH_PRIVATE_KEY",
        "RESPAWN_WEBHOOK_URL",
        "WANDB_API_KEY",
        "HF_TOKEN",
        "REGISTRY_LOGIN",
    }
    assert expected <= _named(validate), expected - _named(validate)
    assert expected <= _named(doctor), expected - _named(doctor)


def test_production_example_validates_without_warnings() -> None:
    proc = run_cli("validate", "-c", str(PRODUCTION))
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr.lower(), proc.stderr


def test_respawn_pod_help_describes_it(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from respawn.pod.bootstrap import entrypoint; "
            "sys.argv = ['respawn-pod', '--help']; entrypoint()",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "usage: respawn-pod" in proc.stdout and "RESPAWN_STORE" in proc.stdout
    assert "ERROR" not in proc.stdout + proc.stderr


def test_config_errors_name_only_the_real_errors(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "store:\n  url: file:///tmp/x\nruns:\n  - name: Bad_Name\n    providers: [local]\n"
    )
    proc = run_cli("validate", "-c", str(path))
    assert proc.returncode == 2
    assert "runs[0].name" in proc.stderr and "runs[0].budget" in proc.stderr
    assert "at least 1 item" not in proc.stderr, proc.stderr
    path.write_text("store:\n  url: file:///tmp/x\nruns: []\n")
    proc = run_cli("validate", "-c", str(path))
    assert proc.returncode == 2 and "at least 1 item" in proc.stderr  # a real error stays


def test_diagnose_on_a_halted_run_says_what_there_is(tmp_path: Path) -> None:
    from tests.test_reconcile import write_fleet

    path = write_fleet(tmp_path)
    assert run_cli("terminate", "-c", str(path), "--run", "job").returncode == 0
    proc = run_cli("diagnose", "-c", str(path), "--run", "job")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "no instance" in out
    assert "stopped by hand: `respawn terminate`" in out
    assert "respawn logs" in out and "respawn history" in out


def test_a_missing_secret_does_not_spend_a_generation_per_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from respawn.controller.config import load_config
    from respawn.controller.ledger import read_ledger
    from respawn.controller.reconcile import tick
    from respawn.controller.stores import open_run_store
    from tests.test_reconcile import write_fleet

    path = write_fleet(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["runs"][0]["wandb"] = {"entity": "me", "project": "p", "api_key_env": "NEWCOMER_WANDB"}
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.delenv("NEWCOMER_WANDB", raising=False)
    fleet = load_config(path)
    for _ in range(3):
        (report,) = tick(fleet)
        (launch,) = [r for r in report.results if r.action.kind == "provision"]
        assert not launch.ok and "NEWCOMER_WANDB" in launch.detail
    ledger = read_ledger(open_run_store(fleet.store, "job"))
    assert ledger.generation == 0, f"3 ticks claimed g{ledger.generation} and launched nothing"
    assert ledger.launches == ()  # nothing counted against the crash-loop breaker either


def _commands() -> set[str]:
    import argparse

    from respawn.controller.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


@pytest.mark.parametrize("page", ["README.md", "docs/contracts.md"])
def test_every_command_is_in_the_command_lists(page: str) -> None:
    text = (ROOT / page).read_text()
    listed = set(re.findall(r"respawn ([a-z]+)", text))
    assert "doctor" in _commands()
    assert _commands() <= listed, _commands() - listed


def test_instance_names_in_the_contracts_are_the_ones_respawn_gives() -> None:
    from respawn.provisioning.base import instance_name, parse_instance_name

    text = (ROOT / "docs" / "contracts.md").read_text()
    names = re.findall(r"respawn-[A-Za-z0-9-]+-g\d+", text)
    assert names
    for name in names:  # FLEET and RUN are placeholders: a fleet id and a run name
        real = name.replace("FLEET", "f00d").replace("RUN", "run")
        assert parse_instance_name(real, "f00d") is not None, name
    assert instance_name("RUN", 7, "FLEET") in text


@pytest.mark.slow
def test_demo_table_is_whole_and_shows_every_published_step(tmp_path: Path) -> None:
    """stdout and stderr as a terminal shows them: one stream, in order."""
    proc = subprocess.run(
        [sys.executable, "-m", "respawn", "demo", "--workdir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "PYTHONUNBUFFERED": "1"},
    )
    out = proc.stdout
    assert proc.returncode == 0, out
    table = out[out.index("  time  event") : out.index("demo passed")]
    logged = [ln for ln in table.splitlines() if re.match(r"\s*(WARNING|INFO|ERROR)\b", ln)]
    assert not logged, logged
    published = [int(m.group(1)) for m in re.finditer(r"checkpoint published\s+(\d+)\s+g2", table)]
    resumed = int(re.search(r"launch\s+(\d+)\s+g2", table).group(1))  # type: ignore[union-attr]
    assert published == list(range(resumed + 5, 41, 5)), table


def test_demo_takes_a_relative_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`respawn demo --workdir demo` made the store URL file://demo/store: no URL at all."""
    from respawn.examples import demo

    seen: list[str] = []

    def play(self: demo.Demo, reference: subprocess.Popen[bytes]) -> int:
        seen.append(self.fleet.store.url)  # the loop itself is the slow demo test's
        return 0

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo.Demo, "play", play)
    assert demo.run_demo(workdir=Path("rel-demo")) == 0
    assert seen == [f"file://{tmp_path / 'rel-demo' / 'store'}"]


def test_local_instances_each_get_their_own_workdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from respawn.provisioning.base import LaunchSpec, Resources
    from respawn.provisioning.local import LocalProvider
    from tests.test_reconcile import write_fleet

    monkeypatch.chdir(tmp_path)
    provider = LocalProvider("state", term_grace=2)  # relative, as in a fleet config
    offer = provider.offers(Resources(max_price_per_hour=1))[0]
    disks = []
    for gen in (1, 2):
        spec = LaunchSpec(
            run="r", generation=gen, image=None, disk_gb=1, max_price_per_hour=1, env={}
        )
        inst = provider.launch(offer, spec)
        rec = provider.record(inst.id)
        assert rec is not None and Path(str(rec["disk"])).is_absolute()
        disks.append(Path(str(rec["disk"])))
        provider.terminate(inst.id)
    assert disks[0] != disks[1]

    path = write_fleet(tmp_path)
    for shared in ("/tmp/shared-work", "../shared"):
        doc = yaml.safe_load(path.read_text())
        doc["runs"][0]["pod"]["workdir"] = shared
        path.write_text(yaml.safe_dump(doc))
        proc = run_cli("validate", "-c", str(path))
        assert proc.returncode == 0 and "every generation" in proc.stderr, proc.stderr


def test_plan_of_a_run_it_would_not_launch_says_why(tmp_path: Path) -> None:
    """`plan` named only the health ("stopped: launches nothing"), never the reason `status`
    gives: a newcomer whose run is unknown (a key missing) saw no cause at all."""
    import json

    from tests.test_reconcile import write_fleet

    path = write_fleet(tmp_path)
    assert run_cli("terminate", "-c", str(path), "--run", "job").returncode == 0
    proc = run_cli("plan", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "launches nothing" in proc.stdout and "stopped by hand" in proc.stdout, proc.stdout
    doc = json.loads(run_cli("plan", "-c", str(path), "--json").stdout)
    assert "stopped by hand" in doc["runs"][0]["reason"]


def test_diagnose_hints_keep_each_command_apart_from_what_it_shows(tmp_path: Path) -> None:
    """The hints went through the one-line filter for pod text, which dropped their indent and
    column gap: "respawn logs -c f --run job the trainer's last output" reads as one command."""
    from tests.test_reconcile import write_fleet

    path = write_fleet(tmp_path)
    proc = run_cli("diagnose", "-c", str(path), "--run", "job")
    assert proc.returncode == 0, proc.stderr
    for command in ("logs", "history"):
        hint = rf"^\s+respawn {command} -c \S+ --run job\s{{2,}}\S"
        assert re.search(hint, proc.stdout, re.M), proc.stdout
    assert re.search(r"^\s+respawn status -c \S+\s{2,}health", proc.stdout, re.M)


def test_resume_of_a_finished_run_stopped_by_hand_says_the_stop_is_lifted(
    tmp_path: Path,
) -> None:
    """`terminate` then `resume` on a finished run answered "not halted", right after the
    person had halted it: the stop order was in fact lifted."""
    from respawn.controller.config import load_config
    from respawn.controller.ledger import write_ledger
    from respawn.controller.model import Ledger
    from respawn.controller.stores import open_run_store
    from respawn.store.schema import utcnow
    from tests.test_reconcile import write_fleet

    path = write_fleet(tmp_path)
    store = open_run_store(load_config(path).store, "job")
    write_ledger(store, Ledger(run="job", generation=1, finished_at=utcnow()), 0)
    assert run_cli("terminate", "-c", str(path), "--run", "job").returncode == 0
    proc = run_cli("resume", "-c", str(path), "--run", "job")
    assert proc.returncode == 0, proc.stderr
    assert "not halted" not in proc.stdout and "no longer halted" in proc.stdout, proc.stdout
    assert "finished" in proc.stdout
    proc = run_cli("resume", "-c", str(path), "--run", "job")  # nothing left to lift
    assert "no longer halted" not in proc.stdout and "finished" in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    "command", [("history", "--run", "job"), ("logs", "--run", "job"), ("diagnose", "--run", "job")]
)
def test_read_only_commands_do_not_create_a_missing_file_store(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """docs/contracts.md: read-only commands create nothing in the store. `status` and `plan`
    kept to it; `history`, `logs` and `diagnose` made the store's directory (a typo in
    store.url left an empty store behind)."""
    from tests.test_reconcile import write_fleet

    path = write_fleet(tmp_path)
    proc = run_cli(command[0], "-c", str(path), *command[1:])
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "store").exists(), f"{command[0]} created the store"


def test_history_says_stopped_when_terminate_and_resume_both_came_before_a_tick(
    tmp_path: Path,
) -> None:
    """protect-your-run.md's "Stop, roll back, continue" (terminate, rollback, resume, by hand
    between two ticks): no tick saw the run stopped, so `history` said the generation a person
    had stopped was "preempted" by the cloud."""
    import json

    from tests.test_reconcile import write_fleet

    path = write_fleet(tmp_path)
    cfg = ("-c", str(path))
    assert run_cli("reconcile", *cfg).returncode == 0  # launches g1
    assert run_cli("terminate", *cfg, "--run", "job").returncode == 0
    assert run_cli("resume", *cfg, "--run", "job").returncode == 0
    assert run_cli("reconcile", *cfg).returncode == 0  # ends g1, launches g2
    try:
        doc = json.loads(run_cli("history", *cfg, "--run", "job", "--json").stdout)
        g1 = doc["generations"][0]
        assert g1["end_reason"] == "stopped", g1
    finally:
        assert run_cli("terminate", *cfg, "--run", "job").returncode == 0


def test_a_kept_demo_leaves_a_config_the_other_commands_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`respawn demo --keep` kept the store but no fleet config: a newcomer could not point
    `status`, `history` or `logs` at what they had just watched without writing one."""
    from respawn.examples import demo

    monkeypatch.setattr(demo.Demo, "play", lambda self, reference: 0)  # the loop: slow test's
    base = tmp_path / "d"
    assert demo.run_demo(workdir=base) == 0
    out = capsys.readouterr().out
    config = base / "fleet.yaml"
    assert f"respawn history -c {config} --run toy" in out, out
    proc = run_cli("status", "-c", str(config))
    assert proc.returncode == 0 and "toy" in proc.stdout, proc.stderr
    assert f"file://{base / 'store'}" in config.read_text()


def test_a_missing_cloud_key_is_named_once_with_its_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`status` said "observation failed: vast: vast: environment variable ... is not set"."""
    from tests.test_reconcile import write_fleet

    path = write_fleet(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["providers"]["vast"] = {"api_key_env": "NEWCOMER_VAST_KEY"}
    doc["runs"][0]["providers"] = ["vast"]
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.delenv("NEWCOMER_VAST_KEY", raising=False)
    proc = run_cli("status", "-c", str(path))
    assert proc.returncode == 1
    assert "vast: environment variable NEWCOMER_VAST_KEY is not set" in proc.stdout, proc.stdout
    assert "vast: vast:" not in proc.stdout + proc.stderr


def test_offers_without_any_cloud_key_says_that_is_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`respawn offers --gpu H100` with no key set ended "no offer fits (every provider
    failed)": nothing failed, nothing was asked."""
    for name in ("VAST_API_KEY", "RUNPOD_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    proc = run_cli("offers", "--gpu", "H100")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "every provider failed" not in proc.stdout, proc.stdout
    assert "no cloud key is set" in proc.stdout and "VAST_API_KEY" in proc.stderr


def test_a_remedy_runs_as_copied_with_respawn_config_set(tmp_path: Path) -> None:
    """Reasons name commands without -c (`respawn resume --run X`): with RESPAWN_CONFIG set,
    the command a person copies from a report works; without it, the error names both."""
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(
        (ROOT / "examples" / "local.yaml")
        .read_text()
        .replace("file:///tmp/respawn-local/store", f"file://{tmp_path / 'store'}")
    )
    copied = run_cli("validate", environ={**os.environ, "RESPAWN_CONFIG": str(cfg)})
    assert copied.returncode == 0, copied.stderr
    bare = {k: v for k, v in os.environ.items() if k != "RESPAWN_CONFIG"}
    missing = run_cli("validate", environ=bare)
    assert missing.returncode == 2 and "-c" in missing.stderr and "RESPAWN_CONFIG" in missing.stderr
