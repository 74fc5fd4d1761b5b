"""Whole ticks against the real local provider and file store (processes on this machine)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from respawn.controller.config import FleetConfig, load_config
from respawn.controller.reconcile import tick
from respawn.controller.stores import open_run_store
from respawn.provisioning.local import LocalProvider
from respawn.store.keys import Keys
from respawn.store.schema import utcnow
from tests.conftest import run_cli, wait_for

SLEEPER = '{python} -c "import sys, time; time.sleep(120)" {resume_step}'


def write_fleet(tmp: Path, command: str = SLEEPER, providers: list[str] | None = None) -> Path:
    doc = {
        "fleet_id": "t",
        "store": {"url": f"file://{tmp / 'store'}"},
        "providers": {"local": {"state_dir": str(tmp / "local")}},
        "runs": [
            {
                "name": "job",
                "health": {"startup_grace": "1m", "stall_after": "5m", "dead_after": "2m"},
                "pod": {
                    "image": "local-has-no-image:but-clouds-need-one",
                    "command": command,
                    "checkpoints": {"sources": [{"path": "ck/step_{step}", "marker": "DONE"}]},
                    "sync_interval": "0.2s",
                    "heartbeat_interval": "0.2s",
                    "term_grace": "2s",
                },
                "resources": {"gpu_count": 0, "max_price_per_hour": 1},
                "providers": providers or ["local"],
                "budget": {"max_launches_per_day": 4, "max_spend_per_day": 1},
            }
        ],
    }
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def fleet_path(tmp_path: Path) -> Iterator[Path]:
    path = write_fleet(tmp_path)
    yield path
    provider = LocalProvider(tmp_path / "local", term_grace=2)
    for inst in provider.list_instances("job"):
        provider.terminate(inst.id)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def local(fleet: FleetConfig) -> LocalProvider:
    assert fleet.providers.local is not None
    provider = LocalProvider(fleet.providers.local.state_dir, term_grace=2)
    provider.fleet = fleet.fleet
    return provider


def test_two_ticks_back_to_back_launch_one_instance(fleet_path: Path) -> None:
    fleet = load_config(fleet_path)
    first = tick(fleet)[0]
    second = tick(fleet)[0]
    assert [a.kind for a in first.plan.actions] == ["provision"]
    assert all(r.ok for r in first.results)
    assert second.plan.verdict.health.value == "starting"
    assert second.plan.actions == ()
    assert len(local(fleet).list_instances("job")) == 1


def test_reconcile_json_document(fleet_path: Path) -> None:
    proc = run_cli("reconcile", "-c", str(fleet_path), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    (run,) = doc["runs"]
    assert set(run) >= {"run", "health", "reason", "step", "instances", "actions"}
    assert run["run"] == "job" and run["health"] == "new" and run["reason"] == "never launched"
    (action,) = run["actions"]
    assert action["kind"] == "provision" and action["ok"] is True and action["generation"] == 1

    proc = run_cli("status", "-c", str(fleet_path), "--json")
    (run,) = json.loads(proc.stdout)["runs"]
    assert run["health"] == "starting"
    (inst,) = run["instances"]
    assert inst["name"] == "respawn-t-job-g1" and inst["state"] == "running"


def test_dry_run_changes_nothing(fleet_path: Path) -> None:
    proc = run_cli("reconcile", "-c", str(fleet_path), "--dry-run")
    assert proc.returncode == 0
    assert "would provision g1" in proc.stdout
    fleet = load_config(fleet_path)
    assert local(fleet).list_instances("job") == []
    assert not (Path(fleet.store.url.removeprefix("file://")) / Keys("job").ledger).exists()


def test_unreadable_pointer_before_any_publish_is_set_aside_and_nothing_is_destroyed(
    fleet_path: Path,
) -> None:
    fleet = load_config(fleet_path)
    tick(fleet)
    (inst,) = local(fleet).list_instances("job")
    run_dir = Path(fleet.store.url.removeprefix("file://")) / "job"
    wait_for(lambda: '"training"' in _read(run_dir / "heartbeat.json"))
    (run_dir / "latest.json").write_text("{garbage")
    proc = run_cli("reconcile", "-c", str(fleet_path), "--json")
    assert proc.returncode == 0, proc.stderr
    (run,) = json.loads(proc.stdout)["runs"]
    assert run["health"] != "unknown", run["reason"]
    assert "repair-pointer" in [a["kind"] for a in run["actions"]]
    assert "terminate" not in [a["kind"] for a in run["actions"]]
    assert [p.name.split(".corrupt-")[0] for p in run_dir.glob("*.corrupt-*")] == ["latest.json"]
    assert [i.id for i in local(fleet).list_instances("job")] == [inst.id]


def test_failed_provider_listing_is_unknown_not_empty(tmp_path: Path) -> None:
    # vast is the first choice (a fallback without its key is skipped, see test_preflight)
    fleet = load_config(write_fleet(tmp_path, providers=["vast", "local"]))
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown"
    assert "vast" in report.plan.verdict.reason
    assert [a.kind for a in report.plan.actions] == ["alert"]
    assert local(fleet).list_instances("job") == []


def test_dead_instance_is_replaced_with_next_generation(fleet_path: Path) -> None:
    fleet = load_config(fleet_path)
    tick(fleet)
    provider = local(fleet)
    (first,) = provider.list_instances("job")
    provider.signal(first.id, 9)
    wait_for(lambda: not provider.list_instances("job"))
    # Gone from the listing: dead once the listing's lag cannot explain it any more.
    report = tick(fleet, now=utcnow() + fleet.runs[0].health.listing_grace)[0]
    assert report.plan.verdict.health.value == "dead"
    (second,) = provider.list_instances("job")
    assert second.generation == 2 and second.id != first.id


def test_terminate_halts_the_run_and_kills_instances(fleet_path: Path) -> None:
    fleet = load_config(fleet_path)
    tick(fleet)
    proc = run_cli("terminate", "-c", str(fleet_path), "--run", "job")
    assert proc.returncode == 0, proc.stderr
    assert "terminated local:" in proc.stdout
    assert local(fleet).list_instances("job") == []
    report = tick(fleet)[0]  # the next scheduled tick must not launch again
    assert report.plan.verdict.health.value == "stopped"
    assert "stopped by hand" in report.plan.verdict.reason
    assert local(fleet).list_instances("job") == []
    # A run a person stopped is not an alert every tick: reconcile exits 0.
    assert run_cli("reconcile", "-c", str(fleet_path)).returncode == 0
    assert run_cli("resume", "-c", str(fleet_path), "--run", "job").returncode == 0
    assert tick(fleet)[0].plan.verdict.health.value == "dead"


class _StuckProvider(LocalProvider):
    """A cloud whose destroy call fails (the far side refuses), and which keeps listing its
    instances as running (the fenced pod itself may exit at once: the cloud bills on)."""

    def _alive(self, rec: dict[str, object]) -> list[int]:
        return [int(rec["sid"])]  # type: ignore[arg-type]

    def terminate(self, instance_id: str) -> None:
        from respawn.provisioning.base import ProviderError

        raise ProviderError("destroy refused: 503")


def test_failed_termination_cancels_the_launch(fleet_path: Path) -> None:
    from respawn.controller.act import act
    from respawn.controller.decide import decide
    from respawn.controller.ledger import read_ledger
    from respawn.controller.observe import observe
    from respawn.store.schema import utcnow

    fleet = load_config(fleet_path)
    tick(fleet)
    run = fleet.runs[0]
    assert fleet.providers.local is not None
    stuck = _StuckProvider(fleet.providers.local.state_dir)
    store = open_run_store(fleet.store, run.name)
    # Generation 1 is up; pretend the ledger moved on so it is a stray of a dead generation.
    ledger = read_ledger(store)
    from respawn.controller.ledger import write_ledger

    write_ledger(store, ledger.model_copy(update={"generation": 2}), ledger.version)
    obs = observe(run, store, {"local": stuck})
    plan = decide(run, obs, utcnow())
    assert [a.kind for a in plan.actions] == ["terminate", "provision"]
    results = act(plan, run, fleet, store, {"local": stuck}, obs.ledger)
    assert [r.ok for r in results if r.action.kind != "notify"] == [False, False]
    assert "never two at once" in results[1].detail
    assert [i.generation for i in stuck.list_instances("job")] == [1]  # no second instance
    after = read_ledger(store)
    assert after.generation == 3 and after.launch_of(3) is None  # fenced, but not counted


def test_diagnose_shows_the_pod_log(fleet_path: Path) -> None:
    fleet = load_config(fleet_path)
    tick(fleet)
    run_dir = Path(fleet.store.url.removeprefix("file://")) / "job"
    wait_for(lambda: '"training"' in _read(run_dir / "heartbeat.json"))
    proc = run_cli("diagnose", "-c", str(fleet_path), "--run", "job")
    assert proc.returncode == 0, proc.stderr
    assert "respawn-t-job-g1 (running)" in proc.stdout
    assert "starting trainer" in proc.stdout and "GiB free" in proc.stdout


def test_terminate_removes_a_local_instance_disk(tmp_path: Path) -> None:
    from respawn.provisioning.base import LaunchSpec, Resources
    from respawn.provisioning.local import LocalProvider

    provider = LocalProvider(tmp_path / "state", term_grace=2)
    offer = provider.offers(Resources(max_price_per_hour=1))[0]
    spec = LaunchSpec(run="r", generation=1, image=None, disk_gb=1, max_price_per_hour=1, env={})
    inst = provider.launch(offer, spec)
    disk = Path(str(provider.record(inst.id)["disk"]))  # type: ignore[index]
    assert disk.is_dir()
    provider.terminate(inst.id)
    assert not disk.exists(), "a terminated instance must not leave its disk behind"
    assert provider.list_all() == []
