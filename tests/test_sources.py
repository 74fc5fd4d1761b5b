from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from respawn.contract.sources import CheckpointSource
from respawn.store.disk import complete_steps

WEIGHTS = CheckpointSource(path="outputs/weights/step_{step}", marker="STABLE")
STATE = CheckpointSource(path="outputs/checkpoints/step_{step}", quiet_for="30s")  # type: ignore[arg-type]


def write(root: Path, rel: str, data: bytes = b"x", age: float = 0.0) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    if age:
        t = time.time() - age
        os.utime(p, (t, t))
        os.utime(p.parent, (t, t))


def steps(root: Path, *sources: CheckpointSource) -> list[int]:
    return [s.step for s in complete_steps(root, list(sources), time.time())]


def test_marker_rule(tmp_path: Path) -> None:
    write(tmp_path, "outputs/weights/step_10/model.bin")
    assert steps(tmp_path, WEIGHTS) == []
    write(tmp_path, "outputs/weights/step_10/STABLE")
    assert steps(tmp_path, WEIGHTS) == [10]


def test_quiescence_rule(tmp_path: Path) -> None:
    write(tmp_path, "outputs/checkpoints/step_10/shard0.pt", age=5)
    assert steps(tmp_path, STATE) == []  # changed 5 s ago, quiet_for is 30 s
    write(tmp_path, "outputs/checkpoints/step_10/shard0.pt", age=60)
    assert steps(tmp_path, STATE) == [10]


def test_temp_files_block_completeness(tmp_path: Path) -> None:
    write(tmp_path, "outputs/checkpoints/step_10/shard0.pt", age=60)
    write(tmp_path, "outputs/checkpoints/step_10/shard1.pt.tmp", age=60)
    assert steps(tmp_path, STATE) == []


def test_step_complete_only_when_every_required_source_is(tmp_path: Path) -> None:
    write(tmp_path, "outputs/checkpoints/step_10/shard0.pt", age=60)
    write(tmp_path, "outputs/weights/step_10/model.bin")
    write(tmp_path, "outputs/checkpoints/step_20/shard0.pt", age=60)
    write(tmp_path, "outputs/weights/step_20/model.bin")
    write(tmp_path, "outputs/weights/step_20/STABLE")
    found = complete_steps(tmp_path, [STATE, WEIGHTS], time.time())
    assert [s.step for s in found] == [20]
    assert {f.rel for f in found[0].files} == {
        "outputs/checkpoints/step_20/shard0.pt",
        "outputs/weights/step_20/model.bin",
        "outputs/weights/step_20/STABLE",
    }


def test_optional_source_shipped_when_present(tmp_path: Path) -> None:
    extra = CheckpointSource(path="logs/step_{step}", marker="END", required=False)
    write(tmp_path, "outputs/weights/step_5/STABLE")
    write(tmp_path, "outputs/weights/step_6/STABLE")
    write(tmp_path, "logs/step_6/END")
    found = {s.step: s for s in complete_steps(tmp_path, [WEIGHTS, extra], time.time())}
    assert sorted(found) == [5, 6]
    assert "logs/step_6/END" in {f.rel for f in found[6].files}


@pytest.mark.parametrize(
    ("template", "directory", "step"),
    [
        (
            "ckpt/epoch{epoch}epochstep{s}globalstep{step}",
            "ckpt/epoch1epochstep17globalstep342",
            342,
        ),
        ("output/checkpoint-{step}", "output/checkpoint-1500", 1500),
        ("outputs/step_{step}", "outputs/step_000120", 120),
    ],
)
def test_other_trainers_layouts(tmp_path: Path, template: str, directory: str, step: int) -> None:
    src = CheckpointSource(path=template, marker="done")
    write(tmp_path, f"{directory}/done")
    assert steps(tmp_path, src) == [step]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "outputs/weights", "marker": "S"}, "{step}"),
        ({"path": "/abs/step_{step}", "marker": "S"}, "relative"),
        ({"path": "../up/step_{step}", "marker": "S"}, "relative"),
        ({"path": "s_{step}"}, "exactly one completeness rule"),
    ],
)
def test_bad_sources(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CheckpointSource(**kwargs)  # type: ignore[arg-type]
