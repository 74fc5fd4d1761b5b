"""Looking before spending (issue 21.5): the market without a config, and what the next tick
would launch, through the CLI against the loopback Vast fake. Nothing is created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from respawn.store.keys import Keys
from tests.conftest import ROOT
from tests.test_clouds import write_fleet


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "respawn", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VAST_API_KEY", "RUNPOD_API_KEY")}
    return {**env, **extra}


def test_offers_without_a_config_ranks_the_market(clouds: tuple) -> None:
    vast, _ = clouds
    env = _env(VAST_API_KEY=vast.api_key)
    args = ["offers", "--gpu", "RTX_4090", "--max-price", "2", "--provider", "vast"]
    out = cli(*args, "--api-url", f"vast={vast.url}", "--json", env=env)
    assert out.returncode == 0, out.stderr
    offers = json.loads(out.stdout)
    assert offers and all(o["provider"] == "vast" for o in offers)
    assert all("4090" in o["gpu_name"] and o["price_per_hour"] <= 2 for o in offers)
    prices = [o["price_per_hour"] for o in offers]
    assert prices == sorted(prices)
    text = cli(*args, "--api-url", f"vast={vast.url}", env=env)
    assert text.returncode == 0 and "PROVIDER" in text.stdout and "$/H" in text.stdout
    assert not vast.labels()  # searched, nothing rented


def test_a_cloud_without_its_key_is_named_and_skipped(clouds: tuple) -> None:
    vast, _ = clouds
    out = cli(
        "offers",
        "--gpu",
        "RTX_4090",
        "--provider",
        "vast",
        "--provider",
        "runpod",
        "--api-url",
        f"vast={vast.url}",
        "--json",
        env=_env(VAST_API_KEY=vast.api_key),
    )
    assert out.returncode == 0, out.stderr
    assert "runpod" in out.stderr and "RUNPOD_API_KEY" in out.stderr
    assert json.loads(out.stdout)  # vast still answered


def test_offers_with_bad_usage_is_a_usage_error_not_a_traceback() -> None:
    out = cli("offers", "--api-url", "nonsense", env=_env())
    assert out.returncode == 2 and "NAME=URL" in out.stderr and "Traceback" not in out.stderr
    out = cli("offers", "--max-price", "-1", env=_env())
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_plan_shows_the_offer_the_next_tick_would_take_and_changes_nothing(
    tmp_path: Path, clouds: tuple
) -> None:
    vast, runpod = clouds
    fleet = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    env = _env(VAST_API_KEY=vast.api_key, RUNPOD_API_KEY=runpod.api_key)
    out = cli("plan", "-c", str(fleet), "--json", env=env)
    assert out.returncode == 0, out.stderr
    (run,) = json.loads(out.stdout)["runs"]
    launch = run["launch"]
    assert run["health"] == "new" and launch["generation"] == 1
    assert launch["offer"]["provider"] == "vast"  # first in failover order with a fit
    assert launch["offer"]["price_per_hour"] <= 2.0
    text = cli("plan", "-c", str(fleet), env=env)
    assert "would launch g1 from a fresh start" in text.stdout and "on:   vast" in text.stdout
    assert not vast.labels()  # no instance created
    assert not (tmp_path / "store" / Keys("job").ledger).exists()  # nothing recorded
