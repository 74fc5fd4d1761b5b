"""How every provider call is made: HTTP failures mapped to typed errors, bounded retries.

Transient errors (timeouts, connection errors, 5xx, malformed JSON) and 429 are retried with
exponential backoff that never undercuts the server's Retry-After; invalid credentials and
bad requests are raised at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import requests
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from respawn.provisioning.base import (
    InvalidCredentialsError,
    NotFoundError,
    ProviderError,
    QuotaExceededError,
    RateLimitedError,
    TransientProviderError,
)

T = TypeVar("T")
TIMEOUT_SECONDS = 30.0
ATTEMPTS = 3
BACKOFF_SECONDS = 1.0
MAX_WAIT_SECONDS = 60.0
sleep = time.sleep  # how retries wait; tests replace it to check waits without waiting


def _retry_after(response: requests.Response | None) -> float | None:
    if response is None:
        return None
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _json_body(response: requests.Response | None) -> object:
    try:
        return response.json() if response is not None else None
    except ValueError:
        return None


def error_from_http(e: requests.HTTPError, what: str, key_env: str) -> ProviderError:
    err = _error_from_http(e, what, key_env)
    # Kept for callers that must look inside (a refused create that made an instance anyway);
    # never part of the message.
    err.body = _json_body(e.response)  # type: ignore[attr-defined]
    err.status = e.response.status_code if e.response is not None else 0  # type: ignore[attr-defined]
    return err


def _said(response: requests.Response | None) -> str:
    """What an error reply says, for a message. A JSON body contributes only its documented
    human fields (Vast: `error`, `msg`): a refused create's reply also carries the contract's
    `instance_api_key`, which must never reach a log or the ledger."""
    if response is None:
        return ""
    doc = _json_body(response)
    if isinstance(doc, dict):
        parts = [str(doc[k]) for k in ("error", "msg", "message", "detail") if doc.get(k)]
        errors = doc.get("errors")  # GraphQL
        if isinstance(errors, list):
            parts += [str(e.get("message")) for e in errors[:3] if isinstance(e, dict)]
        # Not cut here: the controller redacts secrets first and shortens after (cutting first
        # can leave a key's prefix that no redactor recognises).
        return " ".join(parts)
    if doc is not None:
        return ""
    return response.text or ""


def _error_from_http(e: requests.HTTPError, what: str, key_env: str) -> ProviderError:
    response = e.response
    status = response.status_code if response is not None else 0
    body = _said(response)
    if status in (401, 403):
        return InvalidCredentialsError(
            f"{what}: the API key was rejected (HTTP {status}); check {key_env}"
        )
    if status == 404:
        return NotFoundError(f"{what}: not found")
    doc = _json_body(response)
    if status == 429 and isinstance(doc, dict) and doc.get("error") == "search_quota_exceeded":
        reset = response.headers.get("X-RateLimit-Reset") if response is not None else None
        when = f" (resets at epoch {reset})" if reset else " (resets at UTC midnight)"
        return QuotaExceededError(f"{what}: daily search quota exceeded{when}")
    if status == 429:
        return RateLimitedError(f"{what}: rate limited (HTTP 429)", _retry_after(response))
    if status >= 500:
        # A server error's body is noise at best and an echo of our request at worst.
        return TransientProviderError(f"{what}: HTTP {status}")
    err = ProviderError(f"{what}: HTTP {status} {body}".strip())
    err.retryable = False
    return err


def translate(e: Exception, what: str, key_env: str) -> ProviderError:
    """Any failure of a provider call as one of our typed errors."""
    if isinstance(e, ProviderError):
        return e
    if isinstance(e, requests.HTTPError):
        return error_from_http(e, what, key_env)
    if isinstance(e, requests.Timeout | requests.ConnectionError | TimeoutError):
        return TransientProviderError(f"{what}: {type(e).__name__}: {e}")
    if isinstance(e, json.JSONDecodeError | ValueError | KeyError | TypeError):
        return TransientProviderError(f"{what}: malformed response ({type(e).__name__}: {e})")
    return TransientProviderError(f"{what}: {type(e).__name__}: {e}")


def _wait(state: RetryCallState) -> float:
    backoff = wait_exponential(multiplier=BACKOFF_SECONDS, max=MAX_WAIT_SECONDS)(state)
    exc = state.outcome.exception() if state.outcome else None
    after = getattr(exc, "retry_after", None)
    return min(MAX_WAIT_SECONDS, max(backoff, after)) if after else backoff


log = logging.getLogger("respawn.provisioning")


def say_wait(what: str) -> Callable[[RetryCallState], None]:
    """A retry's wait, logged before it sleeps: a tick waiting on a throttled or failing
    provider shows what it waits for and how long, not a silent pause."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.info(
            "%s: %s; trying again in %.0f s (attempt %d of %d)",
            what,
            exc,
            wait,
            state.attempt_number + 1,
            ATTEMPTS,
        )

    return before_sleep


def once(fn: Callable[[], T], what: str, key_env: str) -> T:
    """One attempt with typed errors: for calls that are not idempotent (a create)."""
    try:
        return fn()
    except Exception as e:
        raise translate(e, what, key_env) from e


def call(fn: Callable[[], T], what: str, key_env: str) -> T:
    """Run one provider call with typed errors and bounded retries of transient failures."""

    @retry(
        retry=retry_if_exception_type((TransientProviderError, RateLimitedError)),
        stop=stop_after_attempt(ATTEMPTS),
        wait=_wait,
        sleep=lambda seconds: sleep(seconds),
        before_sleep=say_wait(what),
        reraise=True,
    )
    def attempt() -> T:
        return once(fn, what, key_env)

    return attempt()
