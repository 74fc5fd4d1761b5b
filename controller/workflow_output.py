"""respawn's stdout and stderr, safe to hand to the GitHub runner.

The runner reads every line a step prints, on stdout and stderr alike, as a possible workflow
command: a line that starts with `::` (after leading whitespace: the runner trims it) is one
(`::error::`, `::add-mask::`, `::stop-commands::TOKEN`, which silences every later command,
respawn's own annotations included), and so is `##[command]` anywhere in a line (the older
form). A pod's heartbeat, a repair record or a provider's error can reach what respawn prints,
so a newline in them could start such a line. Each sink already makes untrusted text one line
(`redact.one_line`); this guard is the last line of defence for every print and log line of a
command: what would be read as a command is written percent-escaped instead, unless respawn
itself emits it through `workflow_command`.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TextIO

#: A line ends where the runner's line reader ends one.
_EOL = re.compile(r"\r\n|\r|\n")
_MARKERS = ("::", "##[")
_OLD_FORM = "##["
_OLD_FORM_ESCAPED = "%23%23["


def inert(line: str) -> str:
    """One line of output that the runner does not read as a workflow command."""
    line = line.replace(_OLD_FORM, _OLD_FORM_ESCAPED)
    body = line.lstrip()
    if body.startswith("::"):
        # `%3A` is how the runner itself escapes a `:` in a command's properties.
        cut = len(line) - len(body)
        line = line[:cut] + "%3A" + body[1:]
    return line


class CommandGuard:
    """A text stream that writes every line through `inert`. Only what could still become a
    command is held back (a line's leading whitespace and `:`, `#`, `##`; a trailing `#` or
    `##`), so output is not delayed."""

    def __init__(self, inner: TextIO) -> None:
        self.inner = inner
        self._head: str | None = ""  # the current line while its start is undecided, else None
        self._sent = 0  # how much of `_head` (whitespace only) is already written
        self._hashes = ""  # a decided line's trailing `#`s, until the next character
        # A tick's threads print too: one line state, one writer at a time.
        self._lock = threading.RLock()

    def write(self, text: str) -> int:
        with self._lock:
            return self._write(text)

    def _write(self, text: str) -> int:
        out: list[str] = []
        rest = text
        while rest:
            m = _EOL.search(rest)
            if self._head is None:  # the line's start is decided: only `##[` to escape
                part = self._hashes + (rest if m is None else rest[: m.end()])
                self._hashes = ""
                part = part.replace(_OLD_FORM, _OLD_FORM_ESCAPED)
                if m is None:
                    self._hold_hashes(out, part)
                    break
                out.append(part)
                rest, self._head, self._sent = rest[m.end() :], "", 0
                continue
            head = self._head + (rest if m is None else rest[: m.start()])
            if m is None and any(mark.startswith(head.lstrip()) for mark in _MARKERS):
                self._head = head  # `  :` may still become `  ::error`: wait
                break
            line = inert(head)[self._sent :]
            if m is None:
                self._head, rest = None, ""
                self._hold_hashes(out, line)
            else:
                out.append(line + m.group())
                self._head, self._sent, rest = "", 0, rest[m.end() :]
        if out:
            self.inner.write("".join(out))
        return len(text)

    def _hold_hashes(self, out: list[str], line: str) -> None:
        """Part of a decided line: its trailing `#`s wait for what follows them (`[`?)."""
        keep = min(len(line) - len(line.rstrip("#")), 2)
        out.append(line[: len(line) - keep])
        self._hashes = line[len(line) - keep :]

    def command(self, line: str) -> None:
        """A workflow command respawn means to emit, on a line of its own."""
        with self._lock:
            self.flush()
            if self._head is None or self._head:
                self.inner.write("\n")
            self.inner.write(line + "\n")
            self.inner.flush()
            self._head, self._sent = "", 0

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        """Write what was held back: escaped if it could still have become a command."""
        if self._hashes:
            self.inner.write(self._hashes.replace("#", "%23"))
            self._hashes = ""
        if self._head:
            body = self._head.lstrip()
            if body:  # `:`, `#` or `##` at a flush: decided now, escaped
                escaped = body.replace(":", "%3A").replace("#", "%23")
                self.inner.write(self._head[self._sent : len(self._head) - len(body)] + escaped)
                self._head = None
            else:  # whitespace only: written, but the line's start stays undecided
                self.inner.write(self._head[self._sent :])
                self._sent = len(self._head)
        self.inner.flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@contextmanager
def guarded_output() -> Iterator[None]:
    """stdout and stderr guarded for as long as a command runs."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = CommandGuard(saved[0]), CommandGuard(saved[1])
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with suppress(OSError, ValueError):  # a reader that left (`| head`)
                stream.flush()
        sys.stdout, sys.stderr = saved


def workflow_command(line: str) -> None:
    """Emit one workflow command on stdout (the only way respawn prints one)."""
    out = sys.stdout
    if isinstance(out, CommandGuard):
        out.command(line)
    else:
        print(line)
