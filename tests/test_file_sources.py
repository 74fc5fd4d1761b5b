"""Step files and a file overwritten in place, through the real pod (issue 20.2, 20.3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from respawn.store.store import CheckpointStore
from tests.test_pod import pod_spec, start_pod

# Lightning-like: checkpoints/step=N.ckpt every 5 steps (never rotated by the trainer), then
# last.ckpt; resumes from --ckpt_path (a step file) when given.
STEP_FILES = """
import json, sys, time
from pathlib import Path

import pytest
resume, target = int(sys.argv[1]), int(sys.argv[2])
state = json.loads(Path(f"checkpoints/step={resume}.ckpt").read_text())["state"] if resume else 1
for step in range(resume + 1, target + 1):
    state = (state * 31 + step) % 1000003
    with open("steps.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "state": state}) + "\\n")
    if step % 5 == 0:
        Path("checkpoints").mkdir(exist_ok=True)
        Path(f"checkpoints/step={step}.ckpt").write_text(json.dumps({"state": state}))
        Path("checkpoints/last.ckpt").write_text(json.dumps({"state": state}))
    time.sleep(0.02)
"""


LAST = {
    "path": "checkpoints/last.ckpt",
    "step_from": {"name": "checkpoints/step={step}.ckpt"},
    "quiet_for": "0.2s",
}


@pytest.mark.parametrize("with_last", [False, True], ids=["step-files", "step-files+last"])
def test_step_files_are_published_and_resumed(tmp_path: Path, with_last: bool) -> None:
    script = tmp_path / "train.py"
    script.write_text(STEP_FILES)
    step_files = {"path": "checkpoints/step={step}.ckpt", "quiet_for": "0.2s"}
    sources = {
        "sources": [step_files, LAST] if with_last else [step_files],
        "keep_last": 2,
        "keep_local": 1,
    }
    first = start_pod(
        tmp_path, pod_spec(f"{{python}} {script} {{resume_step}} 20", checkpoints=sources)
    )
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 0, out
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    assert store.read_pointer().step == 20  # type: ignore[union-attr]
    # Published step files beyond keep_local are removed; last.ckpt, overwritten in place, stays.
    disk = tmp_path / "pod" / "checkpoints"
    assert sorted(p.name for p in disk.iterdir()) == ["last.ckpt", "step=20.ckpt"]

    second = start_pod(
        tmp_path,
        pod_spec(f"{{python}} {script} {{resume_step}} 30", checkpoints=sources),
        generation=2,
        name="b",
    )
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out
    # last.ckpt comes back with its step file when it is a source.
    assert f"restored step 20 ({2 if with_last else 1} files" in out, out
    resumed = [json.loads(x) for x in (tmp_path / "b/steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == list(range(21, 31))
    assert store.read_pointer().step == 30  # type: ignore[union-attr]
