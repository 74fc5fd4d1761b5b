"""The W&B signal through the real `wandb.Api` (and its Go sidecar) against a loopback fake."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from respawn.controller.config import FleetConfig, RunConfig, parse_config
from respawn.controller.model import Ledger
from respawn.controller.reconcile import Mode, tick
from respawn.controller.report import to_json, to_text
from respawn.controller.wandb_health import watched_run_ids
from respawn.controller.wandb_signal import WandbReader, app_url
from tests.fakes.wandb import API_KEY, FakeWandb

ENV = {"WANDB_API_KEY": API_KEY}


def wandb_run(url: str, also: str = "[]", rule: str = "") -> RunConfig:
    health = f"health: {{degenerate: {rule}}}" if rule else ""
    return parse_config(
        f"""
store: {{url: "file:///tmp/s"}}
providers: {{local: {{state_dir: /tmp/l}}}}
runs:
  - name: r
    wandb: {{entity: ent, project: proj, base_url: "{url}", also_watch: {also}}}
    {health}
    pod:
      command: "train --resume {{resume_step}}"
      checkpoints: {{sources: [{{path: "s_{{step}}", marker: OK}}]}}
    resources: {{max_price_per_hour: 5}}
    providers: [local]
    budget: {{max_launches_per_day: 3, max_spend_per_day: 100}}
"""
    ).runs[0]


@pytest.fixture
def fake() -> Iterator[FakeWandb]:
    f = FakeWandb()
    f.start()
    yield f
    f.stop()


def url_of(f: FakeWandb) -> str:
    assert f._server is not None
    return f"http://127.0.0.1:{f._server.server_address[1]}"


def test_reads_state_heartbeat_step_and_the_metric_tail_with_minimal_queries(
    fake: FakeWandb,
) -> None:
    fake.add_run("proj", "trainer", heartbeat_at="2026-11-23T11:58:00")
    fake.add_run("proj", "orch", state="crashed")
    for i in range(300):
        fake.log("proj", "trainer", {"reward": 1.0 if i < 280 else 0.0, "_runtime": i * 2})
    fake.log("proj", "orch", {"x": 1})
    run = wandb_run(url_of(fake), also="[orch]", rule="{metric: reward, condition: '== 0'}")

    sigs = WandbReader(ENV).read(run, ["trainer", "orch"])

    trainer, orch = sigs
    assert trainer.error is None and trainer.state == "running"
    assert trainer.heartbeat_at == datetime(2026, 11, 23, 11, 58, tzinfo=UTC)
    assert trainer.step == 299 and trainer.runtime == 598
    assert trainer.tail[-1] == (299, 0.0) and trainer.tail[0][0] == 200  # max(4*20, 100) steps
    assert orch.state == "crashed" and orch.step == 0
    assert trainer.url == f"{url_of(fake)}/ent/proj/runs/trainer"
    # One login, one run query per W&B run, and per run with a metric tail the public
    # `Run.scan_history`: its last step, where the history lives, one page of the tail.
    scan = ["RunHistoryKeys", "RunParquetHistory", "SampledHistoryPage"]
    assert sorted(fake.queries) == sorted(["Viewer", "Run", "Run", *scan, *scan])


def test_tail_skips_rows_of_a_streak_already_rolled_back(fake: FakeWandb) -> None:
    fake.add_run("proj", "r")
    for _ in range(50):
        fake.log("proj", "r", {"reward": 0.0})
    run = wandb_run(url_of(fake), rule="{metric: reward, condition: '== 0', steps: 5}")
    (sig,) = WandbReader(ENV).read(run, ["r"], tail_after=45)
    assert [s for s, _ in sig.tail] == [46, 47, 48, 49]


def test_the_tail_is_one_bounded_page_of_the_public_scan_however_long_the_run(
    fake: FakeWandb,
) -> None:
    """Only the steps after the last rollback, at most max(4 x streak, 100) of them, in one
    sampledHistory page that asks for as many samples as steps (nothing is sampled away),
    whether the run logged 300 steps or 5000."""
    fake.add_run("proj", "r")
    for _ in range(5000):
        fake.log("proj", "r", {"reward": 1.0, "loss": 0.5})
    run = wandb_run(url_of(fake), rule="{metric: reward, condition: '== 0', steps: 50}")
    (sig,) = WandbReader(ENV).read(run, ["r"], tail_after=4850)
    assert sig.error is None
    assert [s for s, _ in sig.tail] == list(range(4851, 5000))
    (spec,) = fake.specs
    assert (spec["minStep"], spec["maxStep"], spec["samples"]) == (4851, 4999, 149)
    assert sorted(spec["keys"])[-1] == "reward" and "loss" not in spec["keys"]
    assert fake.count("SampledHistoryPage") == 1


def test_a_hung_history_read_is_an_unknown_signal_within_the_timeout(fake: FakeWandb) -> None:
    """wandb sends a scan without a deadline and wandb-core retries a hung page for minutes:
    the reader's own timeout bounds it."""
    fake.add_run("proj", "r")
    fake.log("proj", "r", {"reward": 1.0})
    fake.slow = {"SampledHistoryPage": 60.0, "RunSampledHistory": 60.0}
    run = wandb_run(url_of(fake), rule="{metric: reward, condition: '== 0'}")
    (sig,) = WandbReader(ENV, timeout=1.5).read(run, ["r"])
    assert sig.error is not None and sig.tail == ()
    assert API_KEY not in sig.error


def test_nan_is_read_as_nan(fake: FakeWandb) -> None:
    fake.add_run("proj", "r")
    fake.log("proj", "r", {"loss": math.nan})
    run = wandb_run(url_of(fake), rule="{metric: loss, condition: 'is nan'}")
    (sig,) = WandbReader(ENV).read(run, ["r"])
    assert math.isnan(sig.tail[0][1])


def test_a_missing_run_is_unknown_and_the_others_still_read(fake: FakeWandb) -> None:
    fake.add_run("proj", "r")
    fake.log("proj", "r", {"x": 1})
    (ok, missing) = WandbReader(ENV).read(wandb_run(url_of(fake)), ["r", "gone"])
    assert ok.error is None and ok.step == 0
    assert missing.error and "gone" in missing.error and missing.step is None


def test_unreachable_wandb_is_an_unknown_signal_within_the_timeout(fake: FakeWandb) -> None:
    url = url_of(fake)
    fake.stop()
    reader = WandbReader(ENV, timeout=1.5)
    sigs = reader.read(wandb_run(url, also="[b]"), ["a", "b"])
    assert all(s.error and s.step is None for s in sigs)
    assert API_KEY not in str(sigs)


def test_a_missing_api_key_is_named_and_nothing_is_sent(fake: FakeWandb) -> None:
    (sig,) = WandbReader({}).read(wandb_run(url_of(fake)), ["r"])
    assert sig.error is not None and "WANDB_API_KEY" in sig.error
    assert fake.queries == []


def test_one_api_per_tick_is_shared_by_every_run(fake: FakeWandb) -> None:
    fake.add_run("proj", "a")
    fake.add_run("proj", "b")
    reader = WandbReader(ENV)
    run = wandb_run(url_of(fake))
    reader.read(run, ["a"])
    reader.read(run, ["b"])
    assert fake.count("Viewer") == 1


def test_watched_ids_follow_the_ledger_then_the_run_name() -> None:
    # Not the pointer: a pod-written latest.json does not choose the W&B run (issue 19.5).
    run = wandb_run("http://x", also="[orch]")
    assert watched_run_ids(run, Ledger(run="r")) == ["r", "orch"]
    assert watched_run_ids(run, Ledger(run="r", wandb_run_id="led")) == ["led", "orch"]
    cloud = wandb_run("https://api.wandb.ai")
    assert cloud.wandb is not None
    assert app_url(cloud.wandb, "abc") == "https://wandb.ai/ent/proj/runs/abc"


def test_a_status_tick_reads_wandb_and_shows_each_runs_url(
    fake: FakeWandb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    fake.add_run("proj", "r")
    fake.add_run("proj", "orch", heartbeat_at="2026-11-23T10:00:00")
    fake.log("proj", "r", {"reward": 1.0})
    doc = wandb_run(url_of(fake), also="[orch]").model_dump(mode="json")
    fleet = FleetConfig.model_validate(
        {
            "store": {"url": f"file://{tmp_path / 'store'}"},
            "providers": {"local": {"state_dir": str(tmp_path / "local")}},
            "runs": [doc],
        }
    )
    (report,) = tick(fleet, mode=Mode.OBSERVE)
    assert [s.run_id for s in report.observation.wandb] == ["r", "orch"]
    text = to_text([report])
    assert f"W&B {url_of(fake)}/ent/proj/runs/r (running, step 0)" in text
    assert f"{url_of(fake)}/ent/proj/runs/orch" in text
    assert to_json([report])["runs"][0]["wandb"][0]["url"].endswith("/runs/r")
