"""A threaded HTTP server on 127.0.0.1 with per-route fault injection, for fake cloud APIs."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Fault:
    status: int = 503
    body: bytes = b'{"error": "injected"}'
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # sleep before answering (a timeout when longer than the client's)
    malformed: bool = False  # 200 with a body that is not JSON
    # The request is carried out, then the answer comes after `delay`: a create whose
    # response the client never sees (it timed out), although the instance exists.
    lost_answer: bool = False


@dataclass
class Reply:
    status: int
    doc: Any
    headers: dict[str, str] = field(default_factory=dict)


class FakeAPI:
    """Subclasses implement `route` (a stable name for fault injection) and `handle`."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.lock = threading.RLock()
        self.faults: dict[str, list[Fault]] = defaultdict(list)
        self.calls: list[str] = []
        self.public: set[str] = set()  # routes answered without a key
        self.unauthorized = b'{"error": "invalid api key"}'
        self._server: ThreadingHTTPServer | None = None

    def route(self, method: str, path: str, body: Any) -> str:
        raise NotImplementedError

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        raise NotImplementedError

    def fail(self, route: str, *faults: Fault) -> None:
        with self.lock:
            self.faults[route].extend(faults)

    def count(self, route: str) -> int:
        return sum(1 for c in self.calls if c == route)

    def start(self) -> str:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = None
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                route = api.route(self.command, parts.path, body)
                with api.lock:
                    api.calls.append(route)
                    fault = api.faults[route].pop(0) if api.faults[route] else None
                if fault is not None and fault.lost_answer:
                    with api.lock:
                        reply = api.handle(self.command, parts.path, query, body)
                    time.sleep(fault.delay)
                    return self._send(reply.status, json.dumps(reply.doc).encode(), reply.headers)
                if fault is not None:
                    time.sleep(fault.delay)
                    if fault.malformed:
                        return self._send(200, b"<html>not json", {})
                    return self._send(fault.status, fault.body, fault.headers)
                authorized = self.headers.get("Authorization") == f"Bearer {api.key()}"
                if not authorized and route not in api.public:
                    return self._send(401, api.unauthorized, {})
                with api.lock:
                    reply = api.handle(self.command, parts.path, query, body)
                payload = b"" if reply.status == 204 else json.dumps(reply.doc).encode()
                self._send(reply.status, payload, reply.headers)

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def key(self) -> str:
        return self.api_key

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
