"""RunPod's REST API v2 on the wire: one session, RFC 9457 error bodies read into typed errors.

RunPod documents what each status means for a create (`createPod` in its OpenAPI document,
https://api.runpod.io/v2/openapi.json; a copy of the parts used is
tests/fakes/runpod_openapi.json):

| status | RunPod says | here |
| --- | --- | --- |
| 422 | the body does not match the contract; never retry | ProviderError, not retried |
| 400 | breaks a cross-field rule, or this GPU could not be placed | NoCapacityError: next offer |
| 402 | insufficient balance; no candidate will succeed | ProviderError: next provider |
| 403 | the account cannot access the requested pool | NoCapacityError: next offer |
| 429 | back off using Retry-After | retried (`calls.call`), never for a create |
| 5xx | transient upstream failure | retried, never for a create |

A 403 on any other call is a key without the permission, like a 401: fatal, not an offer.
Error bodies are `{title, status, detail, errors?}` with `errors` a list of strings; a
message quotes `detail` and `errors` (they may echo a value we sent: the controller redacts
every secret before it prints or stores one).
"""

from __future__ import annotations

from typing import Any

import requests

from respawn.provisioning import calls
from respawn.provisioning.base import (
    InvalidCredentialsError,
    NoCapacityError,
    NotFoundError,
    ProviderError,
)

API_URL = "https://api.runpod.io"


def base_url(url: str) -> str:
    """The REST host: a config written for the GraphQL API (`.../graphql`, the old default)
    keeps working on the same host."""
    url = url.rstrip("/")
    for suffix in ("/graphql", "/v2"):
        url = url.removesuffix(suffix)
    return url


def problem_text(response: requests.Response) -> str:
    """What an RFC 9457 problem body says: `detail` (else `title`) and the `errors` strings."""
    try:
        doc = response.json()
    except ValueError:
        return ""
    if not isinstance(doc, dict):
        return ""
    parts = [str(doc.get("detail") or doc.get("title") or "")]
    errors = doc.get("errors")
    if isinstance(errors, list):
        parts += [str(e) for e in errors[:5]]
    # Not cut here: the controller redacts secrets first and shortens after.
    return "; ".join(p for p in parts if p)


def refusal(status: int, text: str, what: str, key_env: str, creating: bool) -> ProviderError:
    """The typed error for a 4xx answer other than 429 (those go through `calls`)."""
    said = f"runpod: {what}: HTTP {status}" + (f": {text}" if text else "")
    if status == 401:
        return InvalidCredentialsError(f"{said}; check {key_env}")
    if status == 404:
        return NotFoundError(said)
    if creating and status in (400, 403):
        # 400: no capacity or a rule; 403: no access to this GPU pool. Either way another
        # offer (GPU type, cloud) may place; a rule broken by every offer fails them all.
        return NoCapacityError(said)
    if status == 403:
        return InvalidCredentialsError(
            f"{said}; the key in {key_env} lacks a permission respawn needs (read and write "
            "on pods, read on the catalog)"
        )
    if status == 402:
        err = ProviderError(f"{said}: add funds to the RunPod account")
    else:
        err = ProviderError(said)
    err.retryable = False
    return err


class RunPodAPI:
    def __init__(self, api_key: str, key_env: str, url: str = API_URL) -> None:
        self.url = base_url(url)
        self.key_env = key_env
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def _send(self, method: str, path: str, what: str, creating: bool = False, **kw: Any) -> Any:
        r = self.session.request(method, f"{self.url}{path}", timeout=calls.TIMEOUT_SECONDS, **kw)
        if r.status_code == 429 or r.status_code >= 500:
            r.raise_for_status()  # `calls` reads Retry-After and retries where allowed
        if r.status_code >= 400:
            raise refusal(r.status_code, problem_text(r), what, self.key_env, creating)
        return None if r.status_code == 204 or not r.content else r.json()

    def get(self, path: str, what: str, params: dict[str, str] | None = None) -> Any:
        return calls.call(
            lambda: self._send("GET", path, what, params=params), f"runpod: {what}", self.key_env
        )

    def create(self, path: str, body: dict[str, Any], what: str) -> Any:
        # One attempt: a create whose answer was lost may still have made a pod.
        return calls.once(
            lambda: self._send("POST", path, what, creating=True, json=body),
            f"runpod: {what}",
            self.key_env,
        )

    def delete(self, path: str, what: str) -> None:
        calls.call(lambda: self._send("DELETE", path, what), f"runpod: {what}", self.key_env)
