"""What the adapters rely on in a cloud's replies, checked against a live reply
(`respawn doctor --live`): a missing field or one of another type is reported by name, so a
user learns of a changed API in seconds, not from a failed launch, and the reply can become
a test fixture."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NUMBER = (int, float)
STR = (str,)
BOOL = (bool,)
NULL = (type(None),)
LIST = (list,)
DICT = (dict,)

Spec = Mapping[str, tuple[type, ...]]


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _expected(types: tuple[type, ...]) -> str:
    names = ["null" if t is type(None) else t.__name__ for t in types]
    return " or ".join(dict.fromkeys(names))


def problems(where: str, row: object, spec: Spec) -> list[str]:
    """One line per field of `spec` that `row` lacks or holds with another type."""
    if not isinstance(row, dict):
        return [f"{where}: expected an object, got {_type_name(row)}"]
    out = []
    for field, types in spec.items():
        if field not in row:
            out.append(f"{where}: field {field!r} is missing")
            continue
        value = row[field]
        # bool is an int in Python; a flag where a number is expected is still wrong.
        wrong = not isinstance(value, types) or (
            isinstance(value, bool) and bool not in types and int in types
        )
        if wrong:
            out.append(
                f"{where}: field {field!r} is {_type_name(value)}, expected {_expected(types)}"
            )
    return out
