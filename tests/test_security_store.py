"""Trust boundaries of the checkpoint store (issue 12, items 1 and 2): whoever can write the
bucket can neither make a restore write outside its directory, nor ship a pod's other files
through a symlink, nor replace a file outside the configured checkpoint sources."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import pytest

from respawn.contract.pod import PodSpec
from respawn.pod.bootstrap import context_from_env, restore
from respawn.store.b2_backend import B2Backend
from respawn.store.disk import complete_steps
from respawn.store.schema import utcnow
from respawn.store.store import CheckpointStore, NothingVerifiesError, StoreError
from tests.conftest import b2_simulator, make_step, run_cli

SOURCES = [{"path": "outputs/step_{step}", "marker": "DONE"}]
EVIL = b"echo pwned\n"


def b2_store() -> CheckpointStore:
    api, _sim = b2_simulator()
    return CheckpointStore(B2Backend(api, "respawn-test", "fleet"), "r")


def forge_step(
    store: CheckpointStore, step: int, files: dict[str, bytes], legacy: bool = False
) -> None:
    """What a holder of the bucket key can do: write objects, a manifest that names them with
    correct sha1s, and a pointer at it (in the old one-manifest-per-step layout, or a
    writer's own directory)."""
    prefix = "" if legacy else "g000009-0123456789abcdef/"
    for path, data in files.items():
        # B2 itself refuses some names ('//', '\\', a trailing '/'): the manifest names
        # them all the same.
        with contextlib.suppress(ValueError):
            store.backend.write_bytes(store.keys.step_prefix(step) + prefix + path, data)
    key = (
        store.keys.manifest(step)
        if legacy
        else store.keys.manifest_for(step, 9, "0123456789abcdef")
    )
    entries = [
        {"path": p, "size": len(d), "sha1": hashlib.sha1(d).hexdigest()} for p, d in files.items()
    ]
    manifest = {
        "schema": 1,
        "step": step,
        "files": entries,
        "total_bytes": sum(len(d) for d in files.values()),
        "created_at": utcnow().isoformat(),
        "prefix": prefix,
    }
    store.write_json(key, manifest)
    pointer = {
        "schema": 1,
        "run": store.run,
        "step": step,
        "manifest": key,
        "generation": 1,
        "written_at": utcnow().isoformat(),
        "writer": "attacker",
    }
    store.write_json(store.keys.latest, pointer)


@pytest.mark.parametrize(
    "evil_path",
    [
        "../../../escape.sh",
        "outputs/step_6/../../../../escape.sh",
        "/tmp/respawn-abs-escape.sh",
        "outputs\\..\\..\\escape.sh",
        "outputs/./step_6/x",
        "outputs//step_6/x",
        "outputs/step_6/",
    ],
)
@pytest.mark.parametrize("legacy", [True, False], ids=["old-layout", "new-layout"])
def test_manifest_path_cannot_escape_the_restore_directory(
    tmp_path: Path, evil_path: str, legacy: bool
) -> None:
    """B2 object names may hold literal '..': today the file lands outside dest (and before
    its sha1 is checked). Now the manifest is rejected and the older honest step restored."""
    store = b2_store()
    store.publish(5, make_step(tmp_path, 5, {"outputs/step_5/DONE": b"ok"}), 1, "pod")
    forge_step(store, 6, {"outputs/step_6/DONE": b"ok", evil_path: EVIL}, legacy)
    dest = tmp_path / "a" / "b" / "c" / "work"
    result = store.pull(dest, quiet=True)
    assert result is not None and result.step == 5
    assert result.rejected[0][0] == 6 and "relative path" in result.rejected[0][1]
    escaped = [p for p in tmp_path.rglob("escape.sh")] + [Path("/tmp/respawn-abs-escape.sh")]
    assert not any(p.exists() for p in escaped)
    assert not list(dest.rglob("*escape*"))


def test_forged_manifest_alone_restores_nothing(tmp_path: Path) -> None:
    store = b2_store()
    forge_step(store, 6, {"../../escape.sh": EVIL}, legacy=True)
    with pytest.raises(NothingVerifiesError, match="relative path"):
        store.pull(tmp_path / "w" / "x", quiet=True)
    assert not list(tmp_path.rglob("escape.sh"))


def test_restore_writes_only_files_of_the_configured_sources(tmp_path: Path) -> None:
    """A bucket writer names train.py in a manifest: the pod must not replace it."""
    store = b2_store()
    store.publish(5, make_step(tmp_path, 5, {"outputs/step_5/DONE": b"ok"}), 1, "pod")
    forge_step(
        store,
        6,
        {
            "outputs/step_6/DONE": b"ok",
            "train.py": EVIL,
        },
        legacy=True,
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_bytes(b"print('the real trainer')\n")
    spec = PodSpec.model_validate(
        {"command": "x {resume_step}", "checkpoints": {"sources": SOURCES}}
    )
    result = store.pull(work, quiet=True, sources=spec.checkpoints.sources)
    assert result is not None and result.step == 5
    assert "outside the checkpoint sources" in result.rejected[0][1]
    assert (work / "train.py").read_bytes() == b"print('the real trainer')\n"


def test_a_step_restores_only_its_own_step_directories(tmp_path: Path) -> None:
    """Step 6's manifest may not carry files into step 5's directory (a stale-looking step the
    trainer might load)."""
    store = b2_store()
    forge_step(store, 6, {"outputs/step_6/DONE": b"ok", "outputs/step_5/model.bin": EVIL})
    spec = PodSpec.model_validate(
        {"command": "x {resume_step}", "checkpoints": {"sources": SOURCES}}
    )
    with pytest.raises(NothingVerifiesError, match="outside the checkpoint sources"):
        store.pull(tmp_path / "w", quiet=True, sources=spec.checkpoints.sources)


def test_pod_bootstrap_restores_only_its_sources(tmp_path: Path) -> None:
    """End to end through the pod's own restore: the workdir's train.py survives."""
    url = f"file://{tmp_path / 'store'}"
    store = CheckpointStore.open(url, "r")
    store.publish(5, make_step(tmp_path, 5, {"outputs/step_5/DONE": b"ok"}), 1, "pod")
    forge_step(store, 6, {"outputs/step_6/DONE": b"ok", "train.py": EVIL})
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_bytes(b"real\n")
    spec = PodSpec.model_validate(
        {"command": "x {resume_step}", "workdir": str(work), "checkpoints": {"sources": SOURCES}}
    )
    env = {
        "RESPAWN_STORE": url,
        "RESPAWN_RUN": "r",
        "RESPAWN_GENERATION": "10",
        "RESPAWN_POD": spec.model_dump_json(),
    }
    step, _ = restore(context_from_env(env))
    assert step == 5
    assert (work / "train.py").read_bytes() == b"real\n"
    assert (work / "outputs/step_5/DONE").read_bytes() == b"ok"
    # The forged step is quarantined and the pointer is the pod's own, on what it restored.
    assert list(store.quarantined()) == [store.keys.manifest_for(6, 9, "0123456789abcdef")]
    pointer = store.read_pointer()
    assert pointer is not None and (pointer.step, pointer.generation) == (5, 10)


def _step_with_symlinks(work: Path, outside: Path) -> Path:
    d = work / "outputs/step_3"
    d.mkdir(parents=True)
    (d / "DONE").write_bytes(b"")
    (d / "model.bin").write_bytes(b"weights")
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(b"SECRET KEY")
    (d / "link_to_secret").symlink_to(outside)
    (d / "linked_dir").symlink_to(outside.parent, target_is_directory=True)
    return d


def test_symlinks_in_a_step_are_never_published(tmp_path: Path) -> None:
    work = tmp_path / "work"
    _step_with_symlinks(work, tmp_path / "secrets" / "key")
    spec = PodSpec.model_validate(
        {"command": "x {resume_step}", "checkpoints": {"sources": SOURCES}}
    )
    (step,) = complete_steps(work, spec.checkpoints.sources, now=1e12)
    assert sorted(f.rel for f in step.files) == ["outputs/step_3/DONE", "outputs/step_3/model.bin"]
    # A symlinked step directory is not a step at all.
    (work / "outputs/step_4").symlink_to(tmp_path / "secrets", target_is_directory=True)
    (tmp_path / "secrets" / "DONE").write_bytes(b"")
    assert [s.step for s in complete_steps(work, spec.checkpoints.sources, now=1e12)] == [3]


def test_publish_refuses_a_symlink_handed_to_it(tmp_path: Path) -> None:
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    files = make_step(tmp_path, 1, {"outputs/step_1/DONE": b""})
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "secret")
    (tmp_path / "secret").write_bytes(b"SECRET")
    from respawn.store.disk import LocalFile

    with pytest.raises(StoreError, match="not a regular file"):
        store.publish(1, [*files, LocalFile("outputs/step_1/k", link, 6)], 1, "t")
    assert store.read_pointer() is None


def test_ckpt_push_skips_symlinks(tmp_path: Path) -> None:
    work = tmp_path / "work"
    d = _step_with_symlinks(work, tmp_path / "secrets" / "key")
    url = f"file://{tmp_path / 'store'}"
    proc = run_cli("ckpt", "push", "--store", url, "--run", "r", "--dir", str(d), "--step", "3")
    assert proc.returncode == 0, proc.stderr
    manifest = CheckpointStore.open(url, "r").read_manifest(3)
    assert manifest is not None and sorted(f.path for f in manifest.files) == ["DONE", "model.bin"]
    stored = [p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert b"SECRET KEY" not in stored


def test_restore_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    store.publish(2, make_step(tmp_path, 2, {"outputs/step_2/DONE": b"new"}), 1, "t")
    work = tmp_path / "work"
    (work / "outputs/step_2").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    (work / "outputs/step_2/DONE").symlink_to(victim)
    store.pull(work, quiet=True)
    assert victim.read_bytes() == b"untouched"
    target = work / "outputs/step_2/DONE"
    assert not target.is_symlink() and target.read_bytes() == b"new"


def test_manifest_with_bad_path_is_rejected_when_parsed() -> None:
    from respawn.store.schema import Manifest

    doc = {
        "schema": 1,
        "step": 1,
        "files": [{"path": "a/../../b", "size": 1, "sha1": "0" * 40}],
        "total_bytes": 1,
        "created_at": utcnow().isoformat(),
    }
    with pytest.raises(ValueError, match="relative path"):
        Manifest.model_validate(json.loads(json.dumps(doc)))
    doc["files"] = [{"path": "ok/b", "size": 1, "sha1": "0" * 40}]
    doc["prefix"] = "../"
    with pytest.raises(ValueError, match="prefix"):
        Manifest.model_validate(doc)
    assert os.sep == "/"  # the checks above are for POSIX pods


def test_a_planted_staging_symlink_is_not_followed(tmp_path: Path) -> None:
    store = CheckpointStore.open(f"file://{tmp_path / 'store'}", "r")
    store.publish(2, make_step(tmp_path, 2, {"outputs/step_2/DONE": b"new"}), 1, "t")
    work = tmp_path / "work"
    work.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (work / ".respawn-staging-2").symlink_to(elsewhere, target_is_directory=True)
    assert store.pull(work, quiet=True).step == 2  # type: ignore[union-attr]
    assert list(elsewhere.iterdir()) == []
    assert (work / "outputs/step_2/DONE").read_bytes() == b"new"
