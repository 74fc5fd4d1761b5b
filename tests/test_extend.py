"""Extending a finished run: raising target_step un-finishes it (issue 10, item 6)."""

from __future__ import annotations

from pathlib import Path

from respawn.controller.config import load_config
from respawn.controller.decide import decide
from respawn.controller.ledger import read_ledger, write_ledger
from respawn.controller.model import Health, Ledger, Provision
from respawn.controller.stores import open_run_store
from tests.conftest import ROOT, run_cli
from tests.test_decide import NOW, RUN, M, hb, inst, ledger, obs, pointer


def test_raising_target_step_extends_a_finished_run() -> None:
    finishing = obs(pointer=pointer(1000), heartbeat=hb(1, step=1000, phase="finished"))
    done = decide(RUN, finishing, NOW)
    assert done.verdict.health == Health.FINISHED
    finished = done.ledger
    assert finished.finished_at is not None and finished.finished_target == 1000

    # Same target: still finished on every later tick.
    again = decide(RUN, obs(ledger=finished, pointer=pointer(1000), instances=()), NOW)
    assert again.verdict.health == Health.FINISHED

    longer = RUN.model_copy(update={"target_step": 2000})
    plan = decide(longer, obs(ledger=finished, pointer=pointer(1000), instances=()), NOW)
    assert plan.verdict.health == Health.DEAD
    assert "extending" in plan.verdict.reason
    (launch,) = [a for a in plan.actions if isinstance(a, Provision)]
    assert launch.resume_step == 1000 and launch.generation == 2
    assert plan.ledger.finished_at is None


def test_trainer_that_stops_short_of_target_does_not_loop() -> None:
    """A clean exit below target_step is not finished (issue 18 item 3: finished means the
    pointer reached target_step). It is relaunched once — a trainer stopped by a signal
    goes on from its checkpoint — and a second clean exit at the same step halts the run
    naming the remedy, never a relaunch loop."""
    exited = obs(pointer=pointer(900), heartbeat=hb(1, step=900, phase="finished"))
    first = decide(RUN, exited, NOW)
    assert first.verdict.health == Health.DEAD and not first.verdict.fatal
    assert "relaunching once" in first.verdict.reason
    assert any(isinstance(a, Provision) for a in first.actions)
    gen = first.ledger.generation
    again = obs(
        ledger=first.ledger,
        pointer=pointer(900, gen=gen),
        heartbeat=hb(gen, step=900, phase="finished"),
        instances=(inst(gen),),
    )
    done = decide(RUN, again, NOW + 10 * M)
    assert done.verdict.health == Health.DEAD and done.verdict.fatal
    assert (
        "below target_step 1000" in done.verdict.reason and "respawn resume" in done.verdict.reason
    )
    assert [a.kind for a in done.actions] == ["terminate", "halt", "alert"]
    later = decide(RUN, obs(ledger=done.ledger, pointer=pointer(900, gen=gen), instances=()), NOW)
    assert later.verdict.health == Health.HALTED
    assert not any(isinstance(a, Provision) for a in later.actions)


def test_a_clean_exit_past_the_last_one_is_relaunched_again() -> None:
    """Progress between two clean exits (a trainer signalled twice) is no config mismatch."""
    exited = obs(pointer=pointer(900), heartbeat=hb(1, step=900, phase="finished"))
    first = decide(RUN, exited, NOW)
    gen = first.ledger.generation
    further = obs(
        ledger=first.ledger,
        pointer=pointer(950, gen=gen),
        heartbeat=hb(gen, step=950, phase="finished"),
        instances=(inst(gen),),
    )
    second = decide(RUN, further, NOW + 10 * M)
    assert not second.verdict.fatal and any(isinstance(a, Provision) for a in second.actions)


def test_finished_ledger_without_recorded_target_extends_when_above_checkpoint() -> None:
    old = ledger(finished_at=NOW)  # written before finished_target existed
    plan = decide(RUN, obs(ledger=old, pointer=pointer(500), instances=(inst(1),)), NOW)
    assert plan.verdict.health == Health.DEAD


def _fleet(tmp_path: Path, target: int) -> Path:
    text = (ROOT / "examples" / "local.yaml").read_text()
    text = text.replace("/tmp/respawn-local", str(tmp_path)).replace(
        "target_step: 40", f"target_step: {target}"
    )
    path = tmp_path / f"fleet-{target}.yaml"
    path.write_text(text)
    return path


def test_resume_does_not_claim_a_finished_run_will_continue(tmp_path: Path) -> None:
    fleet_path = _fleet(tmp_path, 40)
    fleet = load_config(fleet_path)
    store = open_run_store(fleet.store, "toy")
    write_ledger(store, Ledger(run="toy", generation=1, finished_at=NOW, finished_target=40), 0)

    proc = run_cli("resume", "-c", str(fleet_path), "--run", "toy")
    assert proc.returncode == 0, proc.stderr
    assert "finished" in proc.stdout and "target_step" in proc.stdout
    assert "the next tick acts on it" not in proc.stdout

    proc = run_cli("resume", "-c", str(_fleet(tmp_path, 80)), "--run", "toy")
    assert "extends it" in proc.stdout, proc.stdout
    assert read_ledger(store).finished_at is not None  # the tick un-finishes it, not resume


def _push(fleet_path: Path, tmp_path: Path, step: int) -> None:
    seed = tmp_path / f"seed{step}"
    d = seed / "outputs" / "checkpoints" / f"step_{step}"
    d.mkdir(parents=True)
    (d / "state.json").write_text("{}")
    w = seed / "outputs" / "weights" / f"step_{step}"
    w.mkdir(parents=True)
    (w / "STABLE").write_text("")
    proc = run_cli(
        "ckpt",
        "push",
        "-c",
        str(fleet_path),
        "--run",
        "toy",
        "--dir",
        str(seed),
        "--step",
        str(step),
    )
    assert proc.returncode == 0, proc.stderr


def test_seeded_run_launches_from_the_seeded_step(tmp_path: Path) -> None:
    """docs/protect-your-run.md, "Seed a run from an existing checkpoint"."""
    fleet_path = _fleet(tmp_path, 40)
    _push(fleet_path, tmp_path, 20)
    proc = run_cli("status", "-c", str(fleet_path))
    assert proc.returncode == 0, proc.stderr
    assert "provision g1 (resume step 20)" in proc.stdout, proc.stdout


def test_rollback_needs_a_halt_then_moves_the_pointer_back(tmp_path: Path) -> None:
    fleet_path = _fleet(tmp_path, 40)
    _push(fleet_path, tmp_path, 10)
    _push(fleet_path, tmp_path, 20)
    args = ("-c", str(fleet_path), "--run", "toy")
    refused = run_cli("rollback", *args, "--step", "10")
    assert refused.returncode == 2 and "terminate" in refused.stderr
    assert run_cli("terminate", *args).returncode == 0
    done = run_cli("rollback", *args, "--step", "10")
    assert done.returncode == 0, done.stderr
    store = open_run_store(load_config(fleet_path).store, "toy")
    pointer = store.read_pointer()
    assert pointer is not None and pointer.step == 10
    missing = run_cli("rollback", *args, "--step", "15")
    assert missing.returncode == 1 and "no manifest" in missing.stderr
