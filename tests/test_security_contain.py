"""A pod is contained (issue 19): with its run's store key it can spoil its own run's
checkpoints, nothing more. Each test is an attack made with the pod key, through real ticks
where the attack needs one."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest

from respawn.controller.config import load_config
from respawn.controller.cost import spend_in_window
from respawn.controller.reconcile import tick
from respawn.store.keys import Keys
from respawn.store.retention import MAX_MANIFEST_READS, MAX_PROBES
from respawn.store.schema import LatestPointer, utcnow
from respawn.store.store import CheckpointStore, FencedError, StoreError
from tests.conftest import make_step
from tests.fakes.runpod import FakeRunPod
from tests.fakes.vast import FakeVast
from tests.test_security_controller import SECRET, _fleet


@pytest.fixture
def clouds(
    clouds: tuple[FakeVast, FakeRunPod], monkeypatch: pytest.MonkeyPatch
) -> tuple[FakeVast, FakeRunPod]:
    monkeypatch.setenv("RESPAWN_LEDGER_SECRET", SECRET)
    return clouds


def _pod(tmp: Path) -> CheckpointStore:
    return CheckpointStore.open(f"file://{tmp / 'store'}", "job")


def _publish(pod: CheckpointStore, tmp: Path, steps: list[int], generation: int = 1) -> None:
    for step in steps:
        files = {f"ck/step_{step}/model.bin": f"model-{step}".encode() * 50}
        pod.publish(step, make_step(tmp, step, files), generation=generation, writer="pod")


def _plant_manifest(pod: CheckpointStore, step: int, generation: int, files: list) -> str:
    """A manifest as a hostile pod writes it: JSON, whatever our own model would refuse."""
    key = pod.keys.manifest_for(step, generation, "0badc0de")
    doc = {
        "schema": 1,
        "step": step,
        "files": files,
        "total_bytes": sum(f["size"] for f in files),
        "created_at": utcnow().isoformat(),
        "prefix": pod.keys.upload_dir(generation, "0badc0de"),
        "generation": generation,
        "writer": "pod",
    }
    pod.write_json(key, doc)
    return key


def _plant_pointer(pod: CheckpointStore, step: int, manifest: str, generation: int = 1) -> None:
    ptr = LatestPointer(
        run="job",
        step=step,
        manifest=manifest,
        generation=generation,
        written_at=utcnow(),
        writer="pod",
    )
    pod.write_json(pod.keys.latest, ptr.model_dump(mode="json", by_alias=True))


JUNK_FILE = {"path": "model.bin", "size": 10**9, "sha1": "0" * 40}


def test_junk_manifests_and_a_far_pointer_do_not_make_retention_delete_real_steps(
    tmp_path: Path, clouds: tuple
) -> None:
    """Attack (issue 19.2): without delete rights, a pod plants two junk manifests at steps
    10^15 and 10^15+1 and a pointer above them (10^18 before strict parsing); the next
    tick's retention deleted steps 10, 20, 30 (on B2, every version): they were below the
    pointer and not among the newest two."""
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod, target_step=1000))
    tick(fleet)  # generation 1 launched
    pod = _pod(tmp_path)
    _publish(pod, tmp_path, [10, 20, 30])
    far = 10**15
    _plant_manifest(pod, far, 1, [JUNK_FILE])  # names a file that is not there
    _plant_manifest(pod, far + 1, 1, [])  # verifies, but above target_step
    _plant_pointer(pod, far + 2, pod.keys.manifest_for(far + 2, 1, "0badc0de"))
    tick(fleet)
    tick(fleet)
    assert {10, 20, 30} <= set(pod.manifested_steps())


def test_manifests_of_a_generation_never_launched_do_not_count(
    tmp_path: Path, clouds: tuple
) -> None:
    """A pod of generation 1 writes well-formed, listed checkpoints as generation 99 above
    the real ones and points at them: the controller never launched generation 99."""
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod, target_step=1000))
    tick(fleet)
    pod = _pod(tmp_path)
    _publish(pod, tmp_path, [10, 20, 30])
    _publish(pod, tmp_path, [40, 50, 60], generation=99)
    tick(fleet)
    assert {10, 20, 30} <= set(pod.manifested_steps())


def test_retention_still_deletes_old_steps_of_an_honest_run(tmp_path: Path, clouds: tuple) -> None:
    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod, target_step=1000))
    tick(fleet)
    pod = _pod(tmp_path)
    _publish(pod, tmp_path, [10, 20, 30, 40, 50])
    tick(fleet)
    keep = fleet.run("job").pod.checkpoints.keep_last
    assert pod.manifested_steps() == [10, 20, 30, 40, 50][-keep:]
    assert json.loads(pod.backend.read_bytes(pod.keys.latest) or b"{}")["step"] == 50


class CountingBackend:
    """The far side of the wire, instrumented: it counts every call made to the bucket."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(*args: object, **kwargs: object) -> object:
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)

        return counted


def test_planted_step_directories_cost_bounded_reads_and_are_cleaned(tmp_path: Path) -> None:
    """Attack (issue 19.4): 2,000 manifest-less step directories cost one read each on every
    tick (26 s a tick at 200 ms a call; ~40k would outlast the job), and were never cleaned."""
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "job")
    _publish(store, tmp_path, [3000, 5000, 5001, 5002])
    planted = list(range(1, 4001, 2))  # 2,000 among real steps
    for step in planted:
        store.backend.write_bytes(store.keys.step_file(step, "g000001-0badc0de/x.bin"), b"x")
    counting = CountingBackend(store.backend)
    hostile = CheckpointStore(counting, "job")  # type: ignore[arg-type]
    later = time.time() + 7 * 3600  # old enough to be no upload still at work
    gone = hostile.gc(keep_last=2, now=later)
    reads = counting.calls.get("read_bytes", 0)
    assert reads <= MAX_MANIFEST_READS + MAX_PROBES + 10, counting.calls
    assert 3000 in set(gone) and len(gone) >= MAX_PROBES // 2  # the oldest planted go
    hostile.gc(keep_last=2, now=later, max_probes=10_000)  # as many ticks would
    left = {
        store.keys.parse_manifest_key(o.key) for o in store.backend.list(store.keys.checkpoints)
    }
    assert {p[0] for p in left if p} == {5001, 5002}
    assert len(store.backend.list(store.keys.checkpoints)) == 4  # 2 manifests, 2 files


def test_a_lease_overwritten_during_each_create_does_not_blind_the_breakers(
    tmp_path: Path, clouds: tuple
) -> None:
    """Attack (issue 19.3): the instance id reached the ledger only in the tick's last save,
    which re-checks the lease. A pod that overwrites the lease while its instance is created,
    then exits, got 12 launches under max_launches_per_day: 5, none counted, spend $0."""
    from tests.fakes.vast import DEFAULT_OFFERS

    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    assert fleet.run("job").budget.max_launches_per_day == 5
    lease = tmp_path / "store" / Keys("job").lease  # a fleet-wide pod key reaches it

    def pod_takes_the_lease() -> None:
        lease.write_text(json.dumps({"token": "pod", "holder": "pod", "expires_at": "x"}))

    vast.during_create = pod_takes_the_lease
    start = utcnow()
    for k in range(12):
        vast.offers = {o["id"]: dict(o) for o in DEFAULT_OFFERS}  # the market has more
        tick(fleet, now=start + timedelta(minutes=30 * k))
        vast.instances.clear()  # the pod exits: its instance is gone
    assert vast.count("create") + runpod.count("create") == 5
    report = tick(fleet, now=start + timedelta(hours=7))[0]
    assert report.plan.ledger.halted is not None
    assert "crash-loop breaker" in report.plan.ledger.halted
    # Each unrecorded claim is billed at the run's ceiling price until proven otherwise.
    spent = spend_in_window(report.plan.ledger.launches, start + timedelta(hours=7))
    assert spent >= 5 * 0.5 * fleet.run("job").resources.max_price_per_hour


# -- the controller's prefix ----------------------------------------------------------------


CONTROLLER_DOCS = ("ledger", "halt", "lease", "tick", "breaker", "ledger_seq", "halt_seq")


def test_a_per_run_pod_key_cannot_write_any_controller_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Design (issue 19): forging the ledger, halt order, lease or counters is impossible on
    B2 with a per-run pod key, not merely detected: they live under `_control/RUN/`, which
    the key's name prefix `PREFIX/RUN/` does not cover. The fence stays readable. (B2 also
    refuses the key's reads there; b2sdk's simulator does not check reads.)"""
    from respawn.store.b2_backend import B2Backend
    from tests.test_security_keys import URL, _keyed

    ctl_api, pod_api = _keyed(monkeypatch, ["listFiles", "readFiles", "writeFiles"], "fleet/run/")
    controller = CheckpointStore(B2Backend(ctl_api, "respawn-test", "fleet"), "run")
    controller.write_fence(3)
    pod = CheckpointStore(B2Backend.from_url(URL, api=pod_api, require_delete=False), "run")
    for name in CONTROLLER_DOCS:
        key = getattr(pod.keys, name)
        controller.backend.write_bytes(key, b"{}")
        with pytest.raises(StoreError):
            pod.backend.write_bytes(key, b"{}")
    assert pod.current_generation() == 3


def _to_legacy(store: CheckpointStore, names: tuple[str, ...]) -> None:
    """Put the controller's documents where a respawn from before `_control/` kept them,
    signed (and counted) there as that respawn did."""
    for name in names:
        key = getattr(store.keys, name)
        raw = store.backend.read_bytes(key)
        assert raw is not None, key
        store.backend.write_bytes(store.keys.legacy(key) or "", raw)
        counter = getattr(store.keys, f"{name}_seq")
        store.backend.inner.delete([key, counter])  # type: ignore[attr-defined]


def test_a_store_from_before_the_controller_prefix_is_moved_under_the_same_verification(
    tmp_path: Path, clouds: tuple
) -> None:
    from respawn.controller.ledger import write_halt
    from respawn.controller.model import HaltOrder
    from respawn.controller.stores import open_run_store

    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)  # g1
    store = open_run_store(fleet.store, "job")
    write_halt(store, HaltOrder(halted=False, reason="resumed", at=utcnow()))
    _to_legacy(store, ("ledger", "halt"))
    assert not (tmp_path / "store" / store.keys.ledger).exists()

    report = tick(fleet)[0]
    assert report.plan.verdict.health.value != "unknown", report.plan.verdict.reason
    assert report.plan.ledger.generation == 1 and vast.count("create") == 1
    for name in ("ledger", "halt"):
        key = getattr(store.keys, name)
        assert (tmp_path / "store" / key).exists()
        assert not (tmp_path / "store" / (store.keys.legacy(key) or "")).exists()
    assert tick(fleet)[0].plan.verdict.health.value != "unknown"


def test_a_forged_old_location_ledger_is_refused_not_moved(tmp_path: Path, clouds: tuple) -> None:
    """The migration reads the old location only as it was always read: a pod-written
    (unsigned) ledger there makes the run `unknown` and is not moved."""
    from respawn.controller.stores import open_run_store

    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)
    store = open_run_store(fleet.store, "job")
    _to_legacy(store, ("ledger",))
    legacy = tmp_path / "store" / (store.keys.legacy(store.keys.ledger) or "")
    doc = json.loads(legacy.read_text())
    doc.pop("mac")
    doc["launches"] = []
    legacy.write_text(json.dumps(doc))
    report = tick(fleet)[0]
    assert report.plan.verdict.health.value == "unknown"
    assert "signature" in report.plan.verdict.reason
    assert not (tmp_path / "store" / store.keys.ledger).exists()
    assert vast.count("create") == 1


# -- low: a made-up fence far ahead ---------------------------------------------------------


@pytest.mark.parametrize("source", ["fence", "unsigned ledger"])
def test_a_made_up_generation_far_ahead_does_not_fence_the_honest_pod(
    tmp_path: Path, source: str
) -> None:
    """Attack (issue 19, low): a fence, or (with the fence unreadable) an unsigned ledger where
    a store from before the fence keeps it, saying generation 10^9 stopped the honest pod."""
    pod = _pod(tmp_path)
    pod.write_fence(1)
    if source == "fence":
        doc = {"run": "job", "generation": 10**9, "at": utcnow().isoformat()}
        pod.write_json(pod.keys.fence, doc)
    else:
        pod.write_json(pod.keys.fence, {"generation": "garbage"})
        pod.write_json(pod.keys.legacy(pod.keys.ledger) or "", {"generation": 10**9})
    _publish(pod, tmp_path, [10])
    assert pod.manifested_steps() == [10]
    pod.write_fence(2)  # a real claim still fences it
    with pytest.raises(FencedError):
        _publish(pod, tmp_path, [20])


# -- low: a manifest no filesystem can hold -------------------------------------------------


def _step_with(store: CheckpointStore, step: int, files: dict[str, bytes]) -> str:
    """A step a pod wrote with these files (uploaded as named), pointed at."""
    import hashlib

    token = "0badc0de"
    prefix = store.keys.upload_dir(1, token)
    entries = []
    for path, data in files.items():
        if max(len(part.encode()) for part in path.split("/")) <= 250:  # what B2 can hold
            store.backend.write_bytes(store.keys.step_file(step, prefix + path), data)
        entries.append({"path": path, "size": len(data), "sha1": hashlib.sha1(data).hexdigest()})
    key = _plant_manifest(store, step, 1, entries)
    _plant_pointer(store, step, key)
    return key


@pytest.mark.parametrize(
    "files",
    [
        {"ck/" + "x" * 300: b"long"},  # one name over 255 bytes
        {"ck/a": b"file", "ck/a/b": b"under it"},  # a file and a directory of one name
    ],
    ids=["name-too-long", "file-directory-clash"],
)
def test_a_manifest_no_filesystem_can_hold_is_quarantined_and_restore_falls_back(
    tmp_path: Path, files: dict[str, bytes]
) -> None:
    """Restore crashed with OSError (ENAMETOOLONG, ENOTDIR) instead of quarantining the step
    and restoring the one before."""
    from respawn.store.b2_backend import B2Backend
    from tests.conftest import b2_simulator

    api, _ = b2_simulator()  # B2 holds any name; the pod's disk cannot
    store = CheckpointStore(B2Backend(api, "respawn-test", "fleet"), "job")
    _publish(store, tmp_path, [10])
    bad = _step_with(store, 20, files)
    pulled = store.pull(tmp_path / "dest", quiet=True, repair_as=(1, "pod"))
    assert pulled is not None and pulled.step == 10
    assert bad in store.quarantined()


def test_a_name_of_255_bytes_still_publishes_and_restores(tmp_path: Path) -> None:
    """The bound is the filesystem's, not lower: a trainer's 255-byte file name round-trips
    (the download's temporary name must not push it over)."""
    store = _pod(tmp_path)
    name = "ck/step_10/" + "n" * 255
    store.publish(10, make_step(tmp_path, 10, {name: b"w"}), generation=1, writer="pod")
    pulled = store.pull(tmp_path / "dest", quiet=True)
    assert pulled is not None and (tmp_path / "dest" / name).read_bytes() == b"w"


def test_ledger_repair_of_a_store_never_moved_keeps_the_old_ledgers_halt(
    tmp_path: Path, clouds: tuple
) -> None:
    """A store from before `_control/` whose old-location ledger no longer verifies (its
    counter damaged): `ledger repair` rebuilds from the old copy too, so its halt stands."""
    from respawn.controller.ledger import read_ledger, write_ledger
    from respawn.controller.repair import repair_ledger
    from respawn.controller.stores import open_run_store

    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)
    store = open_run_store(fleet.store, "job")
    ledger = read_ledger(store)
    halted = ledger.model_copy(update={"halted": "crash-loop breaker", "halted_at": utcnow()})
    write_ledger(store, halted, ledger.version)
    _to_legacy(store, ("ledger",))
    legacy_seq = tmp_path / "store" / (store.keys.legacy(store.keys.ledger_seq) or "")
    legacy_seq.write_text("{damaged")
    repaired, _ = repair_ledger(store, [], utcnow())
    assert repaired.halted == "crash-loop breaker"


def test_a_read_only_tick_reads_an_old_location_ledger_and_moves_nothing(
    tmp_path: Path, clouds: tuple
) -> None:
    from respawn.controller.reconcile import Mode
    from respawn.controller.stores import open_run_store

    vast, runpod = clouds
    fleet = load_config(_fleet(tmp_path, vast, runpod))
    tick(fleet)
    store = open_run_store(fleet.store, "job")
    _to_legacy(store, ("ledger",))
    report = tick(fleet, mode=Mode.OBSERVE)[0]
    assert report.plan.ledger.generation == 1, report.plan.verdict.reason
    assert not (tmp_path / "store" / store.keys.ledger).exists()
    assert (tmp_path / "store" / (store.keys.legacy(store.keys.ledger) or "")).exists()


def test_an_old_location_halt_planted_after_the_move_is_never_read(tmp_path: Path) -> None:
    """Without a ledger secret nothing is signed, so the prefix is the only fence: once the
    run's ledger is under `_control/`, a halt order a pod key writes where respawn kept it
    before is neither moved nor obeyed (found by review: it stopped the run)."""
    from tests.test_reconcile import write_fleet

    fleet = load_config(write_fleet(tmp_path))
    try:
        first = tick(fleet)[0]
        assert first.plan.ledger.generation == 1, first.plan.verdict.reason
        pod = _pod_store_of(tmp_path)
        planted = pod.keys.legacy(pod.keys.halt) or ""
        halt = {"schema": 1, "halted": True, "reason": "pod says stop", "at": utcnow().isoformat()}
        pod.write_json(planted, halt)
        report = tick(fleet)[0]
        verdict = report.plan.verdict
        assert verdict.health.value not in ("halted", "stopped", "unknown"), verdict.reason
        assert (tmp_path / "store" / planted).exists()  # not moved
        assert not (tmp_path / "store" / pod.keys.halt).exists()
    finally:
        from respawn.controller.cli import main

        main(["terminate", "-c", str(tmp_path / "fleet.yaml"), "--run", "job"])


def _pod_store_of(tmp: Path) -> CheckpointStore:
    return CheckpointStore.open(f"file://{tmp / 'store'}", "job")
