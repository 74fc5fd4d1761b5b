"""See the run (issue 21): what each generation cost, why it ended, steps lost and downtime,
from the ledger the ticks wrote; `respawn history` (text, --json, --plot) on a file store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from respawn.controller.decide import budget_trip, decide
from respawn.controller.history import history
from respawn.controller.ledger import write_ledger
from respawn.controller.model import Health, LaunchRecord, Ledger, Provision
from respawn.provisioning.base import InstanceState
from respawn.store.store import CheckpointStore
from tests.conftest import run_cli
from tests.test_decide import NOW, RUN, M, hb, inst, obs, pointer

H = timedelta(hours=1)


def _launched(ledger: Ledger, gen: int, price: float) -> Ledger:
    """What act records once the provider confirmed the launch."""
    launches = tuple(
        lr.model_copy(
            update={"provider": "local", "instance_id": f"i{gen}", "price_per_hour": price}
        )
        if lr.generation == gen
        else lr
        for lr in ledger.launches
    )
    return ledger.model_copy(update={"launches": launches})


def _tick(ledger: Ledger, now: datetime, **seen: object) -> tuple[Ledger, Health, list[str]]:
    plan = decide(RUN, obs(ledger=ledger, **seen), now)
    return plan.ledger, plan.verdict.health, [a.kind for a in plan.actions]


def preempted_then_resumed() -> tuple[Ledger, datetime]:
    """g1 from step 0 to 300 at $2/h, reclaimed; g2 resumes from the published step 250."""
    t0 = NOW - 10 * H
    ledger, health, kinds = _tick(Ledger(run="r"), t0, heartbeat=None, pointer=None, instances=())
    assert health is Health.NEW and kinds == ["provision"]
    ledger = _launched(ledger, 1, 2.0)
    for i, step in enumerate((100, 200, 300), start=1):
        at = t0 + i * H
        beat = hb(1, step=step).model_copy(update={"at": at})
        alive = inst(1).model_copy(update={"created_at": t0})
        ledger, health, _ = _tick(
            ledger, at, heartbeat=beat, instances=(alive,), pointer=pointer(step - 50)
        )
        assert health is Health.HEALTHY
    # Reclaimed: gone from the listing, silent. The next tick replaces it.
    gone_at = t0 + 4 * H
    ledger, health, kinds = _tick(
        ledger, gone_at, heartbeat=None, instances=(), pointer=pointer(250)
    )
    assert health is Health.DEAD and "provision" in kinds
    ledger = _launched(ledger, 2, 3.0)
    back_at = t0 + 5 * H
    beat = hb(2, step=260).model_copy(update={"at": back_at})
    ledger, health, _ = _tick(
        ledger,
        back_at,
        heartbeat=beat,
        instances=(inst(2).model_copy(update={"created_at": gone_at}),),
        pointer=pointer(250, gen=2),
    )
    return ledger, back_at


def test_each_generation_says_what_it_ran_on_why_it_ended_and_what_it_cost() -> None:
    ledger, now = preempted_then_resumed()
    hist = history(ledger, now)
    g1, g2 = hist.generations
    assert (g1.provider, g1.instance_id, g1.price_per_hour) == ("local", "i1", 2.0)
    assert g1.end_reason == "preempted" and "no live instance" in (g1.end_detail or "")
    assert g1.last_step == 300 and g2.resume_step == 250
    assert g1.steps_lost == 50  # reached 300, the successor resumed from 250
    # Down from g1's last progress (t0+3h) to g2's first step past 250 (t0+5h).
    assert g1.downtime_s == pytest.approx(2 * 3600)
    assert g1.cost == pytest.approx(2.0 * 4)  # launched t0, ended t0+4h
    assert g2.end_reason is None and g2.cost == pytest.approx(3.0 * 1)
    assert hist.total_cost == pytest.approx(11.0)
    assert hist.total_steps_lost == 50


def test_the_budget_breaker_counts_the_spend_history_shows() -> None:
    ledger, now = preempted_then_resumed()
    spent = history(ledger, now).total_cost  # all of it inside the last 24 h
    capped = RUN.budget.model_copy(update={"max_spend_per_day": spent - 0.01})
    assert budget_trip(capped, ledger, now) is not None
    roomy = RUN.budget.model_copy(update={"max_spend_per_day": spent + 0.5})
    assert budget_trip(roomy, ledger, now) is None


def test_a_generation_ends_when_the_run_finishes_or_is_stopped() -> None:
    ledger, now = preempted_then_resumed()
    later = now + H
    done = hb(2, step=1000, phase="finished").model_copy(update={"at": later})
    ledger, health, kinds = _tick(
        ledger, later, heartbeat=done, instances=(inst(2),), pointer=pointer(1000, gen=2)
    )
    assert health is Health.FINISHED and kinds == ["terminate"]
    g2 = history(ledger, later + 5 * H).generations[-1]
    assert g2.end_reason == "finished" and g2.ended_at == later
    assert g2.cost == pytest.approx(3.0 * 2)  # billing stops when it ended, not at "now"


def test_a_stopped_listing_row_is_preempted_a_silent_running_one_is_dead() -> None:
    ledger, now = preempted_then_resumed()
    later = now + H
    stopped = inst(2, state=InstanceState.STOPPED)
    after, _, kinds = _tick(ledger, later, heartbeat=None, instances=(stopped,))
    assert "provision" in kinds and after.launch_of(2).end_reason == "preempted"  # type: ignore[union-attr]
    silent = hb(2, step=260).model_copy(update={"at": now})
    much_later = now + 2 * H
    after, health, kinds = _tick(ledger, much_later, heartbeat=silent, instances=(inst(2),))
    assert health is Health.DEAD and "provision" in kinds
    assert after.launch_of(2).end_reason == "dead"  # type: ignore[union-attr]


def _fleet(tmp_path: Path) -> tuple[Path, CheckpointStore]:
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text(
        f"""
store: {{url: "file://{tmp_path / "store"}"}}
providers: {{local: {{state_dir: {tmp_path / "local"}}}}}
runs:
  - name: r
    target_step: 1000
    pod:
      command: "train --resume {{resume_step}}"
      checkpoints: {{sources: [{{path: "s_{{step}}", marker: OK}}]}}
    resources: {{max_price_per_hour: 5}}
    providers: [local]
    budget: {{max_launches_per_day: 3, max_spend_per_day: 100}}
"""
    )
    return cfg, CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")


def test_history_command_text_json_and_a_picture_that_follows_the_history(
    tmp_path: Path,
) -> None:
    cfg, store = _fleet(tmp_path)
    ledger, _ = preempted_then_resumed()
    write_ledger(store, ledger, 0)
    text = run_cli("history", "-c", str(cfg), "--run", "r")
    assert text.returncode == 0, text.stderr
    assert "GEN" in text.stdout and "COST" in text.stdout  # a table with headers
    g1 = next(line for line in text.stdout.splitlines() if line.startswith("g1"))
    assert "preempted" in g1 and "local:i1" in g1 and "start→300" in g1 and "$8.00" in g1

    doc = run_cli("history", "-c", str(cfg), "--run", "r", "--json")
    assert doc.returncode == 0, doc.stderr
    data = json.loads(doc.stdout)
    assert [g["generation"] for g in data["generations"]] == [1, 2]
    assert data["generations"][0]["steps_lost"] == 50

    first = tmp_path / "first.svg"
    assert run_cli("history", "-c", str(cfg), "--run", "r", "--plot", str(first)).returncode == 0
    root = ET.fromstring(first.read_bytes())  # a well-formed SVG document
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert b"<script" not in first.read_bytes() or b"kozea" not in first.read_bytes()

    # One more generation: the picture changes with the history.
    g3 = LaunchRecord(
        generation=3, at=NOW + H, provider="local", instance_id="i3", price_per_hour=1.0
    )
    longer = ledger.model_copy(update={"generation": 3, "launches": (*ledger.launches, g3)})
    write_ledger(store, longer, 1)
    second = tmp_path / "second.svg"
    assert run_cli("history", "-c", str(cfg), "--run", "r", "--plot", str(second)).returncode == 0
    ET.fromstring(second.read_bytes())
    assert b"g3 local" in second.read_bytes() and b"g3 local" not in first.read_bytes()


def test_history_of_a_run_never_launched_says_so(tmp_path: Path) -> None:
    cfg, _ = _fleet(tmp_path)
    out = run_cli("history", "-c", str(cfg), "--run", "r")
    assert out.returncode == 0 and "never launched" in out.stdout


def test_provision_records_open_a_generation_the_history_shows_as_running() -> None:
    plan = decide(RUN, obs(ledger=Ledger(run="r"), heartbeat=None, pointer=None, instances=()), NOW)
    assert isinstance(plan.actions[0], Provision)
    (row,) = history(plan.ledger, NOW).generations
    assert row.end_reason is None and row.cost == 0.0  # nothing rented yet


def test_a_resumed_generation_recomputing_lost_steps_is_progressing_not_stalled() -> None:
    """g1 reached step 300 but published only 250: g2 recomputes 250→300. Each of those steps
    is progress; judged against g1's high-water mark they were not, and a loss longer than
    the startup grace got the healthy g2 restarted as stalled."""
    ledger, now = preempted_then_resumed()  # g2 launched at now - 1h, resumed from 250
    later = now + 25 * M  # past startup_grace (20m) since g2's launch
    beat = hb(2, step=290).model_copy(update={"at": later})
    _, health, kinds = _tick(
        ledger, later, heartbeat=beat, instances=(inst(2),), pointer=pointer(280, gen=2)
    )
    assert health is Health.HEALTHY and kinds == []


def test_status_shows_the_spend_per_generation_and_in_total(tmp_path: Path) -> None:
    cfg, store = _fleet(tmp_path)
    ledger, _ = preempted_then_resumed()
    write_ledger(store, ledger, 0)
    out = run_cli("status", "-c", str(cfg), "--json")
    cost = json.loads(out.stdout)["runs"][0]["cost"]
    by_gen = {g["generation"]: g for g in cost["generations"]}
    assert by_gen[1]["dollars"] == pytest.approx(8.0)  # g1: 4 h at $2/h, then it ended
    assert cost["total"] >= 11.0  # g2 bills on, until the controller sees it end
    text = run_cli("status", "-c", str(cfg))
    shown = re.search(r"spent \$(\d+\.\d\d) \(24h \$(\d+\.\d\d)\)", text.stdout)
    assert shown is not None, text.stdout
    # The same figure (g2 bills on between the two commands: a cent or so).
    assert float(shown.group(1)) == pytest.approx(cost["total"], abs=0.5)


def test_a_tick_draws_each_runs_timeline_where_the_workflow_asks(tmp_path: Path) -> None:
    cfg, store = _fleet(tmp_path)
    ledger, _ = preempted_then_resumed()
    write_ledger(store, ledger, 0)
    plots = tmp_path / "plots"
    env = {**os.environ, "RESPAWN_PLOT_DIR": str(plots)}
    out = subprocess.run(
        [sys.executable, "-m", "respawn", "reconcile", "--dry-run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode in (0, 1), out.stderr
    svg = (plots / "r.svg").read_bytes()
    assert ET.fromstring(svg).tag.endswith("svg") and b"g2 local" in svg
