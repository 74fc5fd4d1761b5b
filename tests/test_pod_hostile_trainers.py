"""Trainers behaving as real ones do at their worst, through the real pod (issue 20 review).

Each trainer here is a script the pod runs as it would a user's: an in-place checkpoint whose
sidecar names an absurd step, a crash in the middle of overwriting the checkpoint in place, a
machine-dependent death at start (the kernel's OOM killer, a torchrun footer after a CUDA OOM),
an interpreter whose path holds a space. Plus one disk-level interleaving the pod cannot be
timed into: the trainer starts rewriting the file between "complete" and "copied aside".
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from respawn.contract.sources import CheckpointSource
from respawn.store.disk import complete_steps, snapshot
from respawn.store.store import CheckpointStore
from tests.test_pod import pod_spec, start_pod

NANO = {
    "sources": [{"path": "out/ckpt.pt", "step_from": {"json": "out/ckpt.json", "key": "iter_num"}}]
}


def _store(tmp: Path) -> CheckpointStore:
    return CheckpointStore.open(f"file://{tmp / 'store'}", "r")


# Saves out/ckpt.pt then its sidecar; the sidecar's value for each save is given in argv.
ABSURD_SIDECAR = """
import json, sys, time
from pathlib import Path
Path("out").mkdir(exist_ok=True)
for raw in sys.argv[1:]:
    Path("out/ckpt.pt").write_text("weights " + raw)
    time.sleep(0.05)
    Path("out/ckpt.json").write_text('{"iter_num": %s}' % raw)
    time.sleep(0.6)
"""


def test_a_sidecar_naming_an_absurd_step_is_never_published_and_the_pod_goes_on(
    tmp_path: Path,
) -> None:
    # 10**18 is beyond any step the store holds; Infinity and 1e400 are what Python's json
    # reads from a trainer that wrote float('inf'); a bool and a fraction are no step either.
    script = tmp_path / "train.py"
    script.write_text(ABSURD_SIDECAR)
    values = ["1000000000000000000", "Infinity", "1e400", "true", "2.5", "5"]
    spec = pod_spec(
        f"{{python}} {script} " + " ".join(values),
        checkpoints=NANO,
        resume="latest",
        max_trainer_restarts=0,
    )
    proc = start_pod(tmp_path, spec)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    store = _store(tmp_path)
    assert store.read_pointer().step == 5  # type: ignore[union-attr]
    assert store.manifested_steps() == [5]
    hb = store.read_heartbeat()
    assert hb is not None and hb.phase == "finished", hb


def test_a_file_rewritten_between_complete_and_copied_is_never_published_torn(
    tmp_path: Path,
) -> None:
    # torch.save writes in chunks into the same file (nanoGPT: no tmp + rename); a chunk may
    # land after the step was judged complete and before it is copied aside, and the copy
    # then runs inside a pause between two chunks (the file does not change while copied).
    (source,) = [CheckpointSource.model_validate(s) for s in NANO["sources"]]
    out = tmp_path / "out"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(b"A" * 4096)
    time.sleep(0.01)
    (out / "ckpt.json").write_text(json.dumps({"iter_num": 5}))
    (step,) = complete_steps(tmp_path, [source], time.time())
    assert step.step == 5
    time.sleep(0.05)  # a save is never within the same clock tick as the previous sidecar
    with open(out / "ckpt.pt", "wb") as f:  # step 10's save begins: truncate, first chunk
        f.write(b"B" * 100)
    copied = snapshot(tmp_path, step, [source], time.time())
    if copied is not None:
        (pt,) = [f for f in copied.files if f.rel == "out/ckpt.pt"]
        assert pt.abs.read_bytes() == b"A" * 4096, "a torn file would be published as step 5"


# A nanoGPT-style trainer resuming from "latest" (out/ckpt.pt on disk): it saves step 5 whole,
# then dies half way through overwriting ckpt.pt with step 10 (OOM-killed mid torch.save).
# Restarted, it must find a loadable checkpoint, not the torn one.
CRASH_MID_SAVE = """
import json, os, sys, time
from pathlib import Path
ck, side = Path("out/ckpt.pt"), Path("out/ckpt.json")
start = json.loads(ck.read_text())["iter_num"] if ck.exists() else 0
print("resuming after", start, flush=True)
Path("out").mkdir(exist_ok=True)
for step in range(start + 1, 16):
    time.sleep(0.05)
    if step % 5:
        continue
    doc = json.dumps({"iter_num": step, "pad": "x" * 4000})
    if step == 10 and not Path("crashed-once").exists():
        Path("crashed-once").touch()
        time.sleep(1.5)  # step 5 is published meanwhile
        with open(ck, "w") as f:
            f.write(doc[:100])
            f.flush()
            os._exit(137)
    ck.write_text(doc)
    side.write_text(json.dumps({"iter_num": step}))
"""


def test_a_crash_mid_overwrite_restarts_the_trainer_from_a_whole_file(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(CRASH_MID_SAVE)
    spec = pod_spec(
        f"{{python}} {script}", checkpoints=NANO, resume="latest", max_trainer_restarts=2
    )
    proc = start_pod(tmp_path, spec)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "resuming after 5" in out, out
    assert _store(tmp_path).read_pointer().step == 15  # type: ignore[union-attr]


OOM_KILLED = """
import os, signal
print("Loading checkpoint shards:  50%|#####     | 15/30", flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the kernel's OOM killer: this machine's RAM
"""

TORCHRUN_CUDA_OOM = """
import sys
print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a "
      "total capacity of 79.15 GiB of which 3.06 MiB is free.", flush=True)
print(\"\"\"torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
train.py FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 4242)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================\"\"\", flush=True)
sys.exit(1)
"""


def _fails_at_start(tmp: Path, program: str) -> tuple[str, object]:
    script = tmp / "train.py"
    script.write_text(program)
    spec = pod_spec(f"{{python}} {script} {{resume_step}}", max_trainer_restarts=2)
    proc = start_pod(tmp, spec)
    out, _ = proc.communicate(timeout=60)
    return out, _store(tmp).read_heartbeat()


def test_a_trainer_oom_killed_at_start_is_not_a_failure_that_repeats(tmp_path: Path) -> None:
    out, hb = _fails_at_start(tmp_path, OOM_KILLED)
    assert out.count("starting trainer") == 3, out  # the restart budget, then a new machine
    assert hb is not None and not hb.will_repeat, hb  # type: ignore[attr-defined]


def test_a_cuda_oom_under_torchrun_is_not_a_failure_that_repeats(tmp_path: Path) -> None:
    out, hb = _fails_at_start(tmp_path, TORCHRUN_CUDA_OOM)
    assert out.count("starting trainer") == 3, out
    assert hb is not None and not hb.will_repeat, hb  # type: ignore[attr-defined]


def test_pod_python_with_a_space_in_its_path(tmp_path: Path) -> None:
    venv = tmp_path / "my env" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    script = tmp_path / "train.py"
    script.write_text(
        "from pathlib import Path\n"
        "d = Path('ck/step_5'); d.mkdir(parents=True); (d / 'DONE').touch()\n"
    )
    spec = pod_spec(
        f"{{python}} {script} {{resume_step}}",
        python=str(venv / "python"),
        checkpoints={"sources": [{"path": "ck/step_{step}", "marker": "DONE"}]},
        max_trainer_restarts=0,
    )
    proc = start_pod(tmp_path, spec)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert _store(tmp_path).read_pointer().step == 5  # type: ignore[union-attr]


def test_the_trainer_never_sees_the_store_credentials(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        "import json, os\nfrom pathlib import Path\n"
        "Path('env.json').write_text(json.dumps(dict(os.environ)))\n"
    )
    spec = pod_spec(f"{{python}} {script} {{resume_step}}", max_trainer_restarts=0)
    proc = start_pod(
        tmp_path, spec, extra_env={"B2_APPLICATION_KEY_ID": "k-id-1", "B2_APPLICATION_KEY": "k2"}
    )
    proc.communicate(timeout=60)
    seen = json.loads((tmp_path / "pod" / "env.json").read_text())
    assert "k-id-1" not in seen.values() and "k2" not in seen.values(), sorted(seen)


# The sidecar first, then the checkpoint: the file is always newer than its sidecar.
SIDECAR_FIRST = """
import json, time
from pathlib import Path
Path("out").mkdir(exist_ok=True)
Path("out/ckpt.json").write_text('{"iter_num": 5}')
time.sleep(0.05)
Path("out/ckpt.pt").write_text("weights 5")
print("saved step 5", flush=True)
while not Path("stop").exists():
    time.sleep(0.05)
"""


def test_a_step_that_never_completes_is_named_in_the_heartbeat(tmp_path: Path) -> None:
    """A trainer writing the sidecar before the checkpoint trains on while nothing is ever
    published: the pod says which file and why in its heartbeat (and the controller's
    reason carries it), instead of a run that looks healthy until its next loss."""
    script = tmp_path / "train.py"
    script.write_text(SIDECAR_FIRST)
    spec = pod_spec(f"{{python}} {script}", checkpoints=NANO, resume="latest")
    proc = start_pod(tmp_path, spec)
    store = _store(tmp_path)
    try:
        deadline = time.monotonic() + 30
        hb = None
        while time.monotonic() < deadline:
            hb = store.read_heartbeat()
            if hb is not None and "not complete" in hb.message:
                break
            time.sleep(0.2)
        assert hb is not None and hb.phase == "training", hb
        assert "step 5" in hb.message and "out/ckpt.json is older than out/ckpt.pt" in hb.message
        assert "after the checkpoint" in hb.message
        assert store.read_pointer() is None  # nothing was published: the cause is named
    finally:
        (tmp_path / "pod" / "stop").touch()
        proc.communicate(timeout=60)
