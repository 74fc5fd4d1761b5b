"""Issue 12.10: what the controller and the pod run is pinned, and the controller installs only
what it imports."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import yaml

from respawn.controller.config import load_config
from respawn.controller.doctor import run_doctor
from tests.conftest import run_cli
from tests.test_clouds import write_fleet

ROOT = Path(__file__).resolve().parents[1]
#: Distribution name → the module it provides, where they differ.
MODULE_OF = {"pyyaml": "yaml"}


def test_dockerfile_base_is_pinned_by_digest() -> None:
    text = (ROOT / "pod_image" / "Dockerfile").read_text()
    m = re.search(r"^ARG BASE=(\S+)$", text, re.M)
    assert m is not None, "the Dockerfile's BASE has no default"
    assert re.search(r"@sha256:[0-9a-f]{64}$", m.group(1)), m.group(1)


def _imported_top_levels(folders: list[str]) -> set[str]:
    out = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    out |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    out.add(node.module.split(".")[0])
    return out


def test_the_controller_installs_nothing_it_does_not_import() -> None:
    """Every package of the `control` extra (what the tick installs from the lock) is imported
    by respawn's own code, not only by its tests (a package nothing imports is attack surface
    and install time for nothing)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    control = extras["optional-dependencies"]["control"]
    used = _imported_top_levels(["controller", "provisioning", "respawn", "examples"])
    for req in control:
        name = re.split(r"[<>=\[ ;!~]", req, maxsplit=1)[0].lower()
        assert MODULE_OF.get(name, name) in used, f"{name} is installed but nothing imports it"
    lock = (ROOT / "requirements" / "control.lock").read_text()
    assert not re.search(r"^runpod==", lock, re.M), "the lock still installs the runpod SDK"


def _fleet(tmp: Path, image: str) -> Path:
    cloud = SimpleNamespace(url="https://api.example")
    path = write_fleet(tmp, cloud, cloud, ["RTX_4090"])  # type: ignore[arg-type]
    doc = yaml.safe_load(path.read_text())
    doc["runs"][0]["pod"]["image"] = image
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_pod_image_without_a_digest_is_warned_about(tmp_path: Path) -> None:
    tagged = _fleet(tmp_path, "ghcr.io/lab/pod:1")
    proc = run_cli("validate", "-c", str(tagged))
    assert proc.returncode == 0, proc.stderr
    assert "pod.image" in proc.stderr and "@sha256:" in proc.stderr
    lines, _ = run_doctor(load_config(tagged), live=False, environ={})
    assert any("pod.image" in ln for ln in lines)
    digest = "ghcr.io/lab/pod@sha256:" + "a" * 64
    proc = run_cli("validate", "-c", str(_fleet(tmp_path, digest)))
    assert proc.returncode == 0, proc.stderr
    assert "pod.image" not in proc.stderr
