"""A loopback fake of the GitHub REST API endpoints respawn uses: `workflow_dispatch` and
re-enabling a workflow. Speaks the documented protocol: Bearer token, 204 No Content on
success, 404 for an unknown workflow, 422 for an input the workflow does not declare."""

from __future__ import annotations

import re
from typing import Any

from tests.fakes.http import FakeAPI, Reply

_DISPATCH = re.compile(r"^/repos/([^/]+/[^/]+)/actions/workflows/([^/]+)/dispatches$")
_ENABLE = re.compile(r"^/repos/([^/]+/[^/]+)/actions/workflows/([^/]+)/enable$")


class FakeGitHub(FakeAPI):
    def __init__(self, token: str, repo: str, workflows: dict[str, set[str]]) -> None:
        """`workflows`: file name → the `workflow_dispatch` input names it declares."""
        super().__init__(token)
        self.repo = repo
        self.workflows = workflows
        self.dispatches: list[dict[str, Any]] = []
        self.enabled: list[str] = []

    def route(self, method: str, path: str, body: Any) -> str:
        if method == "POST" and _DISPATCH.match(path):
            return "dispatch"
        if method == "PUT" and _ENABLE.match(path):
            return "enable"
        return f"{method} {path}"

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        m = _DISPATCH.match(path) or _ENABLE.match(path)
        if m is None or m.group(1) != self.repo or m.group(2) not in self.workflows:
            return Reply(404, {"message": "Not Found"})
        if path.endswith("/enable"):
            self.enabled.append(m.group(2))
            return Reply(204, None)
        if not isinstance(body, dict) or "ref" not in body:
            return Reply(422, {"message": "Invalid request: ref is required"})
        unknown = set(body.get("inputs") or {}) - self.workflows[m.group(2)]
        if unknown:
            return Reply(422, {"message": f"Unexpected inputs provided: {sorted(unknown)}"})
        self.dispatches.append({"workflow": m.group(2), **body})
        return Reply(204, None)
