"""Durations as people write them in YAML: `90s`, `20m`, `1h30m`, `2d`, `0.5s`."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")
#: Longer than any run is a typo (and `timedelta` overflows near 10^9 days).
MAX = timedelta(days=3650)
PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"


def parse_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("expected a duration such as '90s', '20m', '1h30m'")
    if isinstance(value, int | float):
        raise ValueError(f"{value!r} has no unit: write e.g. '{value}s' or '{value}m'")
    text = value.strip().replace(" ", "")
    if not _WHOLE.match(text):
        raise ValueError(f"{value!r} is not a duration: write e.g. '90s', '20m', '1h30m', '2d'")
    seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    if seconds <= 0:
        # A zero interval is a busy loop, a zero grace kills at once: never what was meant.
        raise ValueError(f"{value!r} is zero: a duration must be positive")
    if seconds > MAX.total_seconds():
        raise ValueError(f"{value!r} is longer than {MAX.days} days: a typo?")
    return timedelta(seconds=seconds)


def format_duration(td: timedelta) -> str:
    total = td.total_seconds()
    if total != int(total):
        return f"{total:g}s"
    secs = int(total)
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            out += f"{secs // size}{unit}"
            secs %= size
    return out or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": PATTERN, "examples": ["90s", "20m", "1h30m"]}),
]
