"""Strict reading of the small JSON documents in a store, and the bounds of their fields.

Anyone with a pod's key writes its run's prefix, so every document the controller reads may
be hostile. Python's `json` accepts what later code cannot handle: an integer of 5,000 digits
(`int()` refuses it: ValueError), a lone surrogate escape (`"\\ud800"`: UnicodeEncodeError
when printed), `NaN` and `1e999`. Here those are a corrupt document, named, at the read;
and every field the protocol uses is bounded (`docs/contracts.md`, "Document limits").
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from respawn.store.backend import CorruptError

#: An object larger than this is not read as a document (a pointer, heartbeat, ledger, ...).
DOC_MAX_BYTES = 1 << 20
#: A manifest lists every file of a step: ~150 bytes a file, so about 400,000 files.
MANIFEST_MAX_BYTES = 64 << 20
#: The largest integer every JSON reader holds exactly (a double's 53-bit mantissa): steps,
#: sizes and versions above it are not ones this code wrote.
MAX_JSON_INT = 2**53
#: Steps, file sizes, byte totals, ledger versions.
MAX_STEP = MAX_JSON_INT
MAX_BYTES = MAX_JSON_INT
MAX_VERSION = MAX_JSON_INT
#: Generations: one launch a second for 30 years.
MAX_GENERATION = 10**9
#: Free text a pod may write (a failure message, a repair's detail): longer is cut here.
MAX_TEXT = 4096
#: Names and keys (writer, run id, manifest key): B2 itself caps a name at 1,024 bytes.
MAX_NAME = 1024
#: Integers longer than this are refused by the parser itself, whatever the field.
MAX_INT_DIGITS = 32

Step = Annotated[int, Field(ge=0, le=MAX_STEP)]
Generation = Annotated[int, Field(ge=0, le=MAX_GENERATION)]
Size = Annotated[int, Field(ge=0, le=MAX_BYTES)]
Version = Annotated[int, Field(ge=0, le=MAX_VERSION)]
Name = Annotated[str, Field(max_length=MAX_NAME)]


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


Text = Annotated[str, AfterValidator(_cut)]
"""Free text: kept, but never more than MAX_TEXT characters of it."""

_SURROGATE = re.compile("[\ud800-\udfff]")


class _Refused:
    """What the parser put where a value was refused; found by `_walk` with its path."""

    def __init__(self, why: str) -> None:
        self.why = why


def _int(text: str) -> int | _Refused:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return _Refused(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _float(text: str) -> float | _Refused:
    value = float(text)
    return value if math.isfinite(value) else _Refused(f"a number out of range ({text[:20]})")


def _constant(name: str) -> _Refused:
    return _Refused(f"{name}, which is not JSON")


def _walk(value: Any, where: str) -> str | None:
    """Where the first refused value or lone surrogate is, and why (None: nowhere)."""
    if isinstance(value, _Refused):
        return f"{where or '(root)'}: {value.why}"
    if isinstance(value, str):
        return f"{where or '(root)'}: a lone surrogate escape" if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            if _SURROGATE.search(k):
                return f"{where or '(root)'}: a key with a lone surrogate escape"
            found = _walk(v, f"{where}.{k}" if where else k)
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _walk(v, f"{where}[{i}]")
            if found:
                return found
    return None


def loads_document(key: str, raw: bytes) -> dict[str, Any]:
    """The JSON object stored under `key`, or CorruptError naming the key and the field."""
    refused = False

    def mark(value: Any) -> Any:
        nonlocal refused
        refused = refused or isinstance(value, _Refused)
        return value

    try:
        doc = json.loads(
            raw,
            parse_int=lambda t: mark(_int(t)),
            parse_float=lambda t: mark(_float(t)),
            parse_constant=lambda t: mark(_constant(t)),
        )
    # RecursionError: deeply nested JSON from whoever holds a store key must be a corrupt
    # document, not an exception that ends the caller (a whole tick, a pod's sync loop).
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CorruptError(f"{key} is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise CorruptError(f"{key} is not a JSON object")
    # A surrogate can only come from a `\uD8xx`..`\uDFxx` escape (raw UTF-8 cannot hold one).
    if refused or re.search(rb"\\u[dD][89a-fA-F]", raw):
        found = _walk(doc, "")
        if found:
            raise CorruptError(f"{key} is malformed: {found}")
    return doc
