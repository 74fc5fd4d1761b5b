"""A spot reclaim's SIGTERM reaches the trainer at once, even while a slow upload runs.

RunPod signals only PID 1 (the bootstrap) and kills everything about 5 s later, so the
supervisor must pass SIGTERM on without waiting for the publish in flight."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

from respawn.store.store import CheckpointStore
from tests.conftest import ROOT, wait_for
from tests.test_pod import TOY, pod_spec, start_pod

# A slow disk on the far side of the store: every upload from step 10 on takes 6 s, and says
# when it started and ended.
SLOW_DISK = textwrap.dedent(
    """
    import os, re, time
    from respawn.store import file_backend

    _upload = file_backend.FileBackend.upload

    def upload(self, key, src, size, progress=None, sha1=None):
        events = os.environ["SLOW_UPLOAD_EVENTS"]
        slow = int(re.search(r"/step_(\\d+)/", key).group(1)) >= 10
        if slow:
            with open(events, "a") as f:
                f.write(f"start {key}\\n")
            time.sleep(6)
        result = _upload(self, key, src, size, progress, sha1)
        if slow:
            with open(events, "a") as f:
                f.write(f"end {key}\\n")
        return result

    file_backend.FileBackend.upload = upload
    """
)


def test_sigterm_reaches_the_trainer_while_an_upload_is_in_flight(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_DISK)
    events = tmp_path / "events"
    events.touch()
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    proc = start_pod(
        tmp_path,
        pod_spec(TOY % (400, "0.05"), term_grace="1s"),
        extra_env={"PYTHONPATH": f"{hooks}:{ROOT}", "SLOW_UPLOAD_EVENTS": str(events)},
    )
    try:
        wait_for(lambda: "start " in events.read_text(), timeout=30)
        os.kill(proc.pid, signal.SIGTERM)  # PID 1 only, as RunPod does
        assert proc.stdout is not None
        trainer_saw_it = False
        for line in proc.stdout:
            if "SIGTERM, checkpointed step" in line:
                trainer_saw_it = True
                break
        assert trainer_saw_it, "the trainer never got SIGTERM"
        assert "end " not in events.read_text(), (
            "the trainer got SIGTERM only after the upload in flight finished"
        )
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert store.read_heartbeat() is not None
