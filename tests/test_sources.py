from __future__ import annotations

import os
import re
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


# -- issue 20.2: a template naming a file; 20.3: one file overwritten in place -----------------

LIGHTNING = CheckpointSource(path="checkpoints/step={step}.ckpt", quiet_for="1s")  # type: ignore[arg-type]


def last_ckpt() -> CheckpointSource:
    return CheckpointSource.model_validate(
        {
            "path": "checkpoints/last.ckpt",
            "step_from": {"name": "checkpoints/step={step}.ckpt"},
            "quiet_for": "1s",
        }
    )


def nanogpt() -> CheckpointSource:
    return CheckpointSource.model_validate(
        {"path": "out/ckpt.pt", "step_from": {"json": "out/ckpt.json", "key": "iter_num"}}
    )


def test_a_template_naming_a_file_is_a_step_of_one_file(tmp_path: Path) -> None:
    write(tmp_path, "checkpoints/step=100.ckpt", b"a" * 10, age=5)
    write(tmp_path, "checkpoints/step=200.ckpt", b"b" * 10)  # still being written
    (got,) = complete_steps(tmp_path, [LIGHTNING], time.time())
    assert got.step == 100
    assert [(f.rel, f.size) for f in got.files] == [("checkpoints/step=100.ckpt", 10)]


def test_a_temporary_sibling_means_the_step_file_is_mid_write(tmp_path: Path) -> None:
    write(tmp_path, "checkpoints/step=100.ckpt", age=5)
    write(tmp_path, "checkpoints/step=100.ckpt.tmp", age=5)
    assert steps(tmp_path, LIGHTNING) == []


def test_last_ckpt_takes_the_newest_step_files_step_once_rewritten_after_it(
    tmp_path: Path,
) -> None:
    write(tmp_path, "checkpoints/last.ckpt", b"old", age=10)  # still step 100's bytes
    write(tmp_path, "checkpoints/step=200.ckpt", age=5)
    assert steps(tmp_path, LIGHTNING, last_ckpt()) == []
    write(tmp_path, "checkpoints/last.ckpt", b"new", age=4)
    (got,) = complete_steps(tmp_path, [LIGHTNING, last_ckpt()], time.time())
    assert got.step == 200
    assert sorted(f.rel for f in got.files) == [
        "checkpoints/last.ckpt",
        "checkpoints/step=200.ckpt",
    ]


def test_a_file_in_place_is_complete_once_its_sidecar_is_not_older(tmp_path: Path) -> None:
    write(tmp_path, "out/ckpt.json", b'{"iter_num": 250}', age=10)
    write(tmp_path, "out/ckpt.pt", b"step 500 being written", age=1)
    assert steps(tmp_path, nanogpt()) == []  # the sidecar still says 250: the file is mid-save
    write(tmp_path, "out/ckpt.json", b'{"iter_num": 500}')
    (got,) = complete_steps(tmp_path, [nanogpt()], time.time())
    assert got.step == 500 and all(f.live for f in got.files)
    assert sorted(f.rel for f in got.files) == ["out/ckpt.json", "out/ckpt.pt"]


def test_a_file_in_place_is_published_from_a_copy_of_the_step_it_was(tmp_path: Path) -> None:
    from respawn.store.disk import snapshot

    write(tmp_path, "out/ckpt.pt", b"step 500", age=1)
    write(tmp_path, "out/ckpt.json", b'{"iter_num": 500}')
    (got,) = complete_steps(tmp_path, [nanogpt()], time.time())
    copied = snapshot(tmp_path, got, [nanogpt()], float("inf"))
    assert copied is not None
    by_rel = {f.rel: f.abs for f in copied.files}
    write(tmp_path, "out/ckpt.pt", b"step 750 overwrote it")  # the trainer goes on
    assert by_rel["out/ckpt.pt"].read_bytes() == b"step 500"
    # A step that moved on between the look and the copy is not published as the old one.
    write(tmp_path, "out/ckpt.json", b'{"iter_num": 750}')
    assert snapshot(tmp_path, got, [nanogpt()], float("inf")) is None


def test_a_file_in_place_is_restored_to_its_path(tmp_path: Path) -> None:
    from respawn.store.store import CheckpointStore

    work = tmp_path / "a"
    write(work, "out/ckpt.pt", b"weights", age=1)
    write(work, "out/ckpt.json", b'{"iter_num": 40}')
    (got,) = complete_steps(work, [nanogpt()], time.time())
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    store.publish(got.step, got.files, 1, "w")
    back = tmp_path / "b"
    result = store.pull(back, sources=[nanogpt()], quiet=True)
    assert result is not None and result.step == 40
    assert (back / "out/ckpt.pt").read_bytes() == b"weights"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "out/ckpt.pt", "quiet_for": "1m"}, "step_from"),
        (
            {"path": "out/step_{step}", "marker": "S", "step_from": {"json": "a.json", "key": "k"}},
            "only for a path without {step}",
        ),
        ({"path": "out/ckpt.pt", "step_from": {"json": "out/ckpt.json"}}, "'key'"),
        (
            {"path": "out/ckpt.pt", "step_from": {"name": "ck/last.ckpt"}, "quiet_for": "1s"},
            "{step}",
        ),
        ({"path": "s_{step}_{step}", "marker": "S"}, "once"),
    ],
)
def test_templates_that_cannot_be_published_are_refused(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        CheckpointSource.model_validate(kwargs)


VALIDATE_FLEET = """
store: {url: "file://%(tmp)s/s"}
providers: {local: {state_dir: "%(tmp)s/l"}}
runs:
  - name: nano
    pod:
      command: "%(command)s"
      checkpoints:
        sources:
          - %(source)s
    resources: {gpu_count: 0, max_price_per_hour: 1}
    providers: [local]
    budget: {max_launches_per_day: 6, max_spend_per_day: 1}
"""


@pytest.mark.parametrize(
    ("command", "source", "named", "fix"),
    [
        (
            "{python} train.py --init_from resume",
            "{path: out/ckpt.pt, quiet_for: 1m}",
            "runs[0].pod.checkpoints.sources[0]",
            "step_from: {json: out/ckpt.json, key: iter_num}",
        ),
        (
            "{python} train.py --init_from resume",
            "{path: out/ckpt.pt, step_from: {json: out/ckpt.json, key: iter_num}}",
            "runs[0].pod.command",
            "set resume: latest",
        ),
    ],
)
def test_validate_names_the_field_and_the_fix(
    tmp_path: Path, command: str, source: str, named: str, fix: str
) -> None:
    from tests.conftest import run_cli

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(VALIDATE_FLEET % {"tmp": tmp_path, "command": command, "source": source})
    got = run_cli("validate", "-c", str(fleet))
    assert got.returncode == 2, got.stdout
    assert named in got.stderr and fix in got.stderr, got.stderr
    assert "Traceback" not in got.stderr


def test_validate_accepts_a_file_in_place_that_resumes_from_latest(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    fleet = tmp_path / "fleet.yaml"
    source = "{path: out/ckpt.pt, step_from: {json: out/ckpt.json, key: iter_num}}"
    command = "{python} train.py --init_from resume"
    fleet.write_text(
        VALIDATE_FLEET.replace("    pod:\n", "    pod:\n      resume: latest\n")
        % {"tmp": tmp_path, "command": command, "source": source}
    )
    got = run_cli("validate", "-c", str(fleet))
    assert got.returncode == 0, got.stderr
