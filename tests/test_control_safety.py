"""Control-plane safety under faults: a lost or garbage ledger, a kill switch with a broken
store, a tick that observed before a person halted the run, concurrent ticks, and a
controller SIGKILLed at each of its mutating calls. Whole ticks against the fake Vast and
RunPod APIs on 127.0.0.1, the real local provider, and a file:// store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from respawn.controller.act import act
from respawn.controller.cli import main
from respawn.controller.config import FleetConfig, load_config
from respawn.controller.decide import decide
from respawn.controller.lease import Lease
from respawn.controller.ledger import StaleLedgerError, read_ledger, write_ledger
from respawn.controller.model import Health, RunReport
from respawn.controller.observe import observe
from respawn.controller.providers import open_providers
from respawn.controller.reconcile import tick
from respawn.controller.report import exit_code
from respawn.controller.stores import open_run_store
from respawn.provisioning.local import LocalProvider
from respawn.store.keys import Keys
from respawn.store.schema import Heartbeat, LatestPointer, utcnow
from respawn.store.store import CheckpointStore
from tests.conftest import ROOT, wait_for
from tests.fakes.runpod import FakeRunPod
from tests.fakes.vast import DEFAULT_OFFERS, FakeVast
from tests.test_reconcile import write_fleet as write_local_fleet


@pytest.fixture
def clouds(
    clouds: tuple[FakeVast, FakeRunPod], monkeypatch: pytest.MonkeyPatch
) -> tuple[FakeVast, FakeRunPod]:
    # Enough capacity for every launch of a long test.
    clouds[1].types["NVIDIA GeForce RTX 4090"].stock.update(COMMUNITY=10**6, SECURE=10**6)
    return clouds


def cloud_fleet(tmp: Path, clouds: tuple[FakeVast, FakeRunPod], providers: list[str]) -> Path:
    vast, runpod = clouds
    doc = {
        "fleet_id": "t",
        "store": {"url": f"file://{tmp / 'store'}"},
        "providers": {
            "vast": {"server_url": vast.url, "pace": False},  # type: ignore[attr-defined]
            "runpod": {"api_url": runpod.url},  # type: ignore[attr-defined]
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
                    "gpus": ["RTX_4090"],
                    "gpu_count": 1,
                    "max_price_per_hour": 2.0,
                    "market": "interruptible_then_on_demand",  # RunPod rents on-demand only
                },
                "providers": providers,
                "budget": {"max_launches_per_day": 1000, "max_spend_per_day": 100000},
            }
        ],
    }
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def store_of(fleet: FleetConfig) -> CheckpointStore:
    return open_run_store(fleet.store, "job")


def vast_live(vast: FakeVast) -> list[tuple[int, str]]:
    with vast.lock:
        return sorted(
            (iid, r["label"])
            for iid, r in vast.instances.items()
            if r["actual_status"] in ("loading", "running")
        )


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


# -- 7.1 / 13.4: a lost, garbage or zeroed ledger ---------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "deleted", "zeroed"])
def test_a_damaged_ledger_destroys_nothing_until_repaired(
    tmp_path: Path, clouds: tuple, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    vast, _ = clouds
    path = cloud_fleet(tmp_path, clouds, ["vast"])
    fleet = load_config(path)
    tick(fleet)  # g1
    before = vast_live(vast)
    assert [label for _, label in before] == ["respawn-t-job-g1"]
    ledger_file = tmp_path / "store" / Keys("job").ledger
    if damage == "garbage":
        ledger_file.write_text("{garbage")
    elif damage == "deleted":
        ledger_file.unlink()
    else:  # valid, but it remembers nothing
        ledger_file.write_text(json.dumps({"run": "job", "generation": 0, "version": 9}))
    damaged = ledger_file.read_bytes() if ledger_file.exists() else None

    for _ in range(2):  # every tick: alert, change nothing, keep the evidence
        report = tick(fleet)[0]
        assert report.plan.verdict.health == Health.UNKNOWN
        assert "ledger" in report.plan.verdict.reason
        assert [a.kind for a in report.plan.actions] == ["alert"]
        assert exit_code([report]) == 1
        assert vast_live(vast) == before
        assert (ledger_file.read_bytes() if ledger_file.exists() else None) == damaged

    rc, out, err = cli(capsys, "ledger", "repair", "-c", str(path), "--run", "job")
    assert rc == 0, err
    assert "generation 1" in out
    if damage == "garbage":
        assert list((tmp_path / "store/_control/job").glob("ledger.json.corrupt-*"))
    report = tick(fleet)[0]
    assert report.plan.verdict.health == Health.STARTING
    assert report.plan.actions == ()
    assert vast_live(vast) == before


def test_a_lost_ledger_never_launches_a_generation_that_fences_itself(
    tmp_path: Path, clouds: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    # The pointer is at g5 and the ledger is gone: the old code launched g1, which refused
    # to start ("generation 5 owns this run"), then g2, … until the breaker tripped.
    vast, _ = clouds
    path = cloud_fleet(tmp_path, clouds, ["vast"])
    fleet = load_config(path)
    store = store_of(fleet)
    at = utcnow()
    store.write_json(
        store.keys.latest,
        LatestPointer(
            run="job", step=500, manifest="m", generation=5, written_at=at, writer="w"
        ).model_dump(mode="json", by_alias=True),
    )
    report = tick(fleet)[0]
    assert report.plan.verdict.health == Health.UNKNOWN and "g5" in report.plan.verdict.reason
    assert vast.count("create") == 0
    assert cli(capsys, "ledger", "repair", "-c", str(path), "--run", "job")[0] == 0
    assert read_ledger(store).generation == 5
    report = tick(fleet)[0]
    assert [r.ok for r in report.results] == [True]
    assert [label for _, label in vast_live(vast)] == ["respawn-t-job-g6"]
    assert vast.bodies[-1]["env"]["RESPAWN_GENERATION"] == "6"


def test_repair_refuses_without_every_instance_listing(
    tmp_path: Path, clouds: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fakes.http import Fault

    vast, _ = clouds
    path = cloud_fleet(tmp_path, clouds, ["vast"])
    vast.fail("list", *[Fault(status=500)] * 10)
    rc, _, err = cli(capsys, "ledger", "repair", "-c", str(path), "--run", "job")
    assert rc == 1 and "could not be listed" in err
    assert not (tmp_path / "store" / Keys("job").ledger).exists()


# -- 7.2: the kill switch always kills --------------------------------------------------------


@pytest.mark.parametrize("breakage", ["unwritable store", "missing B2 key"])
def test_terminate_destroys_first_even_when_the_halt_cannot_be_recorded(
    tmp_path: Path,
    clouds: tuple,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    breakage: str,
) -> None:
    vast, _ = clouds
    path = cloud_fleet(tmp_path, clouds, ["vast"])
    tick(load_config(path))
    assert len(vast_live(vast)) == 1
    if breakage == "unwritable store":
        # (the folder holds the ledger since the launch: replaced whole)
        control = (tmp_path / "store" / Keys("job").halt).parent
        shutil.rmtree(control)
        control.write_text("a file where a folder must be")
    else:
        doc = yaml.safe_load(path.read_text())
        doc["store"] = {"url": "b2://bucket/prefix"}
        path.write_text(yaml.safe_dump(doc))
        monkeypatch.delenv("B2_APPLICATION_KEY_ID", raising=False)
        monkeypatch.delenv("B2_APPLICATION_KEY", raising=False)
    rc, out, err = cli(capsys, "terminate", "-c", str(path), "--run", "job")
    assert vast_live(vast) == []  # killed, whatever the store says
    assert "terminated vast:" in out
    assert rc == 1
    assert "halt could not be recorded" in err and "Traceback" not in out + err
    rc, _, err = cli(capsys, "resume", "-c", str(path), "--run", "job")
    assert rc == 1 and "could not record" in err


def test_terminate_says_which_provider_failed_and_still_records_the_halt(
    tmp_path: Path, clouds: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fakes.http import Fault

    vast, runpod = clouds
    path = cloud_fleet(tmp_path, clouds, ["vast", "runpod"])
    fleet = load_config(path)
    tick(fleet)
    vast.fail("list", *[Fault(status=500)] * 30)
    rc, _, err = cli(capsys, "terminate", "-c", str(path), "--run", "job")
    assert rc == 1 and "vast" in err and "destroying instances failed" in err
    assert tick(fleet)[0].plan.verdict.health != Health.DEAD  # never relaunched
    assert vast.count("create") == 1 and runpod.count("podFindAndDeployOnDemand") == 0


# -- 13.3: what a person says is never undone by a tick ---------------------------------------


@pytest.mark.parametrize("state", ["running", "outbid"])
def test_a_tick_that_observed_before_terminate_cannot_undo_it(
    tmp_path: Path, clouds: tuple, capsys: pytest.CaptureFixture[str], state: str
) -> None:
    vast, _ = clouds
    path = cloud_fleet(tmp_path, clouds, ["vast"])
    fleet = load_config(path)
    run = fleet.runs[0]
    tick(fleet)  # g1
    if state == "outbid":
        vast.outbid(next(iter(vast.instances)))
    # A tick observes and decides…
    store = store_of(fleet)
    providers = open_providers(fleet, run.providers)
    obs = observe(run, store, providers)
    plan = decide(run, obs, utcnow())
    # …a person halts the run…
    assert cli(capsys, "terminate", "-c", str(path), "--run", "job")[0] == 0
    # …and the tick carries out its plan and writes its ledger.
    act(plan, run, fleet, store, providers, obs.ledger)
    assert vast_live(vast) == []
    report = tick(fleet)[0]
    assert report.plan.verdict.health == Health.STOPPED
    assert exit_code([report]) == 0  # stopped by hand is not an alert
    assert vast_live(vast) == [] and vast.count("create") == 1


# -- 7.3: concurrent ticks ---------------------------------------------------------------------


def test_the_tick_lease_admits_one_holder(tmp_path: Path) -> None:
    store = CheckpointStore.open(f"file://{tmp_path}", "job")
    a, b = Lease(store, utcnow), Lease(store, utcnow)
    assert a.acquire() is None
    assert b.acquire() is not None  # held by a
    a.check()  # still a's
    a.release()
    assert b.acquire() is None
    later = Lease(store, lambda: utcnow() + timedelta(hours=1))
    assert later.acquire() is None  # b died holding it: it expired
    with pytest.raises(StaleLedgerError.__mro__[1]):  # StoreError: lost
        b.check()


def test_a_tick_that_cannot_take_the_lease_changes_nothing(tmp_path: Path, clouds: tuple) -> None:
    vast, _ = clouds
    fleet = load_config(cloud_fleet(tmp_path, clouds, ["vast"]))
    control = (tmp_path / "store" / Keys("job").lease).parent
    control.parent.mkdir(parents=True)
    control.write_text("a file where a folder must be")
    report = tick(fleet)[0]
    assert report.plan.actions == () and vast.count("create") == 0
    assert "lease could not be taken" in report.plan.verdict.reason
    assert exit_code([report]) == 1


def test_a_stale_plan_cannot_launch_a_second_instance(tmp_path: Path, clouds: tuple) -> None:
    # Two ticks observed the same ledger (version N) and both planned "provision g1". The
    # first acts; the second's ledger write is rejected before it launches anything.
    vast, _ = clouds
    fleet = load_config(cloud_fleet(tmp_path, clouds, ["vast"]))
    run = fleet.runs[0]
    store = store_of(fleet)
    providers = open_providers(fleet, run.providers)
    now = utcnow()
    first_obs, second_obs = observe(run, store, providers), observe(run, store, providers)
    first, second = decide(run, first_obs, now), decide(run, second_obs, now)
    assert [r.ok for r in act(first, run, fleet, store, providers, first_obs.ledger)] == [True]
    results = act(second, run, fleet, store, providers, second_obs.ledger)
    assert [r.ok for r in results] == [False] and "ledger changed" in results[0].detail
    assert [label for _, label in vast_live(vast)] == ["respawn-t-job-g1"]
    with pytest.raises(StaleLedgerError):
        write_ledger(store, second.ledger, second_obs.ledger.version)


def concurrently(fleet: FleetConfig, n: int = 10) -> list[RunReport]:
    barrier = threading.Barrier(n)
    reports: list[RunReport] = []
    errors: list[BaseException] = []

    def one() -> None:
        barrier.wait()
        try:
            reports.extend(tick(fleet))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(reports) == n
    return reports


def _launched(reports: list[RunReport]) -> int:
    return sum(1 for r in reports for res in r.results if res.action.kind == "provision" and res.ok)


RUNPOD_LIVE = ("PROVISIONING", "STARTING", "RUNNING")  # REST v2 statuses of a pod that runs


def _cloud_rounds(tmp_path: Path, clouds: tuple, provider: str, n_rounds: int) -> None:
    vast, runpod = clouds
    fleet = load_config(cloud_fleet(tmp_path, clouds, [provider]))
    store = store_of(fleet)
    for n in range(1, n_rounds + 1):
        with vast.lock:
            vast.offers = {o["id"]: dict(o) for o in DEFAULT_OFFERS}
        reports = concurrently(fleet)
        if provider == "vast":
            live = [label for _, label in vast_live(vast)]
        else:
            with runpod.lock:
                live = [p["name"] for p in runpod.pods.values() if p["status"] in RUNPOD_LIVE]
        assert live == [f"respawn-t-job-g{n}"], f"round {n}: {live}"
        assert _launched(reports) == 1, f"round {n}"
        assert read_ledger(store).generation == n
        # The instance is reclaimed: the next round must replace it, once.
        if provider == "vast":
            (iid,) = [i for i, _ in vast_live(vast)]
            with vast.lock:
                vast.outbid(iid)
        else:
            with runpod.lock:
                (pod_id,) = [k for k, p in runpod.pods.items() if p["status"] in RUNPOD_LIVE]
                runpod.preempt(pod_id)


@pytest.mark.parametrize("provider", ["vast", "runpod"])
def test_ten_concurrent_ticks_leave_exactly_one_instance_on_the_clouds(
    tmp_path: Path, clouds: tuple, provider: str
) -> None:
    _cloud_rounds(tmp_path, clouds, provider, 4)


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["vast", "runpod"])
def test_ten_concurrent_ticks_fifty_rounds_on_the_clouds(
    tmp_path: Path, clouds: tuple, provider: str
) -> None:
    _cloud_rounds(tmp_path, clouds, provider, 50)


def _local_rounds(tmp_path: Path, n_rounds: int) -> None:
    path = write_local_fleet(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["runs"][0]["budget"] = {"max_launches_per_day": 1000, "max_spend_per_day": 1}
    # Each round reclaims the instance seconds after its launch, and the local provider
    # forgets it at once: no listing lag to wait out here.
    doc["runs"][0]["health"]["listing_grace"] = "0.01s"
    path.write_text(yaml.safe_dump(doc))
    fleet = load_config(path)
    provider = LocalProvider(tmp_path / "local", term_grace=2)
    provider.fleet = fleet.fleet
    store = store_of(fleet)
    try:
        for n in range(1, n_rounds + 1):
            reports = concurrently(fleet)
            live = provider.list_instances("job")
            assert [i.generation for i in live] == [n], f"round {n}: {live}"
            assert _launched(reports) == 1, f"round {n}"
            # Reclaimed like a spot instance: SIGTERM once the pod beats ("exiting" after).
            wait_for(lambda n=n: _beats(store, n))
            provider.terminate(live[0].id)
    finally:
        for inst in provider.list_instances("job"):
            provider.terminate(inst.id)


def _beats(store: CheckpointStore, generation: int) -> bool:
    hb: Heartbeat | None = store.read_heartbeat()
    return hb is not None and hb.generation == generation and hb.phase == "training"


def test_ten_concurrent_ticks_leave_exactly_one_local_instance(tmp_path: Path) -> None:
    _local_rounds(tmp_path, 3)


@pytest.mark.slow
def test_ten_concurrent_ticks_fifty_rounds_locally(tmp_path: Path) -> None:
    _local_rounds(tmp_path, 50)


# -- 7.11: SIGKILL the controller at each mutating call -----------------------------------------

KILLER = """
import os, signal, sys
from respawn.controller import act, lease
from respawn.controller.config import load_config
from respawn.controller.reconcile import tick
from respawn.provisioning import calls
from respawn.provisioning.vast import VastProvider

calls.BACKOFF_SECONDS = 0.0
lease.SETTLE_SECONDS = lease.LOCAL_SETTLE_SECONDS = 0.02
config, where, when = sys.argv[1:]
owner, name = {
    "ledger write": (act, "write_ledger"),
    "create": (VastProvider, "_create"),
    "terminate": (VastProvider, "_destroy"),
}[where]
real = getattr(owner, name)

def dying(*args, **kwargs):
    if when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    out = real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
    return out

setattr(owner, name, dying)
tick(load_config(config))
sys.exit(3)  # the kill point was never reached
"""


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("where", ["terminate", "ledger write", "create"])
def test_a_controller_killed_at_any_mutating_call_converges_on_the_next_tick(
    tmp_path: Path, clouds: tuple, where: str, when: str
) -> None:
    vast, _ = clouds
    path = cloud_fleet(tmp_path, clouds, ["vast"])
    fleet = load_config(path)
    tick(fleet)  # g1
    (g1,) = [i for i, _ in vast_live(vast)]
    vast.outbid(g1)  # the next tick terminates g1, claims g2, launches g2
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(path), where, when],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # The killed tick's lease is left behind: the next scheduled tick comes after it expired.
    later = utcnow() + timedelta(minutes=6)
    tick(fleet, now=later)
    store = store_of(fleet)
    ledger = read_ledger(store)
    billing = sorted(r["label"] for r in vast.instances.values())
    assert billing == [f"respawn-t-job-g{ledger.generation}"], billing  # one, nothing leaked
    assert ledger.generation in (2, 3)
    launch = ledger.launch_of(ledger.generation)
    assert launch is not None and launch.instance_id is not None  # accounted for
    # And it stays converged.
    report = tick(fleet, now=later + timedelta(minutes=1))[0]
    assert report.plan.actions == ()
