"""Finished means the pointer names a verified step at or past target_step (issue 18, item 3).

A pod's `finished` alone never ends a run while its last steps exist only on its disk: the pod
retries the store until `finish_grace` and says so, and the controller keeps its instance.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from respawn.controller.classify import classify
from respawn.controller.config import ConfigError, load_config, parse_config
from respawn.controller.decide import decide
from respawn.controller.model import HaltOrder, Health
from respawn.controller.reconcile import tick
from respawn.provisioning.local import LocalProvider
from respawn.store.schema import Heartbeat, step_dirname
from respawn.store.store import CheckpointStore
from tests.conftest import wait_for
from tests.test_decide import NOW, RUN, M, hb, ledger, obs, pointer, seen
from tests.test_pod import TOY, pod_spec, start_pod


def _finished(step: int, published: int | None) -> Heartbeat:
    return hb(1, phase="finished", step=step).model_copy(update={"published_step": published})


def test_finished_heartbeat_with_the_final_step_unpublished_keeps_the_instance() -> None:
    o = obs(pointer=pointer(995), heartbeat=_finished(1000, 995))
    v = classify(RUN, o, NOW)
    assert v.health is Health.HEALTHY
    assert "step 1000 is not in the store" in v.reason and "keeping its instance" in v.reason
    assert decide(RUN, o, NOW).actions == ()  # nothing terminated: its disk holds step 1000


def test_unpublished_final_step_after_finish_grace_is_replaced_saying_why() -> None:
    beat = _finished(1000, 995)
    o = obs(pointer=pointer(995), heartbeat=beat, ledger=ledger(heartbeat_seen=seen(beat, 11 * M)))
    v = classify(RUN, o, NOW)
    assert v.health is Health.DEAD
    assert "step 1000 is not in the store" in v.reason and "finish_grace is over" in v.reason
    assert [a.kind for a in decide(RUN, o, NOW).actions] == ["terminate", "provision"]


def test_steps_past_the_target_unpublished_after_finish_grace_still_finish() -> None:
    beat = _finished(1005, 1000)
    o = obs(pointer=pointer(1000), heartbeat=beat, ledger=ledger(heartbeat_seen=seen(beat, 2 * M)))
    assert classify(RUN, o, NOW).health is Health.HEALTHY  # kept while its pod may publish
    late = o.model_copy(update={"ledger": ledger(heartbeat_seen=seen(beat, 11 * M))})
    v = classify(RUN, late, NOW)
    assert v.health is Health.FINISHED and "step 1005 is not in the store" in v.reason
    assert [a.kind for a in decide(RUN, late, NOW).actions] == ["terminate"]  # no relaunch


def test_finished_below_target_step_is_not_finished() -> None:
    beat = _finished(500, 500)
    o = obs(pointer=pointer(500), heartbeat=beat, instances=())
    v = classify(RUN, o, NOW)
    assert v.health is Health.DEAD and not v.fatal and "below target_step 1000" in v.reason
    assert [a.kind for a in decide(RUN, o, NOW).actions] == ["provision"]  # once
    # Stopped cleanly at the same step before: it would stop there again. Halt.
    o = o.model_copy(update={"ledger": o.ledger.model_copy(update={"early_exit_step": 500})})
    v = classify(RUN, o, NOW)
    assert v.health is Health.DEAD and v.fatal and "below target_step 1000" in v.reason
    assert [a.kind for a in decide(RUN, o, NOW).actions] == ["halt", "alert"]
    # A person who resumed after it was first seen gets a relaunch: their call.
    first = ledger(heartbeat_seen=seen(beat, 5 * M), early_exit_step=500)
    resumed = o.model_copy(update={"ledger": first, "halt": HaltOrder(halted=False, at=NOW - M)})
    assert [a.kind for a in decide(RUN, resumed, NOW).actions] == ["provision"]


def test_finished_with_the_pointer_at_target_terminates() -> None:
    o = obs(pointer=pointer(1000), heartbeat=_finished(1000, 1000))
    assert classify(RUN, o, NOW).health is Health.FINISHED
    assert [a.kind for a in decide(RUN, o, NOW).actions] == ["terminate"]


def test_a_pod_publishing_its_last_steps_is_kept_and_says_so() -> None:
    why = "publishing step 1000: store failing (HTTP 503), retrying until 2026-11-23T12:09:00Z"
    beat = hb(1, phase="publishing", step=1000).model_copy(
        update={"published_step": 995, "message": why}
    )
    # No progress for longer than stall_after: the trainer is done, the pod is not stalled.
    o = obs(pointer=pointer(995), heartbeat=beat, ledger=ledger(progress=(1000, 40 * M)))
    v = classify(RUN, o, NOW)
    assert v.health is Health.HEALTHY and why in v.reason
    assert decide(RUN, o, NOW).actions == ()


def test_the_pod_learns_finish_grace_from_the_health_policy() -> None:
    assert RUN.pod.finish_grace == RUN.health.finish_grace
    doc = yaml.safe_load(_fleet_yaml(Path("/tmp/unused"), "true {resume_step}"))
    doc["runs"][0]["health"]["finish_grace"] = "3m"
    (run,) = parse_config(yaml.safe_dump(doc)).runs
    assert run.pod.finish_grace.total_seconds() == 180
    doc["runs"][0]["pod"]["finish_grace"] = "1m"
    with pytest.raises(ConfigError, match=r"set health\.finish_grace only"):
        parse_config(yaml.safe_dump(doc))


# -- end to end: the store refuses the final save for a few seconds ----------------------

TRAINER = """
import sys, time
from pathlib import Path
resume, target, signals = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
def save(step):
    d = Path(f"ck/step_{step}")
    d.mkdir(parents=True, exist_ok=True)
    (d / "state.txt").write_text(str(step))
    (d / "DONE").write_text("ok")
for step in range(resume + 1, target + 1):
    if step == target:
        # Tell the test the final save is next; it breaks the store, then says go.
        (signals / "final-save").touch()
        deadline = time.monotonic() + 60
        while not (signals / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    if step % 5 == 0 or step == target:
        save(step)
print(f"trainer: reached step {target}", flush=True)
"""


def _fleet_yaml(tmp: Path, command: str) -> str:
    doc = {
        "fleet_id": "t",
        "store": {"url": f"file://{tmp / 'store'}"},
        "providers": {"local": {"state_dir": str(tmp / "local")}},
        "runs": [
            {
                "name": "job",
                "target_step": 10,
                "health": {"startup_grace": "1m", "stall_after": "5m", "dead_after": "2m"},
                "pod": {
                    "command": command,
                    "checkpoints": {"sources": [{"path": "ck/step_{step}", "marker": "DONE"}]},
                    "sync_interval": "0.2s",
                    "heartbeat_interval": "0.2s",
                    "term_grace": "2s",
                },
                "resources": {"gpu_count": 0, "max_price_per_hour": 1},
                "providers": ["local"],
                "budget": {"max_launches_per_day": 4, "max_spend_per_day": 1},
            }
        ],
    }
    return yaml.safe_dump(doc)


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[LocalProvider]:
    provider = LocalProvider(tmp_path / "local", term_grace=2)
    yield provider
    for inst in provider.list_instances("job"):
        provider.terminate(inst.id)


def test_store_outage_at_the_final_save_still_finishes_with_the_target_published(
    tmp_path: Path, provider: LocalProvider
) -> None:
    signals = tmp_path / "signals"
    signals.mkdir()
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    path = tmp_path / "fleet.yaml"
    path.write_text(_fleet_yaml(tmp_path, f"{{python}} {script} {{resume_step}} 10 {signals}"))
    fleet = load_config(path)
    provider.fleet = fleet.fleet
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "job")

    assert [a.kind for a in tick(fleet)[0].plan.actions] == ["provision"]
    wait_for(lambda: (signals / "final-save").exists(), timeout=60)
    # The far side fails: step 10's place in the store cannot be written (a file stands
    # where its directory goes), while small documents (heartbeat, pointer) still are.
    blocker = tmp_path / "store" / "job" / "checkpoints" / step_dirname(10)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("store outage")
    (signals / "go").touch()

    def phase() -> str | None:
        beat = store.read_heartbeat()
        return beat.phase if beat is not None else None

    wait_for(lambda: phase() not in (None, "restoring", "training"), timeout=30)
    beat = store.read_heartbeat()
    assert beat is not None and beat.phase == "publishing", beat
    assert (
        "publishing step 10: store failing (" in beat.message and "retrying until" in beat.message
    )
    during = tick(fleet)[0]
    assert during.plan.verdict.health is not Health.FINISHED, during.plan.verdict.reason
    assert "terminate" not in [a.kind for a in during.plan.actions]
    assert [i.state.value for i in provider.list_instances("job")] == ["running"]

    blocker.unlink()  # the store is back
    wait_for(lambda: phase() == "finished", timeout=60)
    latest = store.read_pointer()
    assert latest is not None and latest.step == 10
    after = tick(fleet)[0]
    assert after.plan.verdict.health is Health.FINISHED, after.plan.verdict.reason
    assert store.read_pointer().step == 10  # type: ignore[union-attr]


def test_a_pod_that_cannot_publish_within_finish_grace_fails_naming_the_steps(
    tmp_path: Path,
) -> None:
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    blocker = tmp_path / "store" / "r" / "checkpoints" / step_dirname(10)
    blocker.parent.mkdir(parents=True)
    blocker.write_text("store outage")  # step 10 can never be written
    proc = start_pod(tmp_path, pod_spec(TOY % (10, "0"), finish_grace="2s"))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    beat = store.read_heartbeat()
    assert beat is not None and beat.phase == "failed" and not beat.will_repeat, beat
    assert "10 could not be published within finish_grace (2s)" in beat.message
    assert "only on this instance's disk" in beat.message
    assert "publishing step 10: store failing (" in out and "retrying until" in out


def test_a_pod_naming_a_step_that_never_completes_is_in_the_reason() -> None:
    """Training goes on (the run is healthy) but nothing new reaches the store: the pod's
    account of why is in the reason status, the summary and the alerts show."""
    stuck = "step 105 on disk is not complete after 300s: out/ckpt.json is older than out/ckpt.pt"
    beat = hb(1).model_copy(update={"message": stuck})
    v = classify(RUN, obs(heartbeat=beat), NOW)
    assert v.health is Health.HEALTHY and v.reason.endswith(f"; pod: {stuck}")
    assert classify(RUN, obs(), NOW).reason.endswith("ago")  # no word from the pod: none added
