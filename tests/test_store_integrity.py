"""Checkpoint store integrity (issue 8): one bad byte never poisons every step, a fenced writer
never overwrites a published step, gc on a partial listing never deletes what it must keep,
corrupt small documents are repaired, fallbacks are quarantined and healed."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from respawn.store.backend import Backend, ObjectInfo
from respawn.store.file_backend import FileBackend
from respawn.store.schema import Heartbeat, utcnow
from respawn.store.store import (
    BackwardsError,
    CheckpointStore,
    FencedError,
    NothingVerifiesError,
    StoreError,
    StoreUnavailableError,
)
from tests.conftest import b2_simulator, make_step, run_cli
from tests.fakes.memory_store import MemoryBackend

CASES = 200


def file_store(root: Path, run: str = "r") -> CheckpointStore:
    return CheckpointStore(FileBackend.from_url(f"file://{root}"), run, workers=2)


def stored_objects(store: CheckpointStore) -> dict[str, tuple[int, str]]:
    """Every object a manifest names: key -> (step, manifest path)."""
    out: dict[str, tuple[int, str]] = {}
    for step, refs in store.manifest_refs().items():
        for ref in refs:
            m = store.read_manifest_key(ref.key)
            assert m is not None
            for f in m.files:
                out[store.keys.object_key(m, f.path)] = (step, f.path)
    return out


# -- 8.1 bit rot ------------------------------------------------------------------------------


def _random_steps(rng: random.Random) -> dict[int, dict[str, bytes]]:
    names = [f"ckpt/step_{{s}}/f{i}.bin" for i in range(rng.randint(1, 4))]
    content = {n: rng.randbytes(rng.randint(1, 40)) for n in names}
    steps: dict[int, dict[str, bytes]] = {}
    for s in range(1, rng.randint(2, 5) + 1):
        for n in names:
            if s > 1 and rng.random() < 0.4:  # changed: sometimes the same size, new bytes
                old = content[n]
                content[n] = rng.randbytes(len(old) if rng.random() < 0.5 else rng.randint(1, 40))
        steps[s] = {n.format(s=s): data for n, data in content.items()}
    return steps


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Path:
    """tmpfs where there is one: the file store fsyncs every object, thousands here."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="respawn-test-", dir=shm))
        yield d  # type: ignore[misc]
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path  # type: ignore[misc]


def test_bit_rot_never_spreads_and_pull_restores_newest_provable_step(fast_tmp: Path) -> None:
    """Publish N steps with random unchanged files, flip a byte of one random stored object:
    pull restores the newest step whose every file has an intact copy somewhere."""
    for case in range(CASES):
        rng = random.Random(case)
        root = fast_tmp / f"c{case}"
        store = file_store(root / "store")
        steps = _random_steps(rng)
        for s, files in steps.items():
            store.publish(s, make_step(root, s, files), generation=1, writer="t")
        objects = stored_objects(store)
        victim = rng.choice(sorted(objects))
        path = root / "store" / victim
        data = bytearray(path.read_bytes())
        pos = rng.randrange(len(data))
        with open(path, "r+b") as f:  # in place, as rot does: a hard-linked twin rots too
            f.seek(pos)
            f.write(bytes([data[pos] ^ (1 << rng.randrange(8))]))
        intact = {steps[s][p] for k, (s, p) in objects.items() if k != victim}
        provable = [s for s, files in steps.items() if set(files.values()) <= intact]
        dest = root / "dest"
        if not provable:
            with pytest.raises(NothingVerifiesError):
                store.pull(dest, quiet=True)
            continue
        result = store.pull(dest, quiet=True)
        assert result is not None, case
        assert result.step == max(provable), (case, victim, result.rejected)
        for rel, want in steps[result.step].items():
            assert (dest / rel).read_bytes() == want, (case, rel)


def test_b2_copy_refuses_a_replaced_object_and_uploads_instead(tmp_path: Path) -> None:
    """The stored object under the previous step's name was replaced: a server-side copy would
    carry the wrong bytes into the new step; the backend re-uploads from local disk."""
    from respawn.store.b2_backend import B2Backend

    api, _sim = b2_simulator()
    store = CheckpointStore(B2Backend(api, "respawn-test", "p"), "r")
    frozen = b"F" * 3000
    store.publish(1, make_step(tmp_path, 1, {"frozen.bin": frozen, "m": b"1"}), 1, "t")
    m1 = store.read_manifest(1)
    assert m1 is not None
    store.backend.write_bytes(store.keys.object_key(m1, "frozen.bin"), b"X" * 3000)
    res = store.publish(2, make_step(tmp_path, 2, {"frozen.bin": frozen, "m": b"2"}), 1, "t")
    assert res.bytes_copied == 0 and res.bytes_sent == 3001
    result = store.pull(tmp_path / "dest", quiet=True)
    assert result is not None and result.step == 2
    assert (tmp_path / "dest/frozen.bin").read_bytes() == frozen


def test_b2_large_file_copy_is_proven_by_its_recorded_sha1(tmp_path: Path) -> None:
    from respawn.store.b2_backend import B2Backend

    api, _sim = b2_simulator()
    store = CheckpointStore(B2Backend(api, "respawn-test", "p"), "r")
    big = bytes(range(256)) * 40  # a multi-part large file on the simulator: no content sha1
    for s in (1, 2, 3):
        res = store.publish(s, make_step(tmp_path, s, {"w.bin": big, "m": bytes([s])}), 1, "t")
    assert res.bytes_copied == len(big)  # copied twice over: each copy carries its sha1
    assert store.pull(tmp_path / "dest", quiet=True).step == 3  # type: ignore[union-attr]


# -- 8.2 two writers --------------------------------------------------------------------------


class PausingBackend:
    """g1's side of the wire: blocks before its k-th call until the test lets it go on."""

    def __init__(self, inner: Backend, pause_at: int) -> None:
        self.inner = inner
        self.url = inner.url
        self.calls = 0
        self.pause_at = pause_at
        self.paused = threading.Event()
        self.resume = threading.Event()

    def _gate(self) -> None:
        self.calls += 1
        if self.calls == self.pause_at:
            self.paused.set()
            assert self.resume.wait(10)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def gated(*a: Any, **kw: Any) -> Any:
            self._gate()
            return attr(*a, **kw)

        return gated


def test_fenced_writer_never_gets_its_bytes_restored(tmp_path: Path) -> None:
    """g1 stalls at a random call of its uploads; meanwhile the controller launches g2, which
    restores and publishes. Whatever g1 does when it wakes, pull restores g2's bytes."""
    for case in range(CASES):
        rng = random.Random(1000 + case)
        root = tmp_path / f"c{case}"
        inner = MemoryBackend()
        g1_backend = PausingBackend(inner, pause_at=rng.randint(1, 45))
        g1 = CheckpointStore(g1_backend, "r", workers=1)  # type: ignore[arg-type]
        g2 = CheckpointStore(inner, "r", workers=1)
        g1_steps = [10, rng.choice([20, 25, 30])]
        g2_step = rng.choice([5, 10, 20, 30])

        def g1_files(s: int) -> dict[str, bytes]:
            return {f"w/step_{s}/model.bin": b"g1" * 10, f"w/step_{s}/state": f"g1-{s}".encode()}

        def g1_run(g1: CheckpointStore, gate: PausingBackend, steps: list[int], at: Path) -> None:
            try:
                for s in steps:
                    g1.publish(s, make_step(at, s, g1_files(s)), 1, "g1")
            except (FencedError, StoreError):
                pass
            finally:
                gate.paused.set()

        t = threading.Thread(target=g1_run, args=(g1, g1_backend, g1_steps, root / "g1"))
        t.start()
        assert g1_backend.paused.wait(10)
        # The controller launches g2; its pod announces itself, restores, then publishes.
        g2.write_json(g2.keys.ledger, {"generation": 2})
        g2.write_heartbeat(
            Heartbeat(run="r", generation=2, writer="g2", at=utcnow(), phase="restoring")
        )
        g2_files = {f"w/step_{g2_step}/model.bin": b"g2" * 10, f"w/step_{g2_step}/state": b"g2"}
        g2.publish(g2_step, make_step(root / "g2", g2_step, g2_files), 2, "g2")
        g1_backend.resume.set()
        t.join(10)
        assert not t.is_alive()
        result = g2.pull(root / "dest", quiet=True)
        assert result is not None and result.step == g2_step, (case, g1_backend.pause_at)
        for rel, data in g2_files.items():
            assert (root / "dest" / rel).read_bytes() == data, (case, g1_backend.pause_at)


def test_pointer_written_by_an_older_generation_is_reclaimed(tmp_path: Path) -> None:
    store = file_store(tmp_path / "store")
    store.publish(20, make_step(tmp_path / "a", 20, {"x/step_20/a": b"old"}), 1, "g1")
    # g2 (newer) publishes its own step 20: allowed, and recorded.
    store.publish(20, make_step(tmp_path / "b", 20, {"x/step_20/a": b"new"}), 2, "g2")
    assert store.read_pointer().generation == 2  # type: ignore[union-attr]
    assert [e.kind for e in store.repairs()] == ["pointer-reclaimed"]
    assert store.pull(tmp_path / "d", quiet=True).step == 20  # type: ignore[union-attr]
    assert (tmp_path / "d/x/step_20/a").read_bytes() == b"new"


# -- 8.3 gc under partial listings ------------------------------------------------------------


class DroppingBackend:
    """An eventually consistent listing: each listed object is missing with probability p."""

    def __init__(self, inner: Backend, rng: random.Random, p: float = 0.15) -> None:
        self.inner = inner
        self.url = inner.url
        self.rng = rng
        self.p = p

    def list(self, prefix: str) -> list[ObjectInfo]:
        return [o for o in self.inner.list(prefix) if self.rng.random() >= self.p]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_gc_under_partial_listings_never_deletes_a_protected_step(tmp_path: Path) -> None:
    deleted_any = 0
    for case in range(CASES):
        rng = random.Random(5000 + case)
        root = tmp_path / f"c{case}"
        truth = CheckpointStore(MemoryBackend(), "r")  # type: ignore[arg-type]
        n = rng.randint(3, 9)
        for s in range(1, n + 1):
            truth.publish(s, make_step(root, s, {f"c/step_{s}/m": bytes([s]) * 8}), 1, "t")
            if rng.random() < 0.3:  # an upload that crashed before its manifest
                junk = f"g000001-{rng.randbytes(8).hex()}/c/step_{s}/m"
                truth.backend.write_bytes(truth.keys.step_file(s, junk), b"junk")
        pointer_step = n
        if rng.random() < 0.3:
            pointer_step = rng.randint(2, n)
            truth.rollback_pointer(pointer_step, 1, "controller")
        keep_last = rng.randint(2, 4)
        keep_every = rng.choice([None, 2, 3])
        older = [s for s in range(1, n + 1) if s < pointer_step]
        protected = {pointer_step, *older[-(keep_last - 1) :]}
        protected |= {s for s in range(pointer_step + 1, n + 1)}
        if keep_every:
            protected |= {s for s in range(1, n + 1) if s % keep_every == 0}
        flaky = CheckpointStore(DroppingBackend(truth.backend, rng), "r")  # type: ignore[arg-type]
        later = time.time() + rng.choice([0, 7 * 3600])  # leftovers young or old
        for _ in range(rng.randint(1, 3)):
            deleted_any += bool(flaky.gc(keep_last, keep_every=keep_every, now=later))
        for s in sorted(protected):
            key = truth.manifest_key(s)
            assert key is not None, (case, s, protected)
            assert truth.verify(key) is None, (case, s)
    assert deleted_any > CASES // 4  # the property is not vacuous: gc does delete


def test_gc_reads_a_manifest_the_listing_dropped(tmp_path: Path) -> None:
    """The newest older step's MANIFEST is missing from the listing: it is still kept, and so
    is the step below it (what the listing shows is all gc verifies against)."""
    truth = file_store(tmp_path / "store")
    for s in range(1, 6):
        truth.publish(s, make_step(tmp_path, s, {f"c/step_{s}/m": bytes([s])}), 1, "t")
    hidden = truth.manifest_key(4)

    class HideManifest(DroppingBackend):
        def list(self, prefix: str) -> list[ObjectInfo]:
            return [o for o in self.inner.list(prefix) if o.key != hidden]

    flaky = CheckpointStore(HideManifest(truth.backend, random.Random(0)), "r")  # type: ignore[arg-type]
    assert flaky.gc(keep_last=2) == [1, 2]
    assert truth.manifested_steps() == [3, 4, 5]


def test_gc_collects_crash_left_temporaries_after_an_age(tmp_path: Path) -> None:
    store = file_store(tmp_path / "store")
    for s in (1, 2):
        store.publish(s, make_step(tmp_path, s, {f"c/step_{s}/m": b"x"}), 1, "t")
    step_dir = tmp_path / "store/r/checkpoints/step_000002"
    old = step_dir / ".respawn-tmp-m.deadbeef"
    young = step_dir / ".respawn-tmp-m.cafebabe"
    old.write_bytes(b"crashed upload")
    young.write_bytes(b"an upload at work")
    an_hour = time.time() - 3600
    os.utime(old, (an_hour - 86400, an_hour - 86400))
    store.gc(keep_last=2, leftover_age_s=6 * 3600)
    assert not old.exists() and young.exists()


def test_gc_keeps_a_manifestless_step_while_its_upload_may_be_at_work(tmp_path: Path) -> None:
    store = file_store(tmp_path / "store")
    for s in (1, 2, 3):
        store.publish(s, make_step(tmp_path, s, {f"c/step_{s}/m": b"x"}), 1, "t")
    store.backend.write_bytes(store.keys.step_file(1, "g000002-0123456789abcdef/c/m"), b"x")
    store.backend.delete([store.manifest_key(1)])  # type: ignore[list-item]
    assert store.gc(keep_last=2) == []  # step 1 has no manifest but a fresh upload
    assert store.gc(keep_last=2, now=time.time() + 7 * 3600) == [1]


# -- 8.4 corrupt small documents --------------------------------------------------------------


def test_corrupt_heartbeat_neither_fences_nor_wedges_the_pod(tmp_path: Path) -> None:
    store = file_store(tmp_path / "store")
    store.backend.write_bytes(store.keys.heartbeat, b"{not json")
    store.check_fence(1)  # was: "heartbeat.json is not valid JSON", forever
    store.publish(1, make_step(tmp_path, 1, {"c/step_1/m": b"x"}), 1, "pod")
    store.write_heartbeat(
        Heartbeat(run="r", generation=1, writer="pod", at=utcnow(), phase="training")
    )
    assert store.read_heartbeat() is not None


def test_corrupt_pointer_is_rebuilt_from_newest_verified_step(tmp_path: Path) -> None:
    store = file_store(tmp_path / "store")
    for s in (1, 2, 3):
        store.publish(s, make_step(tmp_path, s, {f"c/step_{s}/m": bytes([s])}), 1, "t")
    m3 = store.read_manifest(3)
    assert m3 is not None
    store.backend.write_bytes(store.keys.object_key(m3, "c/step_3/m"), b"\xff")
    store.backend.write_bytes(store.keys.latest, b'{"schema": 1, "run": "r", "ste')
    with pytest.raises(StoreError, match="not valid JSON"):
        store.pull(tmp_path / "ro", quiet=True)  # a reader does not guess
    result = store.pull(tmp_path / "d", quiet=True, repair_as=(2, "pod-g2"))
    assert result is not None and result.step == 2 and result.repaired_pointer
    pointer = store.read_pointer()
    assert pointer is not None and (pointer.step, pointer.generation) == (2, 2)
    assert "pointer-rebuilt" in [e.kind for e in store.repairs()]


def test_publish_over_a_corrupt_pointer_repairs_it(tmp_path: Path) -> None:
    store = file_store(tmp_path / "store")
    store.publish(1, make_step(tmp_path, 1, {"c/step_1/m": b"a"}), 1, "t")
    store.backend.write_bytes(store.keys.latest, b"[]")
    with pytest.raises(BackwardsError, match="not a JSON object"):
        store.publish(1, make_step(tmp_path / "again", 1, {"c/step_1/m": b"a"}), 1, "t")
    store.publish(2, make_step(tmp_path, 2, {"c/step_2/m": b"b"}), 1, "t")
    assert store.read_pointer().step == 2  # type: ignore[union-attr]
    assert [e.kind for e in store.repairs()] == ["pointer-rebuilt"]


# -- 8.5 fallback visible and healed ----------------------------------------------------------


def test_fallback_quarantines_the_step_and_the_new_generation_republishes_it(
    tmp_path: Path,
) -> None:
    store = file_store(tmp_path / "store")
    for s in (1100, 1200):
        store.publish(s, make_step(tmp_path, s, {f"c/step_{s}/m": str(s).encode()}), 1, "g1")
    bad = store.read_pointer().manifest  # type: ignore[union-attr]
    m = store.read_manifest(1200)
    store.backend.write_bytes(store.keys.object_key(m, "c/step_1200/m"), b"rot!")  # type: ignore[arg-type]
    result = store.pull(tmp_path / "d", quiet=True, repair_as=(2, "g2"))
    assert result is not None and result.step == 1100 and result.fell_back
    assert list(store.quarantined()) == [bad]
    assert store.read_pointer().step == 1100  # type: ignore[union-attr]
    # g2 trains on to 1200 and publishes its own good copy (was: "not newer than 1200").
    store.publish(1200, make_step(tmp_path / "g2", 1200, {"c/step_1200/m": b"g2"}), 2, "g2")
    assert store.pull(tmp_path / "d2", quiet=True).step == 1200  # type: ignore[union-attr]
    assert (tmp_path / "d2/c/step_1200/m").read_bytes() == b"g2"
    # The quarantined copy is kept for inspection and counts for nothing in retention.
    for s in (1300, 1400):
        store.publish(s, make_step(tmp_path, s, {f"c/step_{s}/m": b"n"}), 2, "g2")
    store.gc(keep_last=2)
    assert store.backend.read_bytes(bad) is not None
    proc = run_cli("ckpt", "ls", "--store", f"file://{tmp_path / 'store'}", "--run", "r")
    assert proc.returncode == 0, proc.stderr
    assert "quarantined: step 1200" in proc.stdout and "repair:" in proc.stdout


# -- 8.7 the CLI ------------------------------------------------------------------------------


def test_ckpt_ls_verify_marks_the_step_that_fails(tmp_path: Path) -> None:
    store = file_store(tmp_path / "store", run="x")
    for s in (1, 2):
        store.publish(s, make_step(tmp_path, s, {f"c/step_{s}/m": bytes([s])}), 1, "t")
    m = store.read_manifest(1)
    store.backend.write_bytes(store.keys.object_key(m, "c/step_1/m"), b"?")  # type: ignore[arg-type]
    url = f"file://{tmp_path / 'store'}"
    proc = run_cli("ckpt", "ls", "--store", url, "--run", "x", "--verify", "--json")
    rows = {r["step"]: r for r in json.loads(proc.stdout)["steps"]}
    assert rows[2]["verified"] and not rows[1]["verified"] and "sha1" in rows[1]["why"]
    assert proc.returncode == 1
    proc = run_cli("ckpt", "ls", "--store", url, "--run", "x", "--verify")
    assert "FAILS" in proc.stdout and "verified" in proc.stdout


def test_ckpt_ls_on_a_missing_store_or_run_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "store"
    proc = run_cli("ckpt", "ls", "--store", f"file://{missing}", "--run", "x")
    assert proc.returncode == 2 and "no store" in proc.stderr
    assert not (tmp_path / "no").exists()
    (tmp_path / "store").mkdir()
    proc = run_cli("ckpt", "ls", "--store", f"file://{tmp_path / 'store'}", "--run", "typo")
    assert proc.returncode == 2 and "'typo' has nothing" in proc.stderr
    assert os.listdir(tmp_path / "store") == []


def _prime_rl_step(workdir: Path, step: int) -> None:
    for sub, name in (("weights", "model.bin"), ("checkpoints", "state.pt"), ("rollouts", "r")):
        d = workdir / "outputs" / sub / f"step_{step}"
        d.mkdir(parents=True)
        (d / name).write_bytes(f"{sub}-{step}".encode())
    (workdir / "outputs/weights" / f"step_{step}" / "STABLE").write_bytes(b"")


def test_ckpt_push_several_dirs_then_the_pod_restores_them(tmp_path: Path) -> None:
    work = tmp_path / "job"
    _prime_rl_step(work, 20)
    url = f"file://{tmp_path / 'store'}"
    dirs = [f"outputs/{sub}/step_20" for sub in ("weights", "checkpoints", "rollouts")]
    proc = run_cli(
        "ckpt", "push", "--store", url, "--run", "x", "--step", "20",
        *[a for d in dirs for a in ("--dir", str(work / d))],
    )  # fmt: skip
    assert proc.returncode == 2 and "--workdir" in proc.stderr
    proc = run_cli(
        "ckpt", "push", "--store", url, "--run", "x", "--step", "20", "--workdir", str(work),
        *[a for d in dirs for a in ("--dir", str(work / d))],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = file_store(tmp_path / "store", "x").read_manifest(20)
    assert manifest is not None
    assert sorted(f.path for f in manifest.files) == [
        "outputs/checkpoints/step_20/state.pt",
        "outputs/rollouts/step_20/r",
        "outputs/weights/step_20/STABLE",
        "outputs/weights/step_20/model.bin",
    ]


def test_ckpt_push_with_the_runs_sources(tmp_path: Path) -> None:
    work = tmp_path / "job"
    _prime_rl_step(work, 7)
    quiet = time.time() - 60  # the trainer finished writing a minute ago
    for p in (work / "outputs").rglob("*"):
        os.utime(p, (quiet, quiet))
    config = tmp_path / "fleet.yaml"
    text = (Path(__file__).resolve().parent.parent / "examples/local.yaml").read_text()
    text = text.replace("/tmp/respawn-local/store", str(tmp_path / "store"))
    text = text.replace("/tmp/respawn-local/instances", str(tmp_path / "inst"))
    config.write_text(text)
    proc = run_cli(
        "ckpt", "push", "-c", str(config), "--run", "toy", "--step", "7", "--workdir", str(work)
    )
    assert proc.returncode == 0, proc.stderr
    manifest = file_store(tmp_path / "store", "toy").read_manifest(7)
    assert manifest is not None
    # The run's sources name checkpoints/ and weights/: the rollouts are not part of a step.
    assert sorted(f.path for f in manifest.files) == [
        "outputs/checkpoints/step_7/state.pt",
        "outputs/weights/step_7/STABLE",
        "outputs/weights/step_7/model.bin",
    ]
    proc = run_cli(
        "ckpt", "push", "-c", str(config), "--run", "toy", "--step", "8", "--workdir", str(work)
    )
    assert proc.returncode == 2 and "step 8 is not complete" in proc.stderr


def test_gc_spares_a_step_whose_whole_upload_the_listing_hid(tmp_path: Path) -> None:
    """Step 4 (the fallback) shows only a crashed upload's junk; its real upload directory,
    manifest included, is missing from this listing. It is not garbage."""
    truth = CheckpointStore(MemoryBackend(), "r")  # type: ignore[arg-type]
    for s in range(1, 6):
        truth.publish(s, make_step(tmp_path, s, {f"c/step_{s}/m": bytes([s])}), 1, "t")
    truth.backend.write_bytes(truth.keys.step_file(4, "g000001-00000000deadbeef/c/m"), b"junk")
    real = truth.manifest_key(4)
    assert real is not None
    real_dir = real.replace("MANIFEST-", "").removesuffix(".json") + "/"

    class HideUpload(DroppingBackend):
        def list(self, prefix: str) -> list[ObjectInfo]:
            return [
                o
                for o in self.inner.list(prefix)
                if o.key != real and not o.key.startswith(real_dir)
            ]

    flaky = CheckpointStore(HideUpload(truth.backend, random.Random(0)), "r")  # type: ignore[arg-type]
    flaky.gc(keep_last=2, now=time.time() + 7 * 3600)
    assert truth.verify(real) is None


def test_pod_restores_through_a_corrupt_pointer(tmp_path: Path) -> None:
    """Invalid latest.json used to stop the pod forever; its restore now rebuilds it."""
    from respawn.contract.pod import PodSpec
    from respawn.pod.bootstrap import context_from_env, restore

    url = f"file://{tmp_path / 'store'}"
    store = CheckpointStore.open(url, "r")
    for s in (4, 8):
        files = {f"outputs/step_{s}/DONE": b"", f"outputs/step_{s}/m": bytes([s])}
        store.publish(s, make_step(tmp_path, s, files), 1, "g1")
    store.backend.write_bytes(store.keys.latest, b"\x00garbage")
    store.backend.write_bytes(store.keys.heartbeat, b"{")
    work = tmp_path / "work"
    spec = PodSpec.model_validate(
        {
            "command": "x {resume_step}",
            "workdir": str(work),
            "checkpoints": {"sources": [{"path": "outputs/step_{step}", "marker": "DONE"}]},
        }
    )
    env = {
        "RESPAWN_STORE": url,
        "RESPAWN_RUN": "r",
        "RESPAWN_GENERATION": "2",
        "RESPAWN_POD": spec.model_dump_json(),
    }
    ctx = context_from_env(env)
    ctx.store.check_fence(2)
    step, _ = restore(ctx)
    assert step == 8 and (work / "outputs/step_8/m").read_bytes() == bytes([8])
    assert store.read_pointer().step == 8  # type: ignore[union-attr]
    assert store.read_heartbeat() is not None  # rewritten by the pod
    assert [e.kind for e in store.repairs()] == ["pointer-rebuilt"]


def test_a_transient_download_failure_neither_quarantines_nor_moves_the_pointer(
    tmp_path: Path,
) -> None:
    inner = MemoryBackend()
    store = CheckpointStore(inner, "r")  # type: ignore[arg-type]
    for s in (10, 20):
        store.publish(s, make_step(tmp_path, s, {f"c/step_{s}/m": bytes([s])}), 1, "g1")

    class Flaky(DroppingBackend):
        def download(self, key: str, dst: Path, progress: Any = None) -> str:
            if "step_000020" in key:
                raise StoreError(f"downloading {key}: connection reset (after retries)")
            return self.inner.download(key, dst, progress)

    flaky = CheckpointStore(Flaky(inner, random.Random(0), p=0), "r")  # type: ignore[arg-type]
    flaky.read_deadline_s = 0.2
    # Not a reason to restore an older step either (issue 18.4): the store is out, and the
    # pod reports a failure another instance may not repeat.
    with pytest.raises(StoreUnavailableError):
        flaky.pull(tmp_path / "d", quiet=True, repair_as=(2, "g2"))
    assert store.quarantined() == {} and store.repairs() == []
    assert store.read_pointer().step == 20  # type: ignore[union-attr]
