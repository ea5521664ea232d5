"""Exact JSON encoding of values for the store.

W&B values are any JSON plus the bare constants ``NaN``, ``Infinity`` and ``-Infinity``
that the SDK writes for non-finite floats, and integers wider than 64 bits. They must
round-trip bit-for-bit. orjson is fast but writes NaN as ``null`` and reads wide integers
as floats; the standard library is exact but slower. So:

* encode with orjson; if that fails (an int beyond 64 bits, a non-str key, a lone
  surrogate) or its output contains ``null`` (which is how orjson spells NaN/Infinity,
  and also plain ``None``), encode again with the standard library, exactly, and prefix
  the text with a tab;
* decode text that starts with a tab with the standard library and everything else with
  orjson.

The tab is insignificant JSON whitespace, so ours knows which parser is exact for a text
without scanning it, and other JSON readers (SQLite's ``json_extract``, PostgreSQL) still
read every value that strict JSON can spell; texts holding NaN/Infinity are not strict
JSON, which is why queries go through :mod:`mirror.store.jsonpath`. Floats use the
shortest repr that round-trips, in both encoders.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

EXACT_MARK = "\t"

_dumps_std = json.JSONEncoder(
    ensure_ascii=True, allow_nan=True, separators=(",", ":"), check_circular=True
).encode


def dumps(value: Any) -> str:
    """Encode ``value`` as JSON text that :func:`loads` turns back into an equal value."""
    try:
        out = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return EXACT_MARK + _dumps_std(value)
    if b"null" in out:
        return EXACT_MARK + _dumps_std(value)
    return out.decode("utf-8")


def loads(text: str | bytes) -> Any:
    """Decode text written by :func:`dumps` (or any JSON, incl. NaN/Infinity constants)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if text.startswith(EXACT_MARK):
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # Foreign text (e.g. a server's summary with bare NaN): the exact parser.
        return json.loads(text)


_WIDE = 9.2e18
"""Just under 2**63: an integer beyond 64 bits that orjson turned into a float is past it."""


def loads_wire(text: str | bytes) -> Any:
    """Decode JSON that came over the wire, exactly (bare NaN/Infinity, wide ints).

    orjson parses first (about 5x faster than the standard library on history pages). It
    refuses bare NaN/Infinity, and it reads an integer beyond 64 bits as a float, silently;
    so the text is parsed again by the standard library, which is always exact, only when
    orjson refused it or its result holds a float so large that it may have been such an
    integer. Deciding by scanning the text instead (a run of 19 digits) costs more than
    orjson's parse and sends every float with a long fraction down the slow path.
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    return json.loads(text) if has_wide_float(value) else value


def has_wide_float(value: Any) -> bool:
    """Whether orjson's result holds a float that may have been an integer beyond 64 bits
    (then the text must be parsed again exactly)."""
    if type(value) is dict and value:
        # A history row: a flat dict of numbers, checked in C by the sum of magnitudes,
        # which bounds each of them (a third cheaper than min and max, and a sync checks
        # every row); anything else (strings, nested values: a TypeError) takes the walk.
        try:
            if sum(map(abs, value.values())) < _WIDE:
                return False
        except TypeError:
            pass
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is float and not -_WIDE < item < _WIDE:
            return True
    return False


def dumps_wire(value: Any) -> str:
    """Encode for the wire the way W&B's SDK does: bare NaN/Infinity, no tab prefix."""
    return dumps(value).lstrip(EXACT_MARK)


def dumps_strict(value: Any) -> str:
    """Strict JSON for documents whose readers reject NaN (GraphQL responses: Go's
    encoding/json in wandb-core fails on a bare ``NaN``). Non-finite floats become
    ``null``, as orjson writes them; JSON *strings* that hold NaN are untouched."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(_finite(value), ensure_ascii=True, allow_nan=False,
                          separators=(",", ":"))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
