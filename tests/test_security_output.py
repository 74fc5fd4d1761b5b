"""What an echoing server or a hostile pod can make the controller print, log or store
(issue 12.5, 12.6, issue 7.5, 7.9). Each attack here worked on the code before the fix."""

from __future__ import annotations

import io
import json
from pathlib import Path

import paramiko
import pytest
import yaml

from respawn.controller.config import load_config
from respawn.controller.reconcile import tick
from respawn.controller.redact import Redactor, code_span, one_line
from respawn.store.keys import Keys
from respawn.store.schema import Heartbeat, utcnow
from tests.conftest import run_cli
from tests.fakes.http import Fault
from tests.test_clouds import write_fleet

PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACBkZXNzZXJ0LXRlc3Qta2V5LW5vdC1hLXJlYWwtb25lLXJlYWxseQAAAJgX\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def _sinks(tmp_path: Path, proc: object) -> str:
    ledger = tmp_path / "store" / Keys("job").ledger
    summary = tmp_path / "summary.md"
    return (
        proc.stdout  # type: ignore[attr-defined]
        + proc.stderr  # type: ignore[attr-defined]
        + (ledger.read_text() if ledger.exists() else "")
        + (summary.read_text() if summary.exists() else "")
    )


def test_provider_key_echoed_by_a_listing_error_never_reaches_a_sink(
    tmp_path: Path, clouds: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    echo = json.dumps({"error": "bad request", "echo": {"api_key": vast.api_key}}).encode()
    vast.fail("list", *[Fault(status=400, body=echo)] * 20)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    for args in (["--json"], []):
        proc = run_cli("reconcile", "-c", str(path), *args)
        everything = _sinks(tmp_path, proc)
        assert "bad request" in everything  # the error is reported...
        assert vast.api_key not in everything  # ...without the key


def test_secret_cut_by_truncation_leaves_no_prefix(
    tmp_path: Path, clouds: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The error body used to be cut at 300 characters before redaction: a secret straddling
    # the cut was no longer recognised and its first half was printed and stored.
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["H100_SXM"])
    doc = yaml.safe_load(path.read_text())
    doc["runs"][0]["pod"]["secret_env"] = ["HF_TOKEN", "PAD"]
    path.write_text(yaml.safe_dump(doc))
    secret = "hf_" + "Q7x9Zk2LmN4pR8sT" * 12
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("PAD", "p" * 8)
    vast.offers.clear()
    runpod.echo_invalid_input = True
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    proc = run_cli("reconcile", "-c", str(path), "--json")
    everything = _sinks(tmp_path, proc)
    assert "got invalid value" in everything
    assert "Q7x9Zk2LmN4p" not in everything


def test_multiline_secret_json_escaped_is_redacted(
    tmp_path: Path, clouds: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["H100_SXM"])
    doc = yaml.safe_load(path.read_text())
    doc["runs"][0]["pod"]["secret_env"] = ["GIT_SSH_KEY"]  # the trainer's own, for git
    path.write_text(yaml.safe_dump(doc))
    buf = io.StringIO()
    paramiko.RSAKey.generate(1024).write_private_key(buf)
    pem = buf.getvalue()
    monkeypatch.setenv("GIT_SSH_KEY", pem)
    vast.offers.clear()
    runpod.echo_invalid_input = True  # the echo is json.dumps: newlines become \\n
    proc = run_cli("reconcile", "-c", str(path), "--json")
    everything = _sinks(tmp_path, proc)
    assert "got invalid value" in everything
    for line in pem.splitlines()[1:-1]:
        assert line not in everything


def test_redactor_variants() -> None:
    r = Redactor(["s3cr3t-value", PEM, "x"])
    assert r("a s3cr3t-value b") == "a *** b"
    assert "b3BlbnNzaC1r" not in r(json.dumps({"k": PEM}))
    assert "b3BlbnNzaC1r" not in r(PEM.splitlines()[1])
    assert r("x marks") == "x marks"  # too short to be a secret worth masking text for


HOSTILE = (
    "ok\n# Pwned\n[click here](https://evil.example/login) ![x](https://evil.example/p.png)"
    " | cell \x1b[2J\x1b]0;title\x07\x1b[31mred\r\u202eevil"
)


def test_hostile_heartbeat_message_is_inert_in_summary_and_terminal(
    tmp_path: Path, clouds: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    fleet = load_config(path)
    tick(fleet)  # g1 launched
    hb = Heartbeat(
        run="job", generation=1, writer="x", at=utcnow(), phase="failed", message=HOSTILE
    )
    (tmp_path / "store/job/heartbeat.json").write_text(hb.model_dump_json(by_alias=True))
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    proc = run_cli("reconcile", "-c", str(path))
    assert "Pwned" in proc.stdout
    assert not any(c in proc.stdout for c in "\x1b\x07\r\u202e")
    md = summary.read_text()
    lines = md.splitlines()
    assert lines[0] == "## respawn" and not any(ln.startswith("#") for ln in lines[1:])
    assert len([ln for ln in lines if ln.startswith("|")]) == 3  # header, rule, one run
    assert "\x1b" not in md
    # The link and the image are inside a code span: shown, never rendered.
    row = lines[-1]
    assert "`" in row and row.index("`") < row.index("[click here]")


def test_code_span_and_one_line() -> None:
    assert one_line("a\nb\x1b[31mc\x00") == "a bc"
    assert code_span("x`y|z") == "``x`y\\|z``"
    assert code_span("a" * 600).endswith("…`")


def test_other_fleets_instance_named_like_ours_is_left_alone(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["RTX_4090"]))
    theirs = [vast.add_instance("respawn-job-g7"), vast.add_instance("respawn-zz-job-g7")]
    report = tick(fleet)[0]
    assert all(r.ok for r in report.results)
    assert all(i in vast.instances for i in theirs)
    assert sorted(vast.labels()) == ["respawn-job-g7", "respawn-t-job-g1", "respawn-zz-job-g7"]
    assert tick(fleet)[0].plan.actions == ()


def test_log_records_are_redacted_and_printable() -> None:
    import logging

    from respawn.controller.redact import RedactingFilter

    record = logging.LogRecord(
        "x", logging.WARNING, "f", 1, "ALERT %s", ("k3y-s3cret \x1b[2Jx",), None
    )
    RedactingFilter(Redactor(["k3y-s3cret"])).filter(record)
    assert record.getMessage() == "ALERT *** x"


#: A pod's failure message that, printed as it is, would be GitHub workflow commands: the
#: first one silences every later command (respawn's own annotations), the others forge one.
INJECTED = (
    "disk full\n::stop-commands::pwned\n  ::error title=respawn::all runs healthy\r"
    "::add-mask::x\n##[warning]forged old-form"
)


def _command_lines(text: str) -> list[str]:
    """The lines of `text` that the GitHub runner would read as workflow commands (it trims
    leading whitespace; the old `##[` form counts anywhere in a line)."""
    import re

    lines = re.split(r"\r\n|\r|\n", text)
    return [ln for ln in lines if ln.lstrip().startswith("::") or "##[" in ln]


def test_a_pods_message_cannot_emit_workflow_commands(
    tmp_path: Path, clouds: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    fleet = load_config(path)
    tick(fleet)  # g1 launched
    hb = Heartbeat(
        run="job", generation=1, writer="x", at=utcnow(), phase="failed", message=INJECTED
    )
    (tmp_path / "store/job/heartbeat.json").write_text(hb.model_dump_json(by_alias=True))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    proc = run_cli("reconcile", "-c", str(path))
    out = proc.stdout + proc.stderr
    assert "stop-commands" in out and "forged old-form" in out  # shown, as text
    commands = _command_lines(out)
    # respawn's own annotation is the only command, one line, the pod's text escaped in it
    assert len(commands) == 1, commands
    assert commands[0].startswith("::warning title=respawn::job is dead: "), commands
    assert "\n" not in commands[0] and "##[" not in commands[0]
    assert not _command_lines((tmp_path / "summary.md").read_text())


def test_pod_written_store_records_cannot_emit_workflow_commands(tmp_path: Path) -> None:
    from respawn.store.schema import Quarantine, RepairEvent
    from respawn.store.store import CheckpointStore

    store_url = f"file://{tmp_path / 'store'}"
    store = CheckpointStore.open(store_url, "job")  # what a pod's key can write
    q = Quarantine(step=10, manifest="m", reason=INJECTED, generation=1, writer="x", at=utcnow())
    store.write_json(
        store.keys.quarantine_for("job/10/manifest.json"), q.model_dump(mode="json", by_alias=True)
    )
    event = RepairEvent(
        kind="quarantined", step=10, detail=INJECTED, at=utcnow(), generation=1, writer="x"
    )
    store.write_json(
        f"{store.keys.repairs}20260101T000000000000-a.json",
        event.model_dump(mode="json", by_alias=True),
    )
    proc = run_cli("ckpt", "ls", "--store", store_url, "--run", "job")
    out = proc.stdout + proc.stderr
    assert "stop-commands" in out, out
    assert not _command_lines(out), out


def test_command_guard_catches_commands_split_across_writes() -> None:
    from respawn.controller.workflow_output import CommandGuard

    inner = io.StringIO()
    guard = CommandGuard(inner)
    for piece in ["ok\n  :", ":stop-commands::t\n", "x ##", "[error]y\r", "::", "warning::z"]:
        guard.write(piece)
    guard.command("::notice title=respawn::mine")
    guard.write("\t")
    guard.flush()  # a flush between a line's whitespace and its `::` must not help
    guard.write("::error::late\n")
    text = inner.getvalue()
    assert _command_lines(text) == ["::notice title=respawn::mine"], text
    assert "stop-commands::t" in text and "warning::z" in text and "late" in text
