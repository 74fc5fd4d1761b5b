"""One redactor for every sink, and the cleaning of untrusted text for a terminal or Markdown.

Secrets reach error texts by echo: a GraphQL server quotes the rejected variables, an HTTP
error body repeats the request, a pod puts anything in its heartbeat. Every value the fleet
config names as a secret (provider API keys, store keys, the SSH key, the ledger secret,
`pod.secret_env`, W&B keys) is replaced wherever it appears — raw, JSON-escaped, and line by
line for multi-line values (a PEM key) — before any text is cut short, logged, printed,
summarised or stored: cutting first leaves a secret's prefix behind.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from respawn.controller.workflow_output import inert

if TYPE_CHECKING:
    from respawn.controller.config import FleetConfig

MASK = "***"
#: A log message longer than this is cut (after redaction).
LOG_LIMIT = 20_000
#: Shorter values (`1`, `true`) would mask unrelated text and protect nothing.
MIN_SECRET = 6
#: A line of a multi-line secret this short (`-----END ...`) is not secret on its own.
MIN_LINE = 16

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SPACES = re.compile(r"\s+")


def secret_env_names(fleet: FleetConfig) -> list[str]:
    """Every environment variable the config names as holding a secret."""
    store = fleet.store
    names = [store.key_id_env, store.key_env, store.pod_key_id_env, store.pod_key_env]
    names.append(store.ledger_secret_env)
    providers = fleet.providers
    names.append(providers.ssh_private_key_env)
    for cloud in type(providers).model_fields:
        block = getattr(providers, cloud)
        fields = getattr(type(block), "model_fields", {})
        names += [getattr(block, f) for f in fields if f.endswith("key_env")]
    for run in fleet.runs:
        names += list(run.pod.secret_env)
        if run.wandb is not None:
            names.append(run.wandb.api_key_env)
    return sorted({n for n in names if n})


def unmasked_secrets(fleet: FleetConfig, environ: Mapping[str, str]) -> list[str]:
    """The secret variables set to a value too short to be masked (`MIN_SECRET`): printed as
    they are wherever a provider or a pod echoes them."""
    return [n for n in secret_env_names(fleet) if 0 < len(environ.get(n, "")) < MIN_SECRET]


def _variants(value: str) -> set[str]:
    out = {value, json.dumps(value)[1:-1], json.dumps(json.dumps(value)[1:-1])[1:-1]}
    if "\n" in value or "\r" in value:
        out |= {line.strip() for line in value.splitlines() if len(line.strip()) >= MIN_LINE}
    return {v for v in out if len(v) >= MIN_SECRET}


class Redactor:
    """Replaces every variant of every secret with `***`. Longest first, so a secret that
    contains another is masked whole."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = tuple(secrets)
        variants: set[str] = set()
        for value in self._secrets:
            if value and len(value) >= MIN_SECRET:
                variants |= _variants(value)
        self._values = sorted(variants, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(re.escape(v) for v in self._values)) if self._values else None
        )

    @classmethod
    def from_fleet(cls, fleet: FleetConfig, environ: Mapping[str, str]) -> Redactor:
        return cls(environ.get(name, "") for name in secret_env_names(fleet))

    def plus(self, more: Iterable[str]) -> Redactor:
        """This redactor and more secrets, in one pass."""
        return Redactor((*self._secrets, *more))

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def deep(self, doc: Any, limit: int = 2000) -> Any:
        """The same document with every string in it redacted, then cut to `limit`."""
        if isinstance(doc, str):
            text = self(doc)
            return text if len(text) <= limit else text[: limit - 1] + "…"
        if isinstance(doc, dict):
            return {k: self.deep(v, limit) for k, v in doc.items()}
        if isinstance(doc, list | tuple):
            return [self.deep(v, limit) for v in doc]
        return doc


NO_REDACTION = Redactor()


_CONTROL_KEEP_LINES = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def printable(text: str) -> str:
    """No escape sequences or control characters, but lines kept (a log record, a traceback)."""
    return _CONTROL_KEEP_LINES.sub(" ", _ANSI.sub("", text))


def one_line(text: str, limit: int = 500) -> str:
    """Untrusted text (a heartbeat message, a provider's error) made safe for a terminal and
    for the GitHub runner: no escape sequences or control characters, one line that is no
    workflow command (`workflow_output.inert`), at most `limit` characters. Redact before
    calling this: cutting first could leave a secret's prefix."""
    text = _ANSI.sub("", text)
    text = _CONTROL.sub(" ", text)
    text = inert(_SPACES.sub(" ", text).strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def code_span(text: str, limit: int = 500) -> str:
    """Untrusted text for a Markdown table cell: one line inside a code span, so a heading, a
    link or an image in it is shown as text, never rendered. A `|` still ends a table cell
    inside a code span (GFM), so it is escaped there too."""
    text = one_line(text, limit)
    if not text:
        return ""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


class RedactingFilter(logging.Filter):
    """Applied to every log record before any handler formats it."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = printable(self.redactor(record.exc_text))
        # Log lines reach a terminal and the GitHub runner: a pod's message must carry no
        # escape sequence, and no line break that would forge a log line or start a workflow
        # command.
        record.msg, record.args = one_line(self.redactor(message), LOG_LIMIT), ()
        return True


def install_log_redaction(redactor: Redactor) -> None:
    """Every handler of the root logger redacts (filters on handlers also see records that
    propagate from child loggers; filters on loggers would not)."""
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(old)
        handler.addFilter(RedactingFilter(redactor))
