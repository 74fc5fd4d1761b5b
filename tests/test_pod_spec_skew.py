"""A controller upgraded before its pod image: the spec it writes stays readable by an older
pod unless it uses what that pod does not know, and then the pod says so, by field."""

from __future__ import annotations

import json

import pytest
from pydantic import ConfigDict, create_model

from respawn.contract.pod import PodEnv, PodEnvError, PodSpec
from respawn.controller.config import parse_config
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
