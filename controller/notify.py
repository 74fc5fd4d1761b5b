"""Alerts that reach a person: a webhook (Slack- and Discord-compatible JSON) and GitHub
annotations, once per change of a run's state — the ledger remembers what was last told.

`notification` is pure (decide calls it); `post_webhook` is the I/O (act calls it).
"""

from __future__ import annotations

import re
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
    return Notify(level=LEVEL[health], message=message)


class WebhookError(Exception):
    pass


class _Retryable(WebhookError):
    pass


#: Discord refuses content over 2,000 characters; escaping at most doubles the text.
WEBHOOK_TEXT_LIMIT = 900
#: `@everyone`, `@here` (Discord, Slack) and `@channel` (Slack) ping people even as plain text
#: in some clients: a zero-width space after the `@` keeps the word and drops the ping.
_BROADCAST = re.compile(r"@(?=(?:everyone|here|channel)\b)", re.IGNORECASE)
_DISCORD_MARKUP = re.compile(r"([\\*_~`|<>\[\]()#])")


def _slack_text(text: str) -> str:
    """Slack's documented escaping: `<!channel>`, `<@U1>`, `<url|text>` are control sequences
    only with a raw `<`."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _BROADCAST.sub("@\u200b", text)


def _discord_text(text: str) -> str:
    """Discord's markdown escaped with backslashes: no `<@id>` mention, `[text](url)` link or
    formatting is rendered (the payload also parses no mention and previews no link)."""
    return _BROADCAST.sub("@\u200b", _DISCORD_MARKUP.sub(r"\\\1", text))


def webhook_payload(action: Notify, redact: Callable[[str], str]) -> dict[str, object]:
    """One JSON body for Slack and Discord. The message quotes pods and providers: redacted,
    one line, and inert in both: it pings no one and disguises no link."""
    text = one_line(redact(action.message), WEBHOOK_TEXT_LIMIT)
    return {
        # Slack reads these; Discord ignores them.
        "text": f"[{action.level}] {_slack_text(text)}",
        "unfurl_links": False,
        "unfurl_media": False,
        # Discord reads these; Slack ignores them. Flag 4: no link previews (SUPPRESS_EMBEDS).
        "content": f"[{action.level}] {_discord_text(text)}",
        "allowed_mentions": {"parse": []},
        "flags": 4,
    }


@retry(
    retry=retry_if_exception_type(_Retryable),
    stop=stop_after_attempt(3),
    wait=wait_exponential(multiplier=0.5, max=4),
    reraise=True,
)
def _post(url: str, payload: dict[str, object]) -> None:
    try:
        r = requests.post(url, json=payload, timeout=WEBHOOK_TIMEOUT_S)
    except requests.RequestException as e:
        raise _Retryable(f"webhook unreachable: {type(e).__name__}") from None
    if r.status_code == 429 or r.status_code >= 500:
        raise _Retryable(f"webhook answered HTTP {r.status_code}")
    if r.status_code >= 400:
        raise WebhookError(f"webhook refused the message: HTTP {r.status_code}")


def post_webhook(
    settings: NotifySettings,
    action: Notify,
    environ: Mapping[str, str],
    redact: Callable[[str], str] = str,
) -> str:
    """Send one notification; return what happened. The URL is a secret: it is never shown."""
    name = settings.webhook_url_env
    if name is None:
        return "no webhook configured"
    url = environ.get(name)
    if not url:
        raise WebhookError(f"notify.webhook_url_env: environment variable {name} is not set")
    _post(url, webhook_payload(action, redact))
    return f"sent to the webhook in {name}"


def annotation(action: Notify, redact: Callable[[str], str] = str) -> str:
    """A GitHub workflow command: the message becomes an annotation on the run's page. The
    message quotes pods and providers: redacted, one line, then escaped as the runner
    documents (`%`, CR, LF), so nothing in it ends the command or starts another."""
    text = one_line(redact(action.message), 2000)
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return f"::{action.level} title=respawn::{text}"
