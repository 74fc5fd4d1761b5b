"""Secrets preflight: every variable the config names, in one message; fallbacks and the SSH key
degrade instead of stopping recovery."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from respawn.controller.cli import main
from respawn.controller.config import parse_config
from respawn.controller.observe import observe
from respawn.controller.preflight import check_env
from respawn.controller.providers import MissingKeyError, open_providers
from respawn.provisioning.base import can_restart
from respawn.store.file_backend import FileBackend
from respawn.store.store import CheckpointStore
from tests.conftest import ROOT

PRODUCTION = (ROOT / "examples" / "production.yaml").read_text()


def test_every_missing_variable_is_named_at_once() -> None:
    pre = check_env(parse_config(PRODUCTION), {})
    named = " ".join(pre.errors)
    for var in ("B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY", "HF_TOKEN", "WANDB_API_KEY"):
        assert var in named
    assert "VAST_API_KEY" in named  # the first provider is required
    assert "RUNPOD_API_KEY" not in named  # a fallback: skipped with a warning
    assert any("RUNPOD_API_KEY" in w and "fallback" in w for w in pre.warnings)
    assert any("RESPAWN_SSH_PRIVATE_KEY" in w and "restart-in-place" in w for w in pre.warnings)


def test_validate_env_exits_non_zero_with_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(PRODUCTION)
    for var in ("B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY", "WANDB_API_KEY", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VAST_API_KEY", "v" * 8)
    assert main(["validate", "-c", str(path), "--env"]) != 0
    err = capsys.readouterr().err
    assert "B2_APPLICATION_KEY_ID" in err and "HF_TOKEN" in err and "WANDB_API_KEY" in err
    assert "VAST_API_KEY" not in err.split("warning")[0]
    assert main(["validate", "-c", str(path)]) == 0  # without --env only the file is checked


def _fleet_with_fallback(tmp: Path) -> str:
    doc = {
        "store": {"url": f"file://{tmp / 'store'}"},
        "providers": {"local": {"state_dir": str(tmp / "local")}},
        "runs": [
            {
                "name": "job",
                "pod": {
                    "image": "img:1",
                    "command": "train {resume_step}",
                    "checkpoints": {"sources": [{"path": "s_{step}", "marker": "OK"}]},
                },
                "resources": {"gpu_count": 0, "max_price_per_hour": 1},
                "providers": ["local", "runpod"],
                "budget": {"max_launches_per_day": 4, "max_spend_per_day": 1},
            }
        ],
    }
    return yaml.safe_dump(doc)


def test_a_fallback_without_its_key_is_skipped_not_unknown(tmp_path: Path) -> None:
    fleet = parse_config(_fleet_with_fallback(tmp_path))
    providers = open_providers(fleet, {"local", "runpod"}, environ={})
    assert isinstance(providers["runpod"], MissingKeyError)
    store = CheckpointStore(FileBackend.from_url(f"file://{tmp_path / 'store'}"), "job")
    obs = observe(fleet.runs[0], store, providers)
    assert obs.errors == ()
    assert any("RUNPOD_API_KEY" in w for w in obs.warnings)


def test_a_missing_first_provider_key_still_makes_the_run_unknown(tmp_path: Path) -> None:
    text = _fleet_with_fallback(tmp_path).replace("- local\n  - runpod", "- runpod\n  - local")
    fleet = parse_config(text)
    assert fleet.runs[0].providers == ("runpod", "local")
    providers = open_providers(fleet, {"local", "runpod"}, environ={})
    store = CheckpointStore(FileBackend.from_url(f"file://{tmp_path / 'store'}"), "job")
    assert observe(fleet.runs[0], store, providers).errors


def test_a_missing_ssh_key_disables_restart_in_place_only() -> None:
    fleet = parse_config(PRODUCTION)
    providers = open_providers(fleet, {"vast"}, environ={"VAST_API_KEY": "v" * 8})
    vast = providers["vast"]
    assert not isinstance(vast, Exception), vast
    assert not can_restart(vast)
