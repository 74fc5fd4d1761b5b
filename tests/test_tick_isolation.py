"""One run's documents never stop the fleet's tick (issue 18.5, issue 19.1).

A pod holds a key that writes its run's prefix of the store. Whatever it puts in a document
the controller reads — a timestamp without a time zone, a 5,000-digit integer, a lone
surrogate escape, an object of 512 MiB — that run is `unknown` with the document named (or,
for the documents that hold nothing, simply rewritten), and every other run of the fleet is
observed and launched as if nothing happened."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from respawn.controller.config import FleetConfig, load_config
from respawn.controller.reconcile import tick
from respawn.controller.report import exit_code
from respawn.store.keys import Keys
from respawn.store.schema import Heartbeat, utcnow
from respawn.store.store import CheckpointStore
from tests.conftest import make_step
from tests.fakes.runpod import FakeRunPod
from tests.fakes.vast import FakeVast
from tests.test_clouds import write_fleet

SECRET = "controller-only-secret-0123456789"
HUGE = "7" * 5000  # json.loads raises ValueError (int max str digits), not a JSONDecodeError
NAIVE = "2026-01-01T00:00:00"  # no time zone: compared with an aware time, a TypeError


def _fleet(tmp: Path, vast: FakeVast, runpod: FakeRunPod, signed: bool) -> FleetConfig:
    """Two runs, `job` and `other`, on the same store and clouds."""
    path = write_fleet(tmp, vast, runpod, ["RTX_4090"])
    doc = yaml.safe_load(path.read_text())
    if signed:
        doc["store"]["ledger_secret_env"] = "RESPAWN_LEDGER_SECRET"
    other = json.loads(json.dumps(doc["runs"][0]))
    other["name"] = "other"
    doc["runs"].append(other)
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


def _pod(tmp: Path) -> CheckpointStore:
    """The store as `other`'s pod sees it: its key, no ledger secret."""
    return CheckpointStore.open(f"file://{tmp / 'store'}", "other")


def _document(tmp: Path, name: str) -> dict[str, object]:
    """A well-formed document of `other` to poison: the one already there, or a typical one."""
    path = tmp / "store" / getattr(Keys("other"), name)
    if path.exists():
        doc = json.loads(path.read_text())
        doc.pop("mac", None)
        return doc  # type: ignore[no-any-return]
    at = utcnow().isoformat()
    if name == "lease":  # long expired: as a document it holds nothing
        return {"token": "t", "holder": "h", "expires_at": "2020-01-01T00:00:00+00:00"}
    if name == "halt":
        return {"halted": False, "reason": "resumed", "at": at}
    if name == "heartbeat":
        hb = Heartbeat(run="other", generation=1, writer="w", at=utcnow(), phase="training")
        return hb.model_dump(mode="json", by_alias=True)
    raise AssertionError(name)


#: Each document (by its `Keys` name), and the field of it that holds a time (the naive-time
#: poison goes there).
DOCUMENTS = {
    "lease": "expires_at",
    "halt": "at",
    "tick": "at",
    "ledger": "halted_at",
    "heartbeat": "at",
    "latest": "written_at",
}
#: Documents that decide nothing: unreadable, they are rewritten, and the run goes on.
HOLD_NOTHING = {"lease", "tick"}


def _poison(doc: dict[str, object], poison: str, time_field: str) -> str:
    if poison == "naive-time":
        return json.dumps({**doc, time_field: NAIVE})
    if poison == "huge-int":
        return json.dumps(doc)[:-1] + f', "n": {HUGE}}}'
    # A lone surrogate in a string the controller keeps and prints.
    text = [k for k, v in doc.items() if isinstance(v, str) and k != "run" and "at" not in k]
    field = min(text, default="reason")
    return json.dumps({**doc, field: "x"})[:-1].replace('"x"', '"x\\ud800"') + "}"


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("poison", ["naive-time", "huge-int", "surrogate"])
@pytest.mark.parametrize("document", list(DOCUMENTS))
def test_a_poisoned_document_stops_only_its_own_run(
    tmp_path: Path,
    clouds: tuple[FakeVast, FakeRunPod],
    monkeypatch: pytest.MonkeyPatch,
    document: str,
    poison: str,
    signed: bool,
) -> None:
    vast, runpod = clouds
    monkeypatch.setenv("RESPAWN_LEDGER_SECRET", SECRET)
    fleet = _fleet(tmp_path, vast, runpod, signed)
    tick(fleet, only="other")  # other: launched, ledger and tick record written; job: new
    if document == "latest":
        files = make_step(tmp_path, 10, {"ck/step_10/DONE": b"", "ck/step_10/w": b"w"})
        _pod(tmp_path).publish(10, files, generation=1, writer="pod")
    target = tmp_path / "store" / getattr(Keys("other"), document)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(_poison(_document(tmp_path, document), poison, DOCUMENTS[document]))

    reports = {r.run: r for r in tick(fleet)}

    job = reports["job"]
    assert job.plan.verdict.health.value == "new", job.plan.verdict.reason
    assert [(r.action.kind, r.ok) for r in job.results][:1] == [("provision", True)]
    other = reports["other"]
    verdict = other.plan.verdict
    if document in HOLD_NOTHING:
        assert verdict.health.value == "starting", verdict.reason
        assert other.skipped is None and not other.failed
        assert exit_code(list(reports.values())) == 0
        named = [w for w in other.observation.warnings if getattr(Keys("other"), document) in w]
        assert named, other.observation.warnings
        # ...and the tick put a good one back (a lease is released: nothing left).
        if document == "tick":
            assert _pod(tmp_path).read_tick() is not None
    elif document == "latest":
        # The pointer is a cache of the verified manifests: this tick rebuilds it (issue 18.1).
        done = [(r.action.kind, r.ok) for r in other.results]
        assert ("repair-pointer", True) in done, done
        rebuilt = _pod(tmp_path).read_pointer()
        assert rebuilt is not None and rebuilt.step == 10
        assert verdict.health.value != "unknown", verdict.reason
    else:
        assert verdict.health.value == "unknown", verdict.reason
        assert document.rsplit("/", 1)[-1] in verdict.reason
        assert not other.plan.destructive
        assert exit_code(list(reports.values())) == 1
    # Nothing of what was read reaches a report as a character no output can encode.
    for r in reports.values():
        r.model_dump_json().encode()
        verdict.reason.encode()
    assert vast.count("create") == 2  # other's launch, then job's: nothing more


def test_a_bug_in_one_run_makes_that_run_unknown_and_the_others_go_on(
    tmp_path: Path,
    clouds: tuple[FakeVast, FakeRunPod],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last resort: whatever escapes one run's lease/observe/classify/decide/act — here
    the TypeError a naive time used to raise, injected into one run's observation — is that
    run's `unknown`, named with its type, and the process exits as usual."""
    vast, runpod = clouds
    fleet = _fleet(tmp_path, vast, runpod, signed=False)
    from respawn.controller import reconcile

    real = reconcile.observe

    def observe(run, *a, **kw):  # type: ignore[no-untyped-def]
        if run.name == "other":
            raise TypeError("can't compare offset-naive and offset-aware datetimes")
        return real(run, *a, **kw)

    monkeypatch.setattr(reconcile, "observe", observe)
    reports = {r.run: r for r in tick(fleet)}
    assert [(r.action.kind, r.ok) for r in reports["job"].results][:1] == [("provision", True)]
    other = reports["other"].plan.verdict
    assert other.health.value == "unknown"
    assert "TypeError" in other.reason and "offset-naive" in other.reason
    assert exit_code(list(reports.values())) == 1


def _sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)  # no disk used: only a read of it costs memory


def test_a_pointer_naming_a_huge_object_is_refused_without_reading_it(
    tmp_path: Path, clouds: tuple[FakeVast, FakeRunPod]
) -> None:
    """A pointer naming a 512 MiB object as its manifest made the controller read it whole
    (+640 MiB RSS), for every tick."""
    vast, runpod = clouds
    fleet = _fleet(tmp_path, vast, runpod, signed=False)
    tick(fleet, only="other")
    files = make_step(tmp_path, 10, {"ck/step_10/DONE": b"", "ck/step_10/w": b"w"})
    pod = _pod(tmp_path)
    pointer = pod.publish(10, files, generation=1, writer="pod").pointer
    big = "other/checkpoints/step_000010/MANIFEST-g000001-0123456789abcdef.json"
    size = 512 << 20
    _sparse(tmp_path / "store" / big, size)
    doc = pointer.model_dump(mode="json", by_alias=True)
    pod.write_json(pod.keys.latest, {**doc, "manifest": big})

    tracemalloc.start()
    try:
        reports = {r.run: r for r in tick(fleet)}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size // 8, f"peak {peak >> 20} MiB"
    assert [(r.action.kind, r.ok) for r in reports["job"].results][:1] == [("provision", True)]
    assert not reports["other"].plan.destructive


@pytest.mark.parametrize("cap", ["over", "exact"])
def test_a_document_over_its_size_limit_is_corrupt_on_every_backend(
    store: CheckpointStore, cap: str
) -> None:
    from respawn.store.backend import CorruptError

    limit = 1000
    body = b"x" * (limit + 1 if cap == "over" else limit)
    store.backend.write_bytes("run-a/big.json", body)
    if cap == "exact":
        assert store.backend.read_bytes("run-a/big.json", max_bytes=limit) == body
        return
    with pytest.raises(CorruptError, match=r"run-a/big\.json.*1001 bytes.*1000"):
        store.backend.read_bytes("run-a/big.json", max_bytes=limit)


def test_no_document_reader_reads_an_unbounded_object(
    tmp_path: Path, store: CheckpointStore
) -> None:
    """Heartbeat, pointer, tick record: 1 MiB; a bigger one is corrupt, named."""
    from respawn.store.backend import CorruptError

    readers: dict[str, Callable[[], object]] = {
        store.keys.heartbeat: store.read_heartbeat,
        store.keys.latest: store.read_pointer,
        store.keys.tick: store.read_tick,
    }
    for key, read in readers.items():
        store.backend.write_bytes(key, b" " * (2 << 20) + b"{}")
        with pytest.raises(CorruptError, match=key.replace(".", r"\.")):
            read()


def test_time_zones_are_kept_and_required(tmp_path: Path) -> None:
    """A document written by this code reads back equal; one without a zone does not read."""
    from respawn.store.backend import CorruptError

    store = CheckpointStore.open(f"file://{tmp_path}", "r")
    hb = Heartbeat(run="r", generation=1, writer="w", at=utcnow(), phase="training")
    store.write_heartbeat(hb)
    assert store.read_heartbeat() == hb
    doc = {**hb.model_dump(mode="json", by_alias=True), "at": NAIVE}
    store.write_json(store.keys.heartbeat, doc)
    with pytest.raises(CorruptError, match=r"heartbeat\.json.*at: Input should have timezone info"):
        store.read_heartbeat()


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b'{"a": {"step": ' + HUGE.encode() + b"}}", "a.step: an integer of 5000 digits"),
        (b'{"a": ["ok", "x\\ud800"]}', "a[1]: a lone surrogate escape"),
        (b'{"x\\udfff": 1}', "(root): a key with a lone surrogate escape"),
        (b'{"p": NaN}', "p: NaN, which is not JSON"),
        (b'{"p": 1e999}', "p: a number out of range"),
        (b"[1]", "not a JSON object"),
    ],
)
def test_json_python_accepts_but_no_reader_can_use_is_corrupt(raw: bytes, said: str) -> None:
    from respawn.store.backend import CorruptError
    from respawn.store.strict import loads_document

    with pytest.raises(CorruptError, match=r"^run/doc\.json ") as caught:
        loads_document("run/doc.json", raw)
    assert said in str(caught.value)


def test_surrogate_pairs_and_long_text_are_fine() -> None:
    from respawn.store.strict import MAX_TEXT, loads_document

    assert loads_document("k", b'{"m": "\\ud83d\\ude00"}') == {"m": "\U0001f600"}
    hb = Heartbeat.model_validate(
        {
            "run": "r",
            "generation": 1,
            "writer": "w",
            "at": utcnow(),
            "phase": "failed",
            "message": "x" * (MAX_TEXT * 10),
        }
    )
    assert len(hb.message) == MAX_TEXT
