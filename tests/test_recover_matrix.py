"""Issue 18.2: every `unknown` names the command that ends it, and that command works,
whatever mix of the run's documents (ledger, pointer, heartbeat, halt order) is missing or
garbage. Whole ticks against the fake Vast API on 127.0.0.1 and a file:// store; each named
command runs through the CLI, as a person would type it."""

from __future__ import annotations

import itertools
import re
import shlex
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from respawn.controller.config import load_config
from respawn.controller.ledger import write_halt
from respawn.controller.model import HaltOrder, Health
from respawn.controller.reconcile import tick
from respawn.store.keys import Keys
from respawn.store.schema import Heartbeat, utcnow
from respawn.store.store import CheckpointStore
from tests.conftest import make_step, run_cli
from tests.test_control_safety import cli, cloud_fleet, clouds, store_of, vast_live  # noqa: F401
from tests.test_security_controller import SECRET

# Each document by its `Keys` name.
DOCS = {"ledger": "ledger", "pointer": "latest", "heartbeat": "heartbeat", "halt": "halt"}
DAMAGES = ("missing", "garbage")
# Every single damage and every pair of them (of different documents).
SINGLES = [((doc, dmg),) for doc in DOCS for dmg in DAMAGES]
PAIRS = [
    ((a, da), (b, db))
    for a, b in itertools.combinations(DOCS, 2)
    for da in DAMAGES
    for db in DAMAGES
]
ALL_GARBAGE = [tuple((doc, "garbage") for doc in DOCS), tuple((doc, "missing") for doc in DOCS)]
COMMAND = re.compile(r"`(respawn [^`]*--run job[^`]*)`")


def _ids(combo: tuple[tuple[str, str], ...]) -> str:
    return "+".join(f"{dmg}-{doc}" for doc, dmg in combo)


CASES = [(c, pod, False) for c in SINGLES + PAIRS + ALL_GARBAGE for pod in ("live", "gone")]
# With a ledger secret: the signed ledger and halt order are checked for replays and hiding.
CASES += [(c, "gone", True) for c in SINGLES + ALL_GARBAGE]


@pytest.mark.parametrize(
    ("combo", "pod", "sealed"),
    CASES,
    ids=[f"{_ids(c)}-{pod}" + ("-signed" if sealed else "") for c, pod, sealed in CASES],
)
def test_every_unknown_names_a_command_that_ends_it(
    tmp_path: Path,
    clouds: tuple,  # noqa: F811 (the fixture)
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    combo: tuple[tuple[str, str], ...],
    pod: str,
    sealed: bool,
) -> None:
    vast, _ = clouds
    path = cloud_fleet(tmp_path, clouds, ["vast"])
    if sealed:
        doc = yaml.safe_load(path.read_text())
        doc["store"]["ledger_secret_env"] = "RESPAWN_LEDGER_SECRET"
        path.write_text(yaml.safe_dump(doc))
        monkeypatch.setenv("RESPAWN_LEDGER_SECRET", SECRET)
    fleet = load_config(path)
    store = store_of(fleet)
    assert tick(fleet)[0].results[-1].ok  # g1 launched
    store.publish(5, make_step(tmp_path, 5, {"ck/step_5/w.bin": b"w" * 5}), 1, "pod g1")
    store.write_heartbeat(
        Heartbeat(run="job", generation=1, writer="pod g1", at=utcnow(), phase="training", step=6)
    )
    write_halt(store, HaltOrder(halted=False, reason="resume", at=utcnow() - timedelta(hours=1)))
    if pod == "gone":
        with vast.lock:
            vast.instances.clear()
    for doc, damage in combo:
        file = tmp_path / "store" / getattr(Keys("job"), DOCS[doc])
        if damage == "missing":
            file.unlink()
        else:
            file.write_bytes(b'{"generation": 1, garbage')

    ran: list[str] = []
    report = tick(fleet)[0]
    waited = 0
    while report.plan.verdict.health == Health.UNKNOWN:
        reason = report.plan.verdict.reason
        if "ends by itself" in reason and waited < 3:
            waited += 1
            report = tick(fleet)[0]
            continue
        found = COMMAND.search(reason)
        assert found, f"an unknown that names no command: {reason}"
        command = found.group(1)
        assert command not in ran, f"{command} did not end it: {reason}"
        assert len(ran) < 4, ran
        ran.append(command)
        argv = [*shlex.split(command)[1:], "-c", str(path)]
        rc, out, err = cli(capsys, *argv)
        assert rc == 0, f"{command}: {out}{err}"
        assert "Traceback" not in out + err
        report = tick(fleet)[0]
        assert command not in report.plan.verdict.reason, report.plan.verdict.reason
    assert report.plan.verdict.health != Health.UNKNOWN
    # Nothing of the run was lost on the way: the published step is still the pointer's.
    pointer = store.read_pointer()
    if ("pointer", "missing") not in combo:  # rebuilt by a tick once the store can (18.1)
        assert pointer is not None and pointer.step == 5, (ran, pointer)
    # And never two instances at once.
    assert len(vast_live(vast)) <= 1


def test_resume_and_rollback_with_an_unreadable_ledger_say_what_to_do(
    tmp_path: Path,
    clouds: tuple,  # noqa: F811 (the fixture)
) -> None:
    path = cloud_fleet(tmp_path, clouds, ["vast"])
    fleet = load_config(path)
    store = store_of(fleet)
    tick(fleet)
    store.publish(5, make_step(tmp_path, 5, {"ck/step_5/w.bin": b"w" * 5}), 1, "pod g1")
    assert run_cli("terminate", "-c", str(path), "--run", "job").returncode == 0
    (tmp_path / "store" / Keys("job").ledger).write_bytes(b"{garbage")
    rollback = run_cli("rollback", "-c", str(path), "--run", "job", "--step", "5")
    assert rollback.returncode == 1 and "Traceback" not in rollback.stderr, rollback.stderr
    assert "respawn ledger repair" in rollback.stderr
    resume = run_cli("resume", "-c", str(path), "--run", "job")
    assert resume.returncode == 0 and "Traceback" not in resume.stderr, resume.stderr
    assert "no longer halted" in resume.stdout and "respawn ledger repair" in resume.stderr
    (tmp_path / "store" / Keys("job").halt).write_bytes(b"{garbage")
    resume = run_cli("resume", "-c", str(path), "--run", "job")
    assert resume.returncode == 0 and "Traceback" not in resume.stderr, resume.stderr


def test_ledger_repair_with_an_unreadable_pointer_and_heartbeat_rebuilds_the_pointer(
    tmp_path: Path,
    clouds: tuple,  # noqa: F811 (the fixture)
) -> None:
    path = cloud_fleet(tmp_path, clouds, ["vast"])
    fleet = load_config(path)
    store = store_of(fleet)
    tick(fleet)
    for step in (5, 10):
        store.publish(step, make_step(tmp_path, step, {f"ck/step_{step}/w": b"w"}), 1, "pod")
    keys = [Keys("job").ledger, Keys("job").latest, Keys("job").heartbeat]
    for key in keys:
        (tmp_path / "store" / key).write_bytes(b'{"generation": 1, garbage')
    repair = run_cli("ledger", "repair", "-c", str(path), "--run", "job")
    assert repair.returncode == 0, repair.stderr
    assert "generation 1" in repair.stdout
    pointer = store.read_pointer()
    assert pointer is not None and pointer.step == 10
    assert store.read_heartbeat() is None
    kept = {
        str(p.relative_to(tmp_path / "store")).split(".corrupt-")[0]
        for p in (tmp_path / "store").rglob("*.corrupt-*")
    }
    assert kept == set(keys)


@pytest.mark.parametrize("pod", ["none-yet", "live"])
@pytest.mark.parametrize(
    "junk",
    [b'{"generation": 1, garbage', b'{"schema": 1, "run": "\\ud800", "holder": "\\ud800"}'],
    ids=["torn", "lone-surrogate"],
)
def test_a_garbage_pointer_before_the_first_publish_is_set_aside_by_the_tick(
    tmp_path: Path,
    clouds: tuple,  # noqa: F811 (the fixture)
    pod: str,
    junk: bytes,
) -> None:
    """The soak (seed 5) garbled latest.json of a run with no step published yet: with no
    manifest to rebuild it from, the run stayed `unknown` forever. A pointer only ever names
    a manifest, so with none there is nothing it could have named: the tick keeps the bytes
    aside, records the repair, and the run starts (or goes on) with one instance, nobody
    needed."""
    vast, _ = clouds
    fleet = load_config(cloud_fleet(tmp_path, clouds, ["vast"]))
    if pod == "live":
        assert tick(fleet)[0].results[-1].ok  # g1 launched, nothing published yet
    file = tmp_path / "store" / Keys("job").latest
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(junk)

    report = tick(fleet)[0]
    assert report.plan.verdict.health != Health.UNKNOWN, report.plan.verdict.reason
    assert any("set aside" in r.detail for r in report.results if r.ok), report.results
    assert not file.exists()
    kept = list(file.parent.glob("latest.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == junk
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "job")
    assert [r.kind for r in store.repairs()] == ["pointer-set-aside"]
    assert tick(fleet)[0].plan.verdict.health != Health.UNKNOWN
    assert len(vast_live(vast)) == 1  # the run goes on (or starts): one instance
