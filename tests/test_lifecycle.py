"""The end of a pod's life as the controller sees it (issue 7.6-7.8): a trainer finishing
after its last checkpoint, a pod that failed and says why, a trainer restarted in place."""

from __future__ import annotations

from pathlib import Path

from respawn.controller.classify import classify
from respawn.controller.decide import decide
from respawn.controller.model import Halt, HaltOrder, Health, RestartRecord, Terminate
from respawn.store.store import CheckpointStore
from tests.test_decide import NOW, RUN, M, hb, inst, ledger, obs, pointer
from tests.test_pod import pod_spec, start_pod


def _failed(message: str, will_repeat: bool) -> object:
    return hb(1, phase="failed").model_copy(update={"message": message, "will_repeat": will_repeat})


def test_failure_reason_reaches_the_controller_after_the_instance_is_gone() -> None:
    o = obs(heartbeat=_failed("CUDA error: uncorrectable ECC error", False), instances=())
    v = classify(RUN, o, NOW)
    assert v.health is Health.DEAD and "uncorrectable ECC error" in v.reason
    assert [a.kind for a in decide(RUN, o, NOW).actions] == ["provision"]  # another machine


def test_failure_that_will_repeat_halts_at_once_with_its_reason() -> None:
    why = "no checkpoint of run r verifies: step 100: sha1 mismatch"
    o = obs(heartbeat=_failed(why, True), instances=(inst(1),))
    plan = decide(RUN, o, NOW)
    assert [a.kind for a in plan.actions] == ["terminate", "halt", "alert"]
    assert isinstance(plan.actions[0], Terminate)  # the idle instance stops billing
    halt = plan.actions[1]
    assert isinstance(halt, Halt) and why in halt.reason
    assert plan.ledger.halted is not None and why in plan.ledger.halted
    assert classify(RUN, o.model_copy(update={"ledger": plan.ledger}), NOW).health is Health.HALTED


def test_finished_only_after_finish_grace_or_the_pod_says_so() -> None:
    o = obs(pointer=pointer(1000), ledger=ledger(progress=(1000, 3 * M)))
    assert decide(RUN, o, NOW).actions == ()  # the trainer is still saving / evaluating
    done = o.model_copy(update={"heartbeat": hb(1, phase="finished", step=1000)})
    assert [a.kind for a in decide(RUN, done, NOW).actions] == ["terminate"]
    assert [a.kind for a in decide(RUN, o, NOW + 8 * M).actions] == ["terminate"]


def test_restarted_trainer_gets_startup_grace_from_the_restart() -> None:
    restarted = ledger(
        launched=120 * M,
        progress=(100, 40 * M),
        restarts=(RestartRecord(generation=1, at=NOW - 2 * M, provider="local", instance_id="i1"),),
    )
    v = classify(RUN, obs(ledger=restarted, shell_access=True), NOW)
    assert v.health is Health.STARTING


def test_pod_reports_nothing_verifies_as_a_failure_that_will_repeat(tmp_path: Path) -> None:
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    store.write_json(store.keys.latest, pointer(5).model_dump(mode="json", by_alias=True))
    proc = start_pod(tmp_path, pod_spec("true {resume_step}"))
    proc.communicate(timeout=60)
    beat = store.read_heartbeat()
    assert beat is not None and beat.phase == "failed" and beat.will_repeat
    assert "verifies" in beat.message


def test_pod_reports_a_command_that_cannot_start_as_a_failure_that_will_repeat(
    tmp_path: Path,
) -> None:
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    proc = start_pod(tmp_path, pod_spec("no-such-trainer-binary {resume_step}"))
    proc.communicate(timeout=60)
    beat = store.read_heartbeat()
    assert beat is not None and beat.phase == "failed" and beat.will_repeat
    assert "cannot start" in beat.message


def test_a_person_who_resumed_after_the_failure_gets_a_new_launch() -> None:
    why = "no checkpoint of run r verifies"
    failed = _failed(why, True)
    o = obs(heartbeat=failed, instances=())
    first = decide(RUN, o, NOW)
    assert first.ledger.halted is not None  # halted at once, the failure first seen now
    resumed = HaltOrder(halted=False, at=NOW + 5 * M)
    later = o.model_copy(update={"ledger": first.ledger, "halt": resumed})
    plan = decide(RUN, later, NOW + 6 * M)
    assert [a.kind for a in plan.actions] == ["provision"]
