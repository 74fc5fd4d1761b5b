"""A Slack/Discord-style incoming webhook on 127.0.0.1: records each JSON body it accepts."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeWebhook:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.fail_next: list[int] = []  # statuses to answer before accepting again
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = hook.fail_next.pop(0) if hook.fail_next else 204
                if status < 300:
                    hook.messages.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/T0/B0/secret-token"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
