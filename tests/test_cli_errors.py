"""Every command ends with a report, never a traceback (issue 18.10): each subcommand's error
path, through the real entry point (`python -m respawn`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_cli

UNSET = "RESPAWN_TEST_LEDGER_SECRET_NOT_SET"


def _fleet(tmp: Path, name: str, store: Path, secret: bool = False) -> Path:
    doc = yaml.safe_load((ROOT / "examples/local.yaml").read_text())
    doc["store"] = {"url": f"file://{store}"}
    if secret:
        doc["store"]["ledger_secret_env"] = UNSET
    doc["providers"]["local"]["state_dir"] = str(tmp / "instances")
    path = tmp / name
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """`secret`: a fresh file store whose ledger secret variable is not set; `blocked`: a
    store under a regular file (it can be neither made nor read); `plain`: one that works."""
    monkeypatch.delenv(UNSET, raising=False)
    (tmp_path / "a-file").write_text("")
    return {
        "secret": str(_fleet(tmp_path, "secret.yaml", tmp_path / "store", secret=True)),
        "blocked": str(_fleet(tmp_path, "blocked.yaml", tmp_path / "a-file/store")),
        "plain": str(_fleet(tmp_path, "plain.yaml", tmp_path / "plain-store")),
        "tmp": str(tmp_path),
    }


#: (command line with {secret}/{blocked}/{plain}/{tmp}, exit code, text the output must hold)
CASES = [
    ("reconcile -c {secret}", 1, UNSET),
    ("reconcile -c {secret} --dry-run", 1, UNSET),
    ("reconcile -c {blocked} --json", 1, "cannot create store directory"),
    ("status -c {secret}", 1, UNSET),
    ("status -c {blocked} --json", 1, "Not a directory"),
    ("offers -c {plain} --run toy", 0, "localhost"),
    ("offers -c {plain} --run nope", 2, "no run named 'nope'"),
    ("terminate -c {secret} --run toy", 1, "respawn terminate: FAILED"),
    ("diagnose -c {blocked} --run toy", 0, "no SSH host key to trust"),
    ("resume -c {secret} --run toy", 1, "respawn resume: FAILED"),
    ("ledger repair -c {secret} --run toy", 1, "respawn ledger repair: FAILED"),
    ("rollback -c {secret} --run toy --step 5", 1, "respawn rollback: FAILED: StoreConfigError"),
    ("rollback -c {blocked} --run toy --step 5", 1, "respawn rollback: FAILED"),
    ("validate -c {tmp}/missing.yaml", 2, "no such file"),
    ("validate -c {secret} --env", 1, UNSET),
    ("doctor -c {secret}", 1, UNSET),
    ("doctor -c {blocked} --live", 1, "Not a directory"),
    ("demo --workdir {tmp}/a-file/demo", 1, "respawn demo: FAILED: NotADirectoryError"),
    ("ckpt ls -c {blocked} --run toy", 2, "no store at"),
    ("ckpt gc -c {blocked} --run toy", 2, "no store at"),
    ("ckpt pull -c {blocked} --run toy --dest {tmp}/out", 2, "no store at"),
    ("ckpt push -c {blocked} --run toy --step 3", 2, "cannot create store directory"),
]


@pytest.mark.parametrize(("line", "code", "said"), CASES, ids=[c[0] for c in CASES])
def test_every_command_fails_with_a_report_not_a_traceback(
    configs: dict[str, str], line: str, code: int, said: str
) -> None:
    proc = run_cli(*line.format(**configs).split())
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert proc.returncode == code, out
    assert said in out, out


def test_the_last_resort_names_the_command_in_one_line(configs: dict[str, str]) -> None:
    proc = run_cli("demo", "--workdir", f"{configs['tmp']}/a-file/demo")
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("respawn demo: FAILED: NotADirectoryError: ")
    assert line.endswith("(--debug or RESPAWN_DEBUG=1 shows the traceback)")


@pytest.mark.parametrize("how", ["--debug", "RESPAWN_DEBUG=1"])
def test_the_traceback_is_shown_when_asked_for(
    configs: dict[str, str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    args = ["rollback", "-c", configs["secret"], "--run", "toy", "--step", "5"]
    if how == "--debug":
        args.insert(1, "--debug")  # after the command, as -v is
    else:
        monkeypatch.setenv("RESPAWN_DEBUG", "1")
    proc = run_cli(*args)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("respawn rollback: FAILED: ")
