"""The docs stand alone (issue 10, item 6): no reference outside the repository, every
relative link resolves, and every worked config in the guide is a valid run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from respawn.controller.config import parse_config
from tests.conftest import ROOT

DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_docs_exist() -> None:
    names = {p.name for p in DOCS}
    assert {"contracts.md", "protect-your-run.md", "use-from-your-repository.md"} <= names
    assert {"pod-image.md", "layout.md", "adding-a-cloud.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_reference_outside_the_repository(page: Path) -> None:
    text = page.read_text()
    assert "../shared" not in text and "DESIGN.md" not in text
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://")):
            continue
        resolved = (page.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{page.name} links outside: {target}"
        assert resolved.exists(), f"{page.name}: broken link {target}"


def test_docs_named_in_code_exist() -> None:
    named = set()
    for path in [*ROOT.glob("*/*.py"), *ROOT.glob("respawn/*/*.py"), ROOT / "pod_image/Dockerfile"]:
        named |= set(re.findall(r"docs/([a-z-]+\.md)", path.read_text()))
    assert named and all((ROOT / "docs" / n).exists() for n in named), named


HEADER = """
store: {url: "file:///tmp/s"}
providers: {local: {state_dir: /tmp/l}}
runs:
"""


def worked_runs() -> list[str]:
    text = (ROOT / "docs" / "protect-your-run.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    return [b for b in blocks if b.startswith("  - name:")]


WORKED = ["prime-rl", "hf-trainer", "pytorch", "nanogpt", "lightning"]


def test_the_guide_has_five_worked_configs() -> None:
    assert len(worked_runs()) == len(WORKED)


@pytest.mark.parametrize("block", worked_runs(), ids=WORKED)
def test_worked_config_is_valid(block: str) -> None:
    fleet = parse_config(HEADER + block, "protect-your-run.md")
    (run,) = fleet.runs
    resumes = "{resume_step}" in run.pod.command or run.pod.resume == "latest"
    assert resumes and run.pod.checkpoints.sources


# `respawn` on PyPI is an unrelated package (issue 20.8): an instruction that installs the bare
# name installs someone else's code.
BARE_INSTALL = re.compile(r"pip install\s+(?:-\S+\s+)*['\"]?respawn(?:\[|['\"\s`]|$)", re.M)


@pytest.mark.parametrize(
    "page",
    [*PAGES, ROOT / "pod_image" / "Dockerfile", ROOT / ".github/workflows/tick.yml"],
    ids=lambda p: p.name,
)
def test_no_instruction_installs_the_unrelated_pypi_package(page: Path) -> None:
    found = BARE_INSTALL.findall(page.read_text())
    assert not found, f"{page.name}: {found} would install PyPI's unrelated `respawn`"


def test_the_distribution_name_is_not_the_taken_one() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^name = "respawn-gpu"$', text, re.M)
