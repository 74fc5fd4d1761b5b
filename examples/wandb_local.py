"""A local stand-in for W&B's GraphQL API on 127.0.0.1, spoken to by the real `wandb.Api`:
`respawn demo --scenario degenerate` logs the toy trainer's metrics to it, and the tests use it
as their W&B (tests/fakes/wandb.py). Stdlib only.

wandb 0.31 sends every public-API call through its Go sidecar (wandb-core), which POSTs
`{"query", "variables", "operationName"}` to `<base_url>/graphql` with
`Authorization: Basic base64("api:<key>")`. wandb-core sends `operationName: ""` for the
`#graphql`-prefixed Run query, so operations are recognised by the query text.

Answered: Viewer (sent once per `Api()`), Run (RunFragment: `api.run`, `run.load`),
RunHistoryKeys (`historyKeys.lastStep`), and what wandb-core sends for `Run.scan_history(keys=)`
(wandb/core/internal/runhistoryreader): RunParquetHistory (`parquetHistory(liveKeys:
["_step"])` → `parquetUrls` of the exported history and `liveData`, the rows not exported yet:
here nothing is exported, every row is live), then one SampledHistoryPage per page of steps
(`sampledHistory(specs: [$spec])`, the spec `{"keys", "minStep", "maxStep", "samples"}`);
RunSampledHistory (`sampledHistory(specs: $specs)`, what `Run.history(keys=, samples=)`
sends). As the W&B server does (wandb PR 12010), a spec's `maxStep` is inclusive, only rows
holding every key are returned, and more rows than `samples` are sampled down evenly.
Anything else, e.g. the telemetry probe, gets 404.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "k" * 40  # wandb refuses keys under 40 characters without sending them


@dataclass
class FakeRun:
    state: str = "running"
    heartbeat_at: str = "2026-11-23T12:00:00"
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _jsonable(v: Any) -> Any:
    # W&B serialises NaN as the string "NaN" in history and summary JSON.
    return "NaN" if isinstance(v, float) and math.isnan(v) else v


class LocalWandb:
    def __init__(self, entity: str = "ent", api_key: str = API_KEY) -> None:
        self.entity = entity
        self.api_key = api_key
        self.runs: dict[tuple[str, str], FakeRun] = {}  # (project, run id) → run
        self.queries: list[str] = []  # the operation of every request, in order
        self.fail_mode: str | None = None  # None | "http500" | "http401" | "gql_error"
        self.delay = 0.0  # seconds before each answer
        self.slow: dict[str, float] = {}  # operation → extra seconds before its answer
        self.specs: list[dict[str, Any]] = []  # every history spec asked for, in order
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- state ------------------------------------------------------------------------------

    def add_run(self, project: str, run_id: str, **kw: Any) -> FakeRun:
        run = FakeRun(**kw)
        with self.lock:
            self.runs[(project, run_id)] = run
        return run

    def log(
        self, project: str, run_id: str, row: dict[str, Any], heartbeat_at: str | None = None
    ) -> None:
        """Like `wandb.log`: append a history row (with `_step`), merge it into the summary."""
        with self.lock:
            run = self.runs[(project, run_id)]
            row = {k: _jsonable(v) for k, v in row.items()}
            last = run.history[-1]["_step"] if run.history else -1
            row.setdefault("_step", last + 1)
            if row["_step"] <= last:
                return  # W&B drops a resumed run's steps below its last one
            run.history.append(row)
            run.summary.update(row)
            if heartbeat_at is not None:
                run.heartbeat_at = heartbeat_at

    def count(self, op: str) -> int:
        return sum(1 for q in self.queries if q == op)

    # -- GraphQL ----------------------------------------------------------------------------

    @staticmethod
    def operation(query: str) -> str:
        if "viewer" in query:
            return "Viewer"
        if "parquetHistory" in query:
            return "RunParquetHistory"
        if "query SampledHistoryPage" in query:
            return "SampledHistoryPage"
        if "sampledHistory" in query:
            return "RunSampledHistory"
        if "RunFragment" in query:
            return "Run"
        if "historyKeys" in query:
            return "RunHistoryKeys"
        return "other"

    def answer(self, op: str, v: dict[str, Any]) -> Any:
        if op == "Viewer":
            return {
                "viewer": {
                    "id": "VXNlcjox",
                    "entity": self.entity,
                    "username": self.entity,
                    "email": "",
                    "flags": "{}",
                    "teams": {"edges": []},
                }
            }
        # wandb-core's own queries name the run `$run` / `$runName`; the Python ones `$name`.
        name = v.get("name", v.get("run", v.get("runName", "")))
        with self.lock:
            found = self.runs.get((v.get("project", ""), name))
            run = None if found is None else json.loads(json.dumps(found.__dict__))
        if run is None or v.get("entity") != self.entity:
            return {"project": {"run": None}}
        hist: list[dict[str, Any]] = run["history"]
        last = hist[-1]["_step"] if hist else -1
        keys = {
            "lastStep": last,
            "keys": {
                k: {"typeCounts": [{"type": "number", "count": sum(k in r for r in hist)}]}
                for k in sorted({k for r in hist for k in r})
            },
        }
        if op == "RunParquetHistory":
            live = [{k: r[k] for k in v.get("liveKeys", []) if k in r} for r in hist]
            return {"project": {"run": {"parquetHistory": {"parquetUrls": [], "liveData": live}}}}
        if op in ("SampledHistoryPage", "RunSampledHistory"):
            out = []
            specs = v["specs"] if "specs" in v else [v["spec"]]
            for raw in specs:
                spec = json.loads(raw)
                with self.lock:
                    self.specs.append(spec)
                wanted, n = spec["keys"], int(spec.get("samples", 500))
                lo, hi = spec.get("minStep", -math.inf), spec.get("maxStep", math.inf)
                rows = [
                    {k: r[k] for k in wanted if k in r}
                    for r in hist
                    if all(k in r for k in wanted) and lo <= r["_step"] <= hi
                ]
                if len(rows) > n:  # the server samples evenly, keeping both ends
                    stride = len(rows) / n
                    rows = [rows[int(i * stride)] for i in range(n - 1)] + [rows[-1]]
                out.append(rows)
            return {"project": {"run": {"sampledHistory": out}}}
        if op == "Run":
            return {
                "project": {
                    "run": {
                        "projectId": "1",
                        "id": "UnVuOjE=",
                        "name": name,
                        "displayName": name,
                        "tags": [],
                        "sweepName": None,
                        "state": run["state"],
                        "config": "{}",
                        "group": None,
                        "jobType": None,
                        "commit": None,
                        "readOnly": False,
                        "createdAt": "2026-11-23T00:00:00",
                        "heartbeatAt": run["heartbeat_at"],
                        "description": None,
                        "notes": None,
                        "systemMetrics": "{}",
                        "summaryMetrics": json.dumps(run["summary"]),
                        "historyLineCount": len(hist),
                        "user": {"name": self.entity, "username": self.entity},
                        "historyKeys": keys,
                    }
                }
            }
        if op == "RunHistoryKeys":
            return {"project": {"run": {"historyKeys": keys}}}
        return {"project": {"run": None}}

    # -- server -----------------------------------------------------------------------------

    def start(self) -> str:
        fake = self
        expected = "Basic " + base64.b64encode(f"api:{self.api_key}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # wandb-core needs Content-Length keep-alive

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, doc: Any) -> None:
                out = json.dumps(doc).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # wandb-core gave up (timeout) and left

            def do_GET(self) -> None:
                self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/graphql":
                    return self._send(404, {"error": "not found"})
                req = json.loads(body or b"{}")
                op = fake.operation(req.get("query", ""))
                with fake.lock:
                    fake.queries.append(op)
                time.sleep(fake.delay + fake.slow.get(op, 0.0))
                if fake.fail_mode == "http500":
                    return self._send(500, {"errors": [{"message": "boom"}]})
                if fake.fail_mode == "http401" or self.headers.get("Authorization") != expected:
                    return self._send(401, {"errors": [{"message": "unauthorized"}]})
                if fake.fail_mode == "gql_error":
                    return self._send(200, {"data": None, "errors": [{"message": "boom"}]})
                self._send(200, {"data": fake.answer(op, req.get("variables") or {})})

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # wandb-core drops connections when it cancels a call

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
