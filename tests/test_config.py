from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from respawn.contract.durations import format_duration, parse_duration
from respawn.controller.config import ConfigError, load_config, parse_config
from tests.conftest import ROOT, run_cli

GOOD = """\
store:
  url: file:///tmp/x
providers:
  local:
    state_dir: /tmp/y
runs:
  - name: toy
    health:
      stall_after: 20m
    pod:
      command: "{python} train.py --resume {resume_step}"
      checkpoints:
        sources:
          - path: out/step_{step}
            marker: DONE
    resources:
      max_price_per_hour: 2
    providers: [local]
    budget:
      max_spend_per_day: 10
"""


def test_examples_validate_and_say_what_they_claim() -> None:
    local = load_config(ROOT / "examples" / "local.yaml")
    assert [r.providers for r in local.runs] == [("local",)]
    assert "respawn.examples.toy_trainer" in local.runs[0].pod.command
    production = load_config(ROOT / "examples" / "production.yaml")
    for run in production.runs:
        assert run.pod.image, f"{run.name}: a cloud run needs its pod image"
        assert set(run.providers) <= {"vast", "runpod"} and run.providers
        assert len(run.pod.checkpoints.sources) >= 1


def test_defaults_and_durations() -> None:
    fleet = parse_config(GOOD)
    run = fleet.run("toy")
    assert run.health.stall_after == timedelta(minutes=20)
    assert run.health.startup_grace == timedelta(minutes=20)  # default
    assert run.pod.checkpoints.keep_last == 3


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "fleet.yaml")
    return str(exc.value)


def test_bad_yaml_names_file_line_and_column() -> None:
    msg = _error("store:\n  url: [unclosed\nruns: []\n")
    assert msg.startswith("fleet.yaml:3:")
    assert "invalid YAML" in msg


def test_unknown_field_names_path_and_line() -> None:
    msg = _error(GOOD.replace("stall_after: 20m", "stal_after: 20m"))
    assert "fleet.yaml:9: runs[0].health.stal_after: unknown field" in msg


def test_bad_duration_says_what_is_expected() -> None:
    msg = _error(GOOD.replace("stall_after: 20m", "stall_after: 20 minutes"))
    assert "runs[0].health.stall_after" in msg
    assert "'20 minutes' is not a duration" in msg and "'20m'" in msg


def test_duration_without_unit_is_rejected() -> None:
    msg = _error(GOOD.replace("stall_after: 20m", "stall_after: 20"))
    assert "has no unit" in msg


def test_command_must_have_resume_step() -> None:
    msg = _error(GOOD.replace("--resume {resume_step}", "--resume 0"))
    assert "runs[0].pod.command" in msg and "{resume_step}" in msg


def test_unknown_placeholder_is_rejected() -> None:
    msg = _error(GOOD.replace("--resume {resume_step}", "--resume {resume_step} {gpu}"))
    assert "unknown placeholder {gpu}" in msg


def test_missing_required_field() -> None:
    msg = _error(GOOD.replace("    budget:\n      max_spend_per_day: 10\n", ""))
    assert "runs[0].budget: required field is missing" in msg


def test_source_needs_exactly_one_rule() -> None:
    msg = _error(GOOD.replace("marker: DONE", "marker: DONE\n            quiet_for: 30s"))
    assert "exactly one completeness rule" in msg


def test_local_provider_needs_state_dir() -> None:
    msg = _error(GOOD.replace("providers:\n  local:\n    state_dir: /tmp/y\n", ""))
    assert "providers.local.state_dir" in msg


def test_cloud_providers_need_an_image() -> None:
    msg = _error(GOOD.replace("providers: [local]", "providers: [local, vast]"))
    assert "set pod.image" in msg


def test_keep_last_at_least_two() -> None:
    msg = _error(
        GOOD.replace(
            "            marker: DONE\n", "            marker: DONE\n        keep_last: 1\n"
        )
    )
    assert "runs[0].pod.checkpoints.keep_last" in msg


def test_store_url_scheme() -> None:
    msg = _error(GOOD.replace("file:///tmp/x", "s3://bucket/x"))
    assert "store.url" in msg and "b2://BUCKET/PREFIX" in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("20m", 1200), ("1h30m", 5400), ("2d", 172800), ("0.5s", 0.5), ("250ms", 0.25)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    td = parse_duration(text)
    assert td.total_seconds() == seconds
    assert parse_duration(format_duration(td)) == td


def test_cli_config_error_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("stall_after: 20m", "stall_after: soon"))
    proc = run_cli("status", "-c", str(bad))
    assert proc.returncode == 2
    assert f"{bad}:9: runs[0].health.stall_after" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_config_exits_2(tmp_path: Path) -> None:
    proc = run_cli("reconcile", "-c", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2
    assert "no such file" in proc.stderr


def test_schema_command_prints_json_schema() -> None:
    proc = run_cli("schema")
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert "runs" in schema["properties"] and "store" in schema["properties"]
    assert "$defs" in schema and "CheckpointSource" in schema["$defs"]
