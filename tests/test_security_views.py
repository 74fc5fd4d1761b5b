"""Adversarial review of the views added for issue 21 (offers, plan, history, logs): text a
provider or a pod controls reaches them, so each is redacted before it is cut and shown inert.
Driven through the CLI against the loopback fakes and a file store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from respawn.controller.config import load_config
from respawn.controller.ledger import write_halt
from respawn.controller.model import HaltOrder
from respawn.controller.reconcile import tick
from respawn.controller.stores import open_run_store
from respawn.store.schema import Heartbeat, utcnow
from tests.conftest import run_cli
from tests.fakes.runpod import FakeRunPod
from tests.fakes.vast import FakeVast
from tests.test_clouds import write_fleet
from tests.test_preview import _env, cli
from tests.test_security_contain import _to_legacy
from tests.test_security_controller import SECRET, _fleet


def test_a_provider_echoing_its_key_in_an_offer_never_prints_it(clouds: tuple) -> None:
    """Attack: a search answer quotes the caller's API key in a field (`geolocation`), placed
    so the table's 40-character column cuts it. `--json` printed the key whole (no redaction
    at all), the table printed its first characters (cut first, redacted after)."""
    vast, _ = clouds
    key = vast.api_key
    for row in vast.offers.values():
        row["geolocation"] = "x" * 30 + key
    env = _env(VAST_API_KEY=key)
    args = ["offers", "--gpu", "RTX_4090", "--provider", "vast", "--api-url", f"vast={vast.url}"]
    as_json = cli(*args, "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout), "the fake answered no offer"
    table = cli(*args, env=env)
    assert table.returncode == 0, table.stderr
    for out in (as_json.stdout + as_json.stderr, table.stdout + table.stderr):
        assert key[:8] not in out, out


@pytest.fixture
def signed(
    clouds: tuple[FakeVast, FakeRunPod], monkeypatch: pytest.MonkeyPatch
) -> tuple[FakeVast, FakeRunPod]:
    monkeypatch.setenv("RESPAWN_LEDGER_SECRET", SECRET)
    return clouds


@pytest.mark.parametrize("command", ["history", "diagnose"])
def test_a_read_only_command_moves_no_old_location_document(
    tmp_path: Path, signed: tuple, command: str
) -> None:
    """docs/contracts.md: a read-only command reads an old-location controller document
    where it is and moves nothing. `respawn history` and `diagnose` (no instance) moved the
    ledger and the halt order: a write and a delete from a command that only looks, failing
    outright with a read-only key."""
    vast, runpod = signed
    path = _fleet(tmp_path, vast, runpod)
    fleet = load_config(path)
    tick(fleet)  # g1
    for iid in list(vast.instances):
        vast.outbid(iid)
    store = open_run_store(fleet.store, "job")
    write_halt(store, HaltOrder(halted=True, reason="by hand", at=utcnow()))
    _to_legacy(store, ("ledger", "halt"))
    for iid in list(vast.instances):
        vast.instances.pop(iid)  # nothing left to diagnose: it reads the ledger instead
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "store").rglob("*"))
    out = run_cli(command, "-c", str(path), "--run", "job")
    assert out.returncode in (0, 1), out.stderr
    assert "Traceback" not in out.stderr
    after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "store").rglob("*"))
    assert after == before


def test_a_pod_failure_quoting_a_secret_leaves_no_prefix_in_the_ledger_or_history(
    tmp_path: Path, clouds: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: a trainer's failure message quotes a pod secret (a crash that printed its
    environment), placed across the 300th character of the verdict. decide cut the reason to
    300 characters for `end_detail` before the ledger was redacted, so the secret's first
    half was stored in the ledger and printed by `respawn history --json`."""
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    doc = yaml.safe_load(path.read_text())
    doc["runs"][0]["pod"]["secret_env"] = ["HF_TOKEN"]
    path.write_text(yaml.safe_dump(doc))
    secret = "hf_" + "Q7x9Zk2LmN4pR8sT" * 4
    monkeypatch.setenv("HF_TOKEN", secret)
    fleet = load_config(path)
    tick(fleet)  # g1
    store = open_run_store(fleet.store, "job")
    head = "g1 pod reported failure: "
    failed = Heartbeat(
        run="job",
        generation=1,
        writer="pod g1",
        at=utcnow(),
        phase="failed",
        message="x" * (290 - len(head)) + secret,
        will_repeat=True,
    )
    store.write_heartbeat(failed)
    tick(fleet)
    ledger = (tmp_path / "store" / store.keys.ledger).read_text()
    history = run_cli("history", "-c", str(path), "--run", "job", "--json")
    assert history.returncode == 0, history.stderr
    assert "reported failure" in history.stdout
    for out in (ledger, history.stdout):
        assert secret[:10] not in out


def test_a_broken_runs_error_quoting_a_secret_leaves_no_prefix_in_any_report(
    tmp_path: Path, clouds: tuple
) -> None:
    """Attack: an error escaping one run's tick (a provider's answer quoted in it) carries a
    secret across its 500th character. broken_report cut the text to 500 before any sink
    redacted it, so the table, the step summary and --json showed the secret's first half."""
    from respawn.controller.reconcile import Broken, Mode, broken_report
    from respawn.controller.redact import Redactor
    from respawn.controller.report import dumps, to_markdown, to_text

    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["RTX_4090"]))
    secret = "sk_" + "Q7x9Zk2LmN4pR8sT" * 4
    error = RuntimeError("the cloud answered: " + "x" * 460 + secret)
    report = broken_report(fleet.runs[0], Broken("observing", error), utcnow(), Mode.ACT)
    redact = Redactor([secret])
    shown = to_text([report], redact) + to_markdown([report], redact) + dumps([report], redact)
    assert "the cloud answered" in shown
    assert secret[:8] not in shown
