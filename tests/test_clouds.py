"""Whole controller ticks against fake Vast and RunPod APIs on 127.0.0.1, a file:// store,
and an SSH server on loopback for restart in place."""

from __future__ import annotations

import json
import os
import re
import threading
from datetime import timedelta
from pathlib import Path

import paramiko
import pytest
import yaml

from respawn.controller.config import load_config
from respawn.controller.ledger import read_ledger, write_ledger
from respawn.controller.model import ProgressMark
from respawn.controller.reconcile import Mode, tick
from respawn.controller.stores import open_run_store
from respawn.provisioning import calls
from respawn.store.keys import Keys
from respawn.store.schema import utcnow
from tests.conftest import ROOT, run_cli
from tests.fakes.http import Fault
from tests.fakes.runpod import FakeRunPod
from tests.fakes.ssh import FakeSSH
from tests.fakes.vast import FakeVast

FIXTURES = Path(__file__).parent / "fixtures"


def write_fleet(
    tmp: Path, vast: FakeVast, runpod: FakeRunPod, gpus: list[str], ssh_env: str | None = None
) -> Path:
    doc = {
        "fleet_id": "t",
        "store": {"url": f"file://{tmp / 'store'}"},
        "providers": {
            "vast": {"server_url": vast.url, "pace": False},  # type: ignore[attr-defined]
            "runpod": {"api_url": runpod.url},  # type: ignore[attr-defined]
            **({"ssh_private_key_env": ssh_env} if ssh_env else {}),
        },
        "runs": [
            {
                "name": "job",
                "health": {"startup_grace": "10m", "stall_after": "30m", "dead_after": "15m"},
                "pod": {
                    "image": "ghcr.io/lab/pod:1",
                    "command": "python train.py --resume {resume_step}",
                    "checkpoints": {"sources": [{"path": "ck/step_{step}", "marker": "DONE"}]},
                },
                "resources": {
                    "gpus": gpus,
                    "gpu_count": 1,
                    "disk_gb": 100,
                    "max_price_per_hour": 2.0,
                    "market": "interruptible_then_on_demand",
                },
                "providers": ["vast", "runpod"],
                "budget": {"max_launches_per_day": 5, "max_spend_per_day": 100},
            }
        ],
    }
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_first_tick_rents_the_cheapest_vast_bid(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["RTX_4090"]))
    report = tick(fleet)[0]
    assert [r.ok for r in report.results] == [True]
    assert vast.labels() == ["respawn-t-job-g1"] and runpod.pods == {}
    env = vast.bodies[-1]["env"]
    assert env["RESPAWN_GENERATION"] == "1" and env["RESPAWN_STORE"].startswith("file://")
    launch = read_ledger(open_run_store(fleet.store, "job")).launch_of(1)
    assert launch is not None and (launch.provider, launch.market) == ("vast", "interruptible")
    status = run_cli("status", "-c", str(tmp_path / "fleet.yaml"))
    assert "respawn-t-job-g1" in status.stdout and " spot" in status.stdout


def test_no_vast_capacity_fails_over_to_runpod(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["H100_SXM"]))
    vast.offers.clear()
    report = tick(fleet)[0]
    assert report.results[0].ok, report.results[0].detail
    assert [p["name"] for p in runpod.pods.values()] == ["respawn-t-job-g1"]


def test_vast_offers_api_down_is_skipped_this_tick(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["H100_SXM", "RTX_4090"]))
    vast.fail("search", *[Fault(status=503)] * 10)
    report = tick(fleet)[0]
    assert report.results[0].ok
    assert vast.instances == {} and len(runpod.pods) == 1


def test_failed_listing_is_unknown_and_launches_nothing(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["RTX_4090"]))
    vast.fail("list", *[Fault(status=500)] * 10)
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown"
    assert [a.kind for a in report.plan.actions] == ["alert"]
    assert vast.count("create") == 0 and runpod.count("createPod") == 0


def test_secrets_echoed_by_an_api_error_are_redacted(
    tmp_path: Path, clouds: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["H100_SXM"])
    doc = yaml.safe_load(path.read_text())
    doc["runs"][0]["pod"]["secret_env"] = ["HF_TOKEN"]
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("HF_TOKEN", "hf_SuperSecretValue123")
    vast.offers.clear()
    runpod.echo_invalid_input = True
    proc = run_cli("reconcile", "-c", str(path), "--json")
    assert proc.returncode == 1
    everything = proc.stdout + proc.stderr + (tmp_path / "store" / Keys("job").ledger).read_text()
    assert "got invalid value" in everything  # the error itself is reported...
    assert "hf_SuperSecretValue123" not in everything  # ...without the secret
    assert "***" in everything


def test_two_concurrent_ticks_leave_one_instance(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["RTX_4090"]))
    barrier = threading.Barrier(2)
    results = []

    def one() -> None:
        barrier.wait()
        results.append(tick(fleet)[0])

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2
    assert vast.labels() == ["respawn-t-job-g1"]
    assert tick(fleet)[0].plan.actions == ()  # the survivor is adopted, nothing more to do


def test_launch_race_is_settled_on_the_earliest_created(tmp_path: Path, clouds: tuple) -> None:
    from respawn.provisioning.failover import settle_race
    from respawn.provisioning.vast import VastProvider

    vast, _ = clouds
    p = VastProvider(vast.api_key, server_url=vast.url)  # type: ignore[attr-defined]
    p.fleet = "t"
    first = vast.add_instance("respawn-t-job-g1")
    second = vast.add_instance("respawn-t-job-g1")  # a concurrent tick's launch
    mine = next(i for i in p.list_instances("job") if i.id == str(second))
    winner = settle_race(p, mine)
    assert winner.id == str(first)
    assert list(vast.instances) == [first]


def test_outbid_old_generation_that_resumes_is_destroyed(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["RTX_4090"]))
    tick(fleet)  # g1
    (g1,) = vast.instances
    vast.outbid(g1)
    report = tick(fleet)[0]  # g1 stopped: dead → destroy it, launch g2
    assert report.plan.verdict.health.value == "dead"
    assert vast.labels() == ["respawn-t-job-g2"]
    # An older generation showing up again (resumed by Vast on its own) is a stray.
    stray = vast.add_instance("respawn-t-job-g1")
    tick(fleet)
    assert stray not in vast.instances and vast.labels() == ["respawn-t-job-g2"]


def test_offers_command_ranks_across_providers_and_markets(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    proc = run_cli("offers", "-c", str(path), "--run", "job", "--json")
    assert proc.returncode == 0, proc.stderr
    offers = json.loads(proc.stdout)
    assert [(o["provider"], o["market"], round(o["price_per_hour"], 3)) for o in offers] == [
        ("vast", "interruptible", 0.186),  # bid 0.165 + 100 GB of disk
        ("vast", "interruptible", 0.241),
        ("runpod", "on_demand", 0.34),  # community cloud
        ("vast", "on_demand", 0.371),
        ("vast", "on_demand", 0.421),
        ("runpod", "on_demand", 0.69),  # secure cloud
    ]
    text = run_cli("offers", "-c", str(path), "--run", "job")
    assert text.returncode == 0, text.stderr  # the table used to end in a traceback
    assert re.search(r"^runpod .* 0\.340 on_demand", text.stdout, re.M), text.stdout
    assert "gpus on vast: RTX 4090" in text.stdout
    assert "gpus on runpod: NVIDIA GeForce RTX 4090" in text.stdout
    assert "interruptible" in text.stdout and "on_demand" in text.stdout


def test_terminate_command_destroys_on_every_provider(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    vast.add_instance("respawn-t-job-g1")
    runpod.add_pod("respawn-t-job-g2", status="EXITED")
    proc = run_cli("terminate", "-c", str(path), "--run", "job")
    assert proc.returncode == 0, proc.stderr
    assert vast.instances == {} and runpod.pods == {}


def test_stalled_trainer_is_restarted_in_place_over_ssh(
    tmp_path: Path, clouds: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    vast, runpod = clouds
    key = paramiko.RSAKey.generate(2048)
    pem = tmp_path / "id"
    key.write_private_key_file(str(pem))
    monkeypatch.setenv("RESPAWN_SSH_KEY", pem.read_text())
    gpus = (FIXTURES / "nvidia-smi-h100-hung.csv").read_text()
    ssh = FakeSSH(key, {"kill -USR1": (0, "signalled\n"), "nvidia-smi": (0, gpus)})
    vast.ssh_port = ssh.port
    try:
        fleet = load_config(write_fleet(tmp_path, vast, runpod, ["RTX_4090"], "RESPAWN_SSH_KEY"))
        tick(fleet)  # g1
        store = open_run_store(fleet.store, "job")
        ledger = read_ledger(store)
        # The pod beats but the step has not moved for 40 minutes: a hung trainer.
        old = utcnow() - timedelta(minutes=40)
        launches = tuple(lr.model_copy(update={"at": old}) for lr in ledger.launches)
        write_ledger(
            store,
            ledger.model_copy(
                update={"launches": launches, "progress": ProgressMark(step=10, at=old)}
            ),
            ledger.version,
        )
        from respawn.store.schema import Heartbeat

        store.write_heartbeat(
            Heartbeat(
                run="job",
                generation=1,
                writer="w",
                at=utcnow(),
                phase="training",
                step=10,
                ssh_host_keys=(ssh.fingerprint,),  # published by the pod at boot
            )
        )
        vast.instances[next(iter(vast.instances))]["actual_status"] = "running"
        report = tick(fleet)[0]
        assert report.plan.verdict.health.value == "stalled"
        assert [(r.action.kind, r.ok) for r in report.results] == [("restart", True)]
        assert any(c.startswith("kill -USR1") for c in ssh.commands)
        # Diagnosis over the same channel: GPU state, log tail, disk.
        proc = run_cli("diagnose", "-c", str(tmp_path / "fleet.yaml"), "--run", "job")
        assert proc.returncode == 0, proc.stderr
        assert "-- gpus" in proc.stdout and "H100" in proc.stdout and "0 %" in proc.stdout
        assert any(c.startswith("tail -n 40") for c in ssh.commands)
        # Still stalled once the restarted trainer's startup grace (10m) is over: restart
        # was tried, so the instance is replaced.
        store.write_heartbeat(
            Heartbeat(run="job", generation=1, writer="w", at=utcnow(), phase="training", step=10)
        )
        report = tick(fleet, now=utcnow() + timedelta(minutes=11))[0]
        assert [a.kind for a in report.plan.actions] == ["terminate", "provision"]
        assert vast.labels() == ["respawn-t-job-g2"]
    finally:
        ssh.stop()
        os.environ.pop("RESPAWN_SSH_KEY", None)


def test_one_listing_per_provider_per_tick(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    doc = yaml.safe_load(path.read_text())
    doc["runs"] += [{**doc["runs"][0], "name": f"job{n}"} for n in range(2, 5)]
    path.write_text(yaml.safe_dump(doc))
    vast.add_instance("respawn-t-job3-g1")
    reports = tick(load_config(path), mode=Mode.OBSERVE)
    assert vast.count("list") == 1 and runpod.count("listPods") == 1
    by_run = {r.run: [i.name for i in r.observation.instances] for r in reports}
    assert by_run == {"job": [], "job2": [], "job3": ["respawn-t-job3-g1"], "job4": []}


def test_a_failed_shared_listing_makes_every_run_unknown(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    doc = yaml.safe_load(path.read_text())
    doc["runs"].append({**doc["runs"][0], "name": "job2"})
    path.write_text(yaml.safe_dump(doc))
    vast.fail("list", *[Fault(status=503)] * calls.ATTEMPTS)
    reports = tick(load_config(path))
    assert [r.plan.verdict.health.value for r in reports] == ["unknown", "unknown"]
    assert vast.count("create") == 0


@pytest.mark.parametrize("status", [200, 400])
def test_created_stopped_contract_is_destroyed_and_its_key_never_logged(
    tmp_path: Path, clouds: tuple, status: int
) -> None:
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    vast.stopped_reply_status = status
    vast.min_bid_at_create[102] = 0.5  # our bid on the cheapest offer is now too low
    proc = run_cli("-v", "reconcile", "-c", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    # The refused contract was destroyed; the next offer was rented.
    assert [r["label"] for r in vast.instances.values()] == ["respawn-t-job-g1"]
    assert vast.count("destroy") == 1 and len(vast.api_keys) == 2
    everything = proc.stdout + proc.stderr + (tmp_path / "store" / Keys("job").ledger).read_text()
    assert "refused" in everything or vast.count("create") == 2
    for key in vast.api_keys:
        assert key not in everything


def test_ledger_and_status_say_which_market(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["H100_SXM"])
    vast.offers.clear()  # no Vast at all: RunPod on-demand
    fleet = load_config(path)
    assert tick(fleet)[0].results[0].ok
    launch = read_ledger(open_run_store(fleet.store, "job")).launch_of(1)
    assert launch is not None and (launch.provider, launch.market) == ("runpod", "on_demand")
    proc = run_cli("status", "-c", str(path), "--json")
    (inst,) = json.loads(proc.stdout)["runs"][0]["instances"]
    assert inst["provider"] == "runpod" and "interruptible" in inst


def test_the_production_config_launches_through_the_fakes(
    tmp_path: Path, clouds: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped config, pointed at the fakes: 8x H100 at `min_vram_gb: 80` matches Vast's
    81559 MB cards, and every environment value fits Vast's 256-character limit (the fake
    refuses a longer one)."""
    vast, runpod = clouds
    doc = yaml.safe_load((ROOT / "examples/production.yaml").read_text())
    doc["store"] = {"url": f"file://{tmp_path / 'store'}"}
    doc["providers"]["vast"]["server_url"] = vast.url  # type: ignore[attr-defined]
    doc["providers"]["vast"]["pace"] = False

    doc["providers"]["runpod"]["api_url"] = runpod.url  # type: ignore[attr-defined]
    doc["providers"].pop("ssh_private_key_env")
    run = doc["runs"][0]
    run.pop("wandb")  # no W&B on loopback
    run["health"].pop("degenerate")  # the circuit breaker reads W&B
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 37)
    vast.offers[200] = {
        **vast.offers[103],
        "id": 200,
        "num_gpus": 8,
        "min_bid": 12.0,
        "dph_base": 20.0,
        "disk_space": 2000.0,
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    fleet = load_config(path)
    report = tick(fleet)[0]
    assert report.results[0].ok, report.results[0].detail
    assert vast.labels() == [f"respawn-{fleet.fleet}-{run['name']}-g1"]
    env = vast.bodies[-1]["env"]
    assert max(len(v) for v in env.values()) <= 256
    assert vast.bodies[-1]["price"] == pytest.approx(13.2)  # min bid + 10%, disk on top


def test_every_spot_offer_is_tried_before_any_on_demand(tmp_path: Path, clouds: tuple) -> None:
    """interruptible_then_on_demand: Vast spot, (RunPod has none), then on-demand in the
    run's provider order: Vast on-demand before RunPod."""
    vast, runpod = clouds
    fleet = load_config(write_fleet(tmp_path, vast, runpod, ["RTX_4090"]))
    vast.min_bid_at_create = {101: 1.0, 102: 1.0}  # every spot bid is refused
    report = tick(fleet)[0]
    assert report.results[0].ok, report.results[0].detail
    (row,) = vast.instances.values()
    assert row["is_bid"] is False and runpod.pods == {}
    launch = read_ledger(open_run_store(fleet.store, "job")).launch_of(1)
    assert launch is not None and launch.market == "on_demand"


def test_validate_warns_when_term_grace_outlasts_runpods(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    text = (ROOT / "examples/production.yaml").read_text()
    path.write_text(text.replace("term_grace: 5s ", "term_grace: 25s"))
    proc = run_cli("validate", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "term_grace is 25s but runpod kills a pod about 5s after SIGTERM" in proc.stderr


def test_doctor_live_reads_the_clouds_and_the_store(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    vast.add_instance("respawn-t-job-g1")
    proc = run_cli("doctor", "--live", "-c", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "vast: ok" in proc.stdout and "runpod: ok" in proc.stdout
    assert "store: run job: readable (no checkpoint yet)" in proc.stdout
    # Read-only: nothing was created or destroyed.
    assert vast.count("create") == vast.count("destroy") == 0
    assert runpod.count("podFindAndDeployOnDemand") == runpod.count("podTerminate") == 0


def test_doctor_names_every_field_that_changed(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    path = write_fleet(tmp_path, vast, runpod, ["RTX_4090"])
    vast.offers[101]["gpu_ram"] = "24564"  # a string where the adapter compares numbers
    del vast.offers[102]["min_bid"]
    iid = vast.add_instance("respawn-t-job-g1")
    vast.instances[iid]["is_bid"] = "true"
    proc = run_cli("doctor", "--live", "-c", str(path))
    assert proc.returncode == 1
    assert "offer 101: field 'gpu_ram' is str, expected int or float" in proc.stdout
    assert "offer 102: field 'min_bid' is missing" in proc.stdout
    assert f"vast instance {iid}: field 'is_bid' is str, expected bool" in proc.stdout
    assert "runpod: ok" in proc.stdout


def test_doctor_without_live_calls_nothing(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    proc = run_cli("doctor", "-c", str(write_fleet(tmp_path, vast, runpod, ["RTX_4090"])))
    assert proc.returncode == 0 and "pass --live" in proc.stdout
    assert vast.calls == [] and runpod.calls == []
