"""The W&B signal of a run: state, heartbeat, summary `_step` / `_runtime`, and the recent tail of
the circuit-breaker metric, read through wandb's public API.

One `wandb.Api` per tick per (server, key), shared by every run; a job's W&B runs are read
concurrently. Every read has a timeout (`Api(timeout=)`: wandb-core retries a failing request
with backoff inside it and cancels at the deadline, so that is the bounded retry). A failure
becomes `WandbRunSignal.error`: the signal is unknown this tick, and the other signals judge.

The metric tail is `Run.scan_history(keys=[metric], min_step=, max_step=)`: only the steps
after the last rollback and at most the last `max(4 x streak, 100)`, in pages of `PAGE_STEPS`
(wandb-core asks `parquetHistory` for the exported files and the live steps, then
`sampledHistory` per page with an inclusive `maxStep` and as many samples as steps, so nothing
is downsampled). wandb sends a scan's requests without a deadline and wandb-core retries a
hung one for minutes, so the scan runs under the reader's own timeout.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from respawn.controller.config import RunConfig, WandbRef
from respawn.controller.model import WandbRunSignal

API_TIMEOUT_S = 20
CLOUD_API = "https://api.wandb.ai"
# Rows of the metric read per tick, in W&B steps: enough to see a streak start.
MIN_TAIL_STEPS = 100

# Rows of the tail read per history request (scan_history's page, in W&B steps).
PAGE_STEPS = 1000

ApiFactory = Callable[[WandbRef, str, float], Any]


def app_url(ref: WandbRef, run_id: str) -> str:
    base = (ref.base_url or CLOUD_API).rstrip("/")
    if base == CLOUD_API:
        base = "https://wandb.ai"
    return f"{base}/{ref.entity}/{ref.project}/runs/{run_id}"


def parse_time(raw: object) -> datetime | None:
    """W&B's `heartbeatAt` is ISO 8601 UTC, usually without a zone; wandb does not parse it."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def as_number(v: object) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str) and v.lower() in ("nan", "infinity", "-infinity"):
        return float(v)  # W&B writes NaN / Infinity as strings
    return None


def _as_int(v: object) -> int | None:
    n = as_number(v)
    return int(n) if n is not None and math.isfinite(n) else None


def _default_api(ref: WandbRef, key: str, timeout: float) -> Any:
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb  # heavy: only when a run has W&B configured

    overrides = {"base_url": ref.base_url or CLOUD_API, "entity": ref.entity}
    return wandb.Api(api_key=key, overrides=overrides, timeout=math.ceil(timeout))


class WandbReader:
    """One tick's W&B access. Thread-safe: runs are observed in parallel."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        timeout: float = API_TIMEOUT_S,
        api_factory: ApiFactory | None = None,
    ) -> None:
        self.environ = os.environ if environ is None else environ
        self.timeout = timeout
        self.api_factory = api_factory or _default_api
        self._apis: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _api(self, ref: WandbRef) -> Any:
        """The Api for this server and key, or the exception opening it raised (kept, so a
        W&B outage costs one timeout per tick, not one per run)."""
        cache_key = (ref.base_url or CLOUD_API, ref.api_key_env)
        with self._lock:
            if cache_key not in self._apis:
                key = self.environ.get(ref.api_key_env)
                if not key:
                    found: Any = LookupError(f"environment variable {ref.api_key_env} is not set")
                else:
                    try:
                        found = self.api_factory(ref, key, self.timeout)
                    except Exception as e:  # wandb raises its own types; all mean "unknown"
                        found = e
                self._apis[cache_key] = found
            return self._apis[cache_key]

    def read(
        self, run: RunConfig, run_ids: Sequence[str], tail_after: int | None = None
    ) -> tuple[WandbRunSignal, ...]:
        """Every listed W&B run of this job; `tail_after`: metric rows at or below this W&B step
        are not read (they belong to a streak already rolled back)."""
        ref = run.wandb
        if ref is None or not run_ids:
            return ()
        api = self._api(ref)
        if isinstance(api, Exception):
            err = self._clean(ref, f"W&B unavailable: {_short(api)}")
            return tuple(WandbRunSignal(run_id=i, url=app_url(ref, i), error=err) for i in run_ids)
        if len(run_ids) == 1:
            return (self._read_one(api, run, run_ids[0], tail_after),)
        with ThreadPoolExecutor(max_workers=len(run_ids)) as pool:
            return tuple(pool.map(lambda i: self._read_one(api, run, i, tail_after), run_ids))

    def _read_one(self, api: Any, run: RunConfig, run_id: str, tail_after: int | None) -> Any:
        ref = run.wandb
        assert ref is not None
        url = app_url(ref, run_id)
        try:
            wb = api.run(f"{ref.entity}/{ref.project}/{run_id}")  # one Run query
            summary = wb.summary_metrics or {}
            step = _as_int(summary.get("_step"))
            tail: tuple[tuple[int, float], ...] = ()
            rule = run.health.degenerate
            if rule is not None and step is not None:
                tail = _read_tail(wb, rule.metric, step, rule.steps, tail_after, self.timeout)
            return WandbRunSignal(
                run_id=run_id,
                url=url,
                state=wb.state,
                heartbeat_at=parse_time(wb.heartbeat_at),
                step=step,
                runtime=as_number(summary.get("_runtime")),
                tail=tail,
            )
        except Exception as e:  # any failure: this signal is unknown, never a guess
            return WandbRunSignal(run_id=run_id, url=url, error=self._clean(ref, _short(e)))

    def _clean(self, ref: WandbRef, text: str) -> str:
        key = self.environ.get(ref.api_key_env)
        return text.replace(key, "***") if key and len(key) >= 4 else text


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _read_tail(
    wb: Any,
    metric: str,
    step: int,
    streak: int,
    after: int | None,
    timeout: float,
) -> tuple[tuple[int, float], ...]:
    span = max(4 * streak, MIN_TAIL_STEPS)
    lo = max(step - span + 1, 0 if after is None else after + 1)
    if lo > step:
        return ()

    def scan() -> list[dict[str, Any]]:
        rows = wb.scan_history(
            keys=[metric],
            min_step=lo,
            max_step=step + 1,  # exclusive
            page_size=min(step + 1 - lo, PAGE_STEPS),
            use_cache=False,  # a tick's runner is fresh: a cache only costs disk
        )
        return list(rows)

    out = []
    for row in _within(timeout, scan, f"W&B history of {metric!r}"):
        s, v = _as_int(row.get("_step")), as_number(row.get(metric))
        if s is not None and v is not None:
            out.append((s, v))
    return tuple(sorted(out))


def _within(seconds: float, fn: Callable[[], Any], what: str) -> Any:
    """fn() or TimeoutError after `seconds`. The call cannot be cancelled: it is left to
    finish in a daemon thread, which never holds up the controller's exit."""
    done = threading.Event()
    result: list[Any] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller as it is
            failure.append(e)
        finally:
            done.set()

    threading.Thread(target=work, name="wandb-history", daemon=True).start()
    if not done.wait(seconds):
        raise TimeoutError(f"{what}: no answer within {seconds:g}s")
    if failure:
        raise failure[0]
    return result[0]
