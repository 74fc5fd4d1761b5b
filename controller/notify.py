"""Alerts that reach a person: a webhook (Slack- and Discord-compatible JSON) and GitHub
annotations, once per change of a run's state — the ledger remembers what was last told.

`notification` is pure (decide calls it); `post_webhook` is the I/O (act calls it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import requests
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from respawn.controller.config import NotifySettings
from respawn.controller.model import Health, Ledger, Notify, Verdict
from respawn.controller.redact import one_line

LEVEL: dict[Health, str] = {
    Health.HALTED: "error",
    Health.UNKNOWN: "error",
    Health.DEGENERATE: "error",
    Health.DEAD: "warning",
    Health.STALLED: "warning",
    Health.HEALTHY: "notice",
    Health.FINISHED: "notice",
}
WEBHOOK_TIMEOUT_S = 10


def notification(run: str, verdict: Verdict, ledger: Ledger) -> Notify | None:
    """What to tell a person this tick, if the state changed since they were last told."""
    health = verdict.health
    if health in (Health.NEW, Health.STARTING, Health.STOPPED) or ledger.notified == health:
        # new is no incident; starting is the middle of a recovery already told; stopped is a
        # person's own doing
        return None
    if health is Health.DEAD and ledger.generation == 0:
        return None  # the first launch is no incident
    if health is Health.HEALTHY:
        if ledger.notified is None:
            return None  # a run that was never in trouble needs no "all good"
        message = f"{run} recovered: {verdict.reason}"
    else:
        message = f"{run} is {health.value}: {verdict.reason}"
    return Notify(level=LEVEL[health], message=message)  # type: ignore[arg-type]


class WebhookError(Exception):
    pass


class _Retryable(WebhookError):
    pass


@retry(
    retry=retry_if_exception_type(_Retryable),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.5, max=4),
    reraise=True,
)
def _post(url: str, text: str) -> None:
    # Slack reads "text", Discord "content"; each ignores the other's field.
    try:
        r = requests.post(url, json={"text": text, "content": text}, timeout=WEBHOOK_TIMEOUT_S)
    except requests.RequestException as e:
        raise _Retryable(f"webhook unreachable: {type(e).__name__}") from None
    if r.status_code == 429 or r.status_code >= 500:
        raise _Retryable(f"webhook answered HTTP {r.status_code}")
    if r.status_code >= 400:
        raise WebhookError(f"webhook refused the message: HTTP {r.status_code}")


def post_webhook(settings: NotifySettings, action: Notify, environ: Mapping[str, str]) -> str:
    """Send one notification; return what happened. The URL is a secret: it is never shown."""
    name = settings.webhook_url_env
    if name is None:
        return "no webhook configured"
    url = environ.get(name)
    if not url:
        raise WebhookError(f"notify.webhook_url_env: environment variable {name} is not set")
    _post(url, f"[{action.level}] {action.message}")
    return f"sent to the webhook in {name}"


def annotation(action: Notify, redact: Callable[[str], str] = str) -> str:
    """A GitHub workflow command: the message becomes an annotation on the run's page. The
    message quotes pods and providers: redacted, one line, then escaped as the runner
    documents (`%`, CR, LF), so nothing in it ends the command or starts another."""
    text = one_line(redact(action.message), 2000)
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return f"::{action.level} title=respawn::{text}"
