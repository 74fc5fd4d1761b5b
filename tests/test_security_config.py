"""Config a typo, a paste or a hostile edit can turn into a fleet-wide accident (issue 7.10,
issue 12.9): each is refused with exit 2 and a message naming the field, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from respawn.controller.config import ConfigError, parse_config
from tests.conftest import run_cli
from tests.test_config import GOOD


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "fleet.yaml")
    return str(exc.value)


def test_duplicate_key_is_rejected_not_last_wins() -> None:
    # A second `store:` pasted at the end silently moved the whole fleet to another bucket.
    msg = _error(GOOD + "store:\n  url: file:///tmp/elsewhere\n")
    assert "duplicate key 'store'" in msg and "fleet.yaml:" in msg


def test_nested_duplicate_key_is_rejected() -> None:
    msg = _error(GOOD.replace("stall_after: 20m", "stall_after: 20m\n      stall_after: 1m"))
    assert "duplicate key 'stall_after'" in msg


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("stall_after: 20m", "stall_after: 0s", "stall_after"),
        ("stall_after: 20m", "stall_after: 0m0s", "stall_after"),
        ("stall_after: 20m", "stall_after: 1000000000d", "stall_after"),
        ("stall_after: 20m", "dead_after: 30s", "dead_after"),  # heartbeat every 60 s
        ("max_price_per_hour: 2", "max_price_per_hour: .inf", "max_price_per_hour"),
        ("max_spend_per_day: 10", "max_spend_per_day: .inf", "max_spend_per_day"),
        ("url: file:///tmp/x", "url: file:///", "store.url"),
    ],
)
def test_nonsense_values_are_rejected(old: str, new: str, field: str) -> None:
    assert old in GOOD
    msg = _error(GOOD.replace(old, new))
    assert field in msg


@pytest.mark.parametrize(
    ("block", "ok"),
    [
        ("vast:\n    server_url: http://console.example.com", False),
        ("vast:\n    server_url: ftp://console.example.com", False),
        ("runpod:\n    api_url: http://api.example.com/graphql", False),
        ("runpod:\n    api_url: http://127.0.0.1:8080/graphql", True),
        ("vast:\n    server_url: https://console.example.com", True),
    ],
)
def test_api_urls_must_be_https_unless_loopback(block: str, ok: bool) -> None:
    text = GOOD.replace("providers:\n  local:", f"providers:\n  {block}\n  local:")
    if ok:
        parse_config(text)
    else:
        assert "must be https" in _error(text)


def _cli_validate(tmp_path: Path, data: bytes) -> tuple[int, str]:
    path = tmp_path / "fleet.yaml"
    path.write_bytes(data)
    proc = run_cli("validate", "-c", str(path))
    return proc.returncode, proc.stderr


def test_non_utf8_config_exits_2_without_traceback(tmp_path: Path) -> None:
    rc, err = _cli_validate(tmp_path, GOOD.replace("toy", "t\xf6y").encode("latin-1"))
    assert rc == 2 and "Traceback" not in err and "UTF-8" in err


def test_deep_nesting_exits_2_without_traceback(tmp_path: Path) -> None:
    rc, err = _cli_validate(tmp_path, b"runs: " + b"[" * 5000 + b"]" * 5000 + b"\n")
    assert rc == 2 and "Traceback" not in err


def test_huge_duration_exits_2_without_traceback(tmp_path: Path) -> None:
    rc, err = _cli_validate(tmp_path, GOOD.replace("20m", "1000000000d").encode())
    assert rc == 2 and "Traceback" not in err and "stall_after" in err


def test_fleet_id_defaults_to_one_derived_from_the_store() -> None:
    a = parse_config(GOOD)
    b = parse_config(GOOD.replace("file:///tmp/x", "file:///tmp/other"))
    assert a.fleet != b.fleet and len(a.fleet) == 8
    assert parse_config("fleet_id: lab1\n" + GOOD).fleet == "lab1"


@pytest.mark.parametrize(
    ("extra", "name"),
    [
        ("", "VAST_API_KEY"),
        ("", "RUNPOD_API_KEY"),
        ("", "B2_APPLICATION_KEY"),
        ("", "B2_APPLICATION_KEY_ID"),
        ("store:\n  ledger_secret_env: LEDGER_SECRET\n", "LEDGER_SECRET"),
        ("providers:\n  ssh_private_key_env: RESPAWN_SSH_KEY\n", "RESPAWN_SSH_KEY"),
        ("notify:\n  webhook_url_env: RESPAWN_WEBHOOK_URL\n", "RESPAWN_WEBHOOK_URL"),
    ],
)
def test_pod_secret_env_refuses_controller_only_secrets(extra: str, name: str) -> None:
    """Issue 19: `pod.secret_env` handed the trainer whatever it named, the ledger secret and
    the provider keys included; a trainer is the least trusted code in the fleet."""
    import yaml

    doc = yaml.safe_load(GOOD)
    for section, values in (yaml.safe_load(extra) or {}).items():
        doc[section].update(values) if section in doc else doc.__setitem__(section, values)
    doc["runs"][0]["pod"]["secret_env"] = ["HF_TOKEN", name]
    msg = _error(yaml.safe_dump(doc))
    assert "fleet.yaml" in msg and "pod.secret_env" in msg and name in msg, msg


def test_a_pod_secret_holding_a_controller_secrets_value_is_not_launched(
    tmp_path: Path, clouds: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By value too: `HF_TOKEN` set to the Vast API key (a paste, a reused secret) would hand
    the trainer the controller's key under another name."""
    import yaml

    from respawn.controller.config import load_config
    from respawn.controller.reconcile import tick
    from tests.test_clouds import write_fleet

    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    doc = yaml.safe_load(path.read_text())
    doc["runs"][0]["pod"]["secret_env"] = ["HF_TOKEN"]
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("HF_TOKEN", vast.api_key)
    report = tick(load_config(path))[0]
    assert vast.count("create") == 0 and runpod.count("podFindAndDeployOnDemand") == 0
    (launch,) = [r for r in report.results if r.action.kind == "provision"]
    assert not launch.ok
    assert "HF_TOKEN" in launch.detail and "VAST_API_KEY" in launch.detail, launch.detail
    assert vast.api_key not in launch.detail


def test_validate_warns_about_a_secret_too_short_to_be_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The redactor never masks values under 6 characters (they would mask unrelated text):
    such a secret is printed as it is wherever it is echoed, so `validate` says so."""
    import yaml

    doc = yaml.safe_load(GOOD)
    doc["runs"][0]["pod"]["secret_env"] = ["HF_TOKEN", "LONG_TOKEN"]
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("HF_TOKEN", "abc12")
    monkeypatch.setenv("LONG_TOKEN", "long-enough-value")
    proc = run_cli("validate", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    (warning,) = [ln for ln in proc.stderr.splitlines() if "HF_TOKEN" in ln]
    assert "warning" in warning and "6" in warning and "abc12" not in proc.stderr
    assert "LONG_TOKEN" not in proc.stderr
