"""The real `vastai` CLI (the one Vast's users and docs use) against the fake Vast API: if
the fake answered in a shape the real client cannot read, this fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.vast import FakeVast

VASTAI = Path(sys.executable).parent / "vastai"
pytestmark = pytest.mark.skipif(not VASTAI.exists(), reason="vastai CLI not installed")


@pytest.fixture
def fake() -> Iterator[FakeVast]:
    f = FakeVast()
    f.url = f.start()  # type: ignore[attr-defined]
    yield f
    f.stop()


def vastai(fake: FakeVast, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),  # the CLI writes its config and caches under HOME
        "VAST_URL": fake.url,  # type: ignore[attr-defined]  # also where it asks for GPU names
        "VASTAI_NO_UPDATE_CHECK": "1",
        "CI": "1",
    }
    return subprocess.run(
        [str(VASTAI), "--url", fake.url, "--api-key", fake.api_key, *args],  # type: ignore[attr-defined]
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_search_create_with_a_bid_show_destroy(fake: FakeVast, tmp_path: Path) -> None:
    found = vastai(
        fake,
        tmp_path,
        "search",
        "offers",
        "num_gpus=1 gpu_name=RTX_4090 dph_total<=0.5 gpu_ram>=24 geolocation notin [CN,VN]",
        "-b",
        "-o",
        "dph_total",
        "--limit",
        "5",
        "--storage",
        "20",
        "--raw",
    )
    assert found.returncode == 0, found.stderr
    offers = json.loads(found.stdout)
    assert [o["id"] for o in offers] == [102, 101]
    # The CLI's query parser sends numbers as strings: the fake compared them as numbers.
    assert fake.searches[-1]["num_gpus"] == {"eq": "1"}
    assert fake.searches[-1]["type"] == "bid"

    made = vastai(
        fake,
        tmp_path,
        "create",
        "instance",
        "102",
        "--image",
        "img:1",
        "--env",
        "-e FOO=bar",
        "--label",
        "respawn-cli-g1",
        "--disk",
        "20",
        "--bid_price",
        "0.2",
        "--raw",
    )
    assert made.returncode == 0, made.stderr
    reply = json.loads(made.stdout)
    assert reply["success"] is True
    iid = reply["new_contract"]
    assert fake.bodies[-1]["price"] == 0.2 and fake.bodies[-1]["env"] == {"FOO": "bar"}

    shown = vastai(fake, tmp_path, "show", "instance", str(iid), "--raw")
    assert shown.returncode == 0, shown.stderr
    row = json.loads(shown.stdout)
    assert row["label"] == "respawn-cli-g1" and row["is_bid"] is True
    assert row["extra_env"] == {"FOO": "bar"}  # the SDK turned the [[k, v]] pairs into a dict
    assert row["dph_total"] == pytest.approx(0.2 + 0.15 * 20 / 720)

    gone = vastai(fake, tmp_path, "destroy", "instance", str(iid), "-y")
    assert gone.returncode == 0, gone.stderr
    assert f"destroying instance {iid}" in gone.stdout
    assert fake.instances == {}


def test_error_replies_are_read_by_the_cli(fake: FakeVast, tmp_path: Path) -> None:
    gone = vastai(fake, tmp_path, "show", "instance", "424242", "--raw")
    assert "null" in gone.stdout  # {"instances": null}
    refused = vastai(fake, tmp_path, "destroy", "instance", "424242", "-y", "--raw")
    assert "Instance not found" in refused.stderr + refused.stdout  # the documented `msg`
