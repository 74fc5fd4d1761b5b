"""The pod asks GitHub for a controller tick (`workflow_dispatch` through the REST API).

GitHub's cron is best-effort: ticks are delayed, dropped, and a schedule is disabled after 60
idle days. A pod that is being reclaimed (SIGTERM), whose trainer failed for good, or that
sees no tick for `overdue_after` asks for one itself, so a lost spot instance is replaced in
about a minute rather than at the next cron.

POST {api}/repos/{owner}/{repo}/actions/workflows/{workflow}/dispatches
     {"ref": REF, "inputs": {"run": RUN}}  →  204
with a fine-grained token (Actions: read and write) from the variable `token_env`. The token
is never logged. Requests are rate-limited (`min_interval`), time out, and are retried a few
times on 5xx and network errors only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import datetime

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from respawn.contract.pod import DispatchSpec

log = logging.getLogger("respawn.pod")
TIMEOUT_SECONDS = 10.0
API_VERSION = "2022-11-28"


class DispatchError(Exception):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class TickRequester:
    def __init__(
        self,
        spec: DispatchSpec,
        run: str,
        env: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
        attempts: int = 3,
        backoff: float = 1.0,
    ) -> None:
        self.spec = spec
        self.run = run
        self._token = env.get(spec.token_env, "")
        self._clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()
        self._send = retry(
            retry=retry_if_exception(lambda e: getattr(e, "retryable", False)),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=backoff, max=8 * backoff),
            reraise=True,
        )(self._post)
        if not self._token:
            log.warning(
                "dispatch: %s is not set in the pod's environment: the pod cannot ask for ticks",
                spec.token_env,
            )

    @property
    def url(self) -> str:
        s = self.spec
        return (
            f"{s.api_url.rstrip('/')}/repos/{s.repository}/actions/workflows/{s.workflow}"
            "/dispatches"
        )

    def request(self, why: str) -> bool:
        """Ask for one tick now unless one was asked for within `min_interval`. True if
        GitHub accepted it."""
        if not self._token:
            return False
        with self._lock:
            now = self._clock()
            gap = self.spec.min_interval.total_seconds()
            if self._last is not None and now - self._last < gap:
                return False
            self._last = now
        try:
            self._send()
        except DispatchError as e:
            log.warning("dispatch (%s): %s", why, e)
            return False
        log.info("dispatch: asked %s for a tick (%s)", self.spec.repository, why)
        return True

    def request_soon(self, why: str) -> threading.Thread:
        """The same, in the background: on SIGTERM the grace period belongs to the trainer."""
        t = threading.Thread(target=self.request, args=(why,), name="dispatch", daemon=True)
        t.start()
        return t

    def overdue(self, last_tick: datetime | None, now: datetime) -> bool:
        after = self.spec.overdue_after
        return after is not None and last_tick is not None and now - last_tick > after

    def _post(self) -> None:
        body = json.dumps({"ref": self.spec.ref, "inputs": {"run": self.run}}).encode()
        req = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {self._token}",
                "X-GitHub-Api-Version": API_VERSION,
                "Content-Type": "application/json",
                "User-Agent": "respawn-pod",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_SECONDS) as resp:
                resp.read()
        except urllib.error.HTTPError as e:
            status = e.code
            detail = ""
            with contextlib.suppress(ValueError, AttributeError):
                detail = str(json.loads(e.read() or b"{}").get("message", ""))[:200]
            hint = {
                401: f"the token in {self.spec.token_env} was rejected",
                403: f"the token in {self.spec.token_env} lacks Actions: write",
                404: f"no workflow {self.spec.workflow!r} in {self.spec.repository} "
                "(or the token cannot see it)",
                422: f"the workflow must have `workflow_dispatch` with a `run` input on "
                f"{self.spec.ref!r}",
            }.get(status, "")
            msg = (
                f"HTTP {status}"
                + (f": {hint}" if hint else "")
                + (f" ({detail})" if detail else "")
            )
            raise DispatchError(msg, retryable=status >= 500 or status == 429) from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DispatchError(f"{type(e).__name__}: {reason}", retryable=True) from None
