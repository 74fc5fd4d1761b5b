"""The import rules of the layout (docs/layout.md), checked on the source: who may import
whom, and no import cycles. A rule broken here is a pod image that drags in cloud SDKs, or a
`decide` that cannot be imported without I/O."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

FOLDERS = {
    "respawn": ROOT / "respawn",
    "respawn.controller": ROOT / "controller",
    "respawn.provisioning": ROOT / "provisioning",
    "respawn.pod": ROOT / "pod_image",
    "respawn.examples": ROOT / "examples",
}
# What each part may import of ours (besides itself).
ALLOWED = {
    "respawn.contract": set(),
    "respawn.store": {"respawn.contract"},
    "respawn.provisioning": {"respawn.contract"},
    "respawn.pod": {"respawn.contract", "respawn.store"},
    "respawn.controller": {
        "respawn.contract",
        "respawn.store",
        "respawn.provisioning",
        "respawn.examples",  # `respawn demo` runs the example
    },
    "respawn.examples": {
        "respawn.contract",
        "respawn.store",
        "respawn.provisioning",
        "respawn.controller",
    },
}
PARTS = sorted(ALLOWED, key=len, reverse=True)


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for prefix, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([prefix, *parts])
            if prefix == "respawn" and parts and parts[0] in ("controller", "pod", "examples"):
                continue
            out[name] = path
    return out


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:
            continue  # `if TYPE_CHECKING:` blocks do not run
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m == "respawn" or m.startswith("respawn.")}


def _part(module: str) -> str | None:
    return next((p for p in PARTS if module == p or module.startswith(p + ".")), None)


MODULES = _modules()


def test_the_layout_is_found() -> None:
    parts = {_part(m) for m in MODULES}
    assert set(ALLOWED) <= parts, "a folder of the layout was not scanned"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_rules(module: str) -> None:
    part = _part(module)
    if part is None:
        return  # respawn/__init__.py, respawn/__main__.py: the entry points
    wrong = sorted(
        imp
        for imp in _imports(MODULES[module], top_level_only=False)
        if (_part(imp) or imp) != part and (_part(imp) or imp) not in ALLOWED[part]
    )
    assert not wrong, f"{module} ({part}) may not import {wrong}"


def test_no_import_cycles() -> None:
    graph = {
        m: {i for i in _imports(p, top_level_only=True) if i in MODULES} for m, p in MODULES.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for nxt in sorted(graph[m]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_pod_side_imports_without_the_control_extra() -> None:
    """The pod image installs only the default dependencies: nothing the pod imports may need
    a package of the `control` extra."""
    control = {"requests", "vastai", "runpod", "wandb", "paramiko"}
    for module, path in MODULES.items():
        if _part(module) not in ("respawn.contract", "respawn.store", "respawn.pod"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            bad = [n for n in names if n.split(".")[0] in control]
            assert not bad, f"{module} imports {bad}, which the pod image does not install"


def test_importing_decide_loads_no_store_and_no_cloud_sdk() -> None:
    """The pure core stays importable (and fast) without any I/O layer."""
    code = (
        "import sys\n"
        "import respawn.controller.decide\n"
        "heavy = ('respawn.store.store', 'respawn.store.b2_backend', 'b2sdk', 'vastai',\n"
        "         'runpod', 'wandb', 'paramiko')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout
