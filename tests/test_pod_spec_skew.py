"""A controller upgraded before its pod image: the spec it writes stays readable by an older
pod unless it uses what that pod does not know, and then the pod says so, by field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ConfigDict, create_model

from respawn.contract.pod import PodEnv, PodEnvError, PodSpec
from respawn.controller.config import parse_config
from respawn.store.store import CheckpointStore
from tests.conftest import ROOT
from tests.test_config import GOOD

#: Fields newer than the first pod images (finish, in-place sources, the image's Python).
NEWER = {"resume", "python", "finish_grace"}


def _older_pod_model() -> type:
    """PodSpec as a pod image from before NEWER: the same fields less those, extras refused."""
    fields = {
        name: (f.annotation, f) for name, f in PodSpec.model_fields.items() if name not in NEWER
    }
    return create_model("OldPodSpec", __config__=ConfigDict(frozen=True, extra="forbid"), **fields)


def test_a_spec_using_only_what_an_older_pod_knows_is_read_by_it() -> None:
    run = parse_config(GOOD).runs[0]
    doc = run.pod.canonical_json()
    assert not NEWER & set(json.loads(doc)), "fields left at their default are not written"
    old = _older_pod_model().model_validate_json(doc)
    assert old.command == run.pod.command
    assert PodSpec.model_validate_json(doc) == run.pod  # the same spec, defaults filled in


def test_a_spec_an_older_pod_cannot_honour_is_refused_naming_the_field() -> None:
    run = parse_config(GOOD).runs[0]
    doc = json.loads(run.pod.canonical_json())
    doc["future_knob"] = 3  # what a newer controller sets and this pod's respawn lacks
    env = PodEnv(store="file:///s", run="r", generation=1, writer="w", pod_inline=json.dumps(doc))
    with pytest.raises(PodEnvError) as info:
        env.pod_spec(None)
    assert "future_knob" in str(info.value) and "older than the controller" in str(info.value)


def test_a_pod_refusing_its_spec_reports_a_failure_that_will_repeat(tmp_path: Path) -> None:
    """Every instance of the generation would refuse the same spec: the pod's heartbeat says
    so (`will_repeat`), and the controller halts the run with the reason instead of paying
    for instance after instance until the crash-loop breaker."""
    run = parse_config(GOOD).runs[0]
    doc = json.loads(run.pod.canonical_json())
    doc["future_knob"] = 3
    env = PodEnv(
        store=f"file://{tmp_path / 'store'}",
        run="r",
        generation=1,
        writer="w1",
        pod_inline=json.dumps(doc),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "respawn.pod"],
        cwd=tmp_path,
        env={**os.environ, **env.to_env(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "future_knob" in proc.stdout + proc.stderr
    hb = CheckpointStore.open(env.store, "r").read_heartbeat()
    assert hb is not None and hb.phase == "failed" and hb.will_repeat
    assert "future_knob" in hb.message and "older than the controller" in hb.message
