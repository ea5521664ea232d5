"""The ``run_value`` side table: each run's top-level config and summary values, typed.

Why it exists: filtering and ordering runs by ``config.<key>`` or ``summary_metrics.<key>``
through JSON functions parses every run's whole config and summary text in every query
(a 50-key config is kilobytes), which on 10,000 runs costs about as much as loading them
all into Python. The queries W&B users write almost always name a top-level key, so those
values are also kept here, one row per ``(run, doc, key)``, indexed by ``(doc, key, num)``
and ``(doc, key, text)``: a predicate becomes an index range scan that yields run keys
(:mod:`mirror.store.filters`), and an order a primary-key lookup per matching run.

What a row holds is exactly what :mod:`mirror.store.jsonpath` reads at that path, so the
two ways of evaluating a filter agree: ``kind`` is one of ``JSON_KINDS`` (NaN reads as
``null``), ``num`` is set only for numbers (±Infinity as ±max float, integers beyond 64
bits as floats, like SQLite's JSON1), ``text`` only for strings (NULL for a string
with a lone surrogate, which the database cannot hold). Rows are:

* ``doc = "summary"``: every key of the summary (when it is an object);
* ``doc = "config"``: every key whose stored entry is W&B's wrapper ``{"value": v, ...}``,
  holding ``v`` (what ``config.<key>`` and ``config.<key>.value`` address).

Maintenance is in the write path: every ORM insert or update of a run that sets its config
or summary rewrites that document's rows in the same transaction (mapper events
registered in :mod:`mirror.store.models`). A write that bypasses the store (raw SQL from
another program) fires a SQLite trigger that deletes the document's rows, so stale values
can never match: that run's top-level values then read as missing until the store writes
it again. Migration ``0003`` creates the table and backfills it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

from mirror.store import codec
from mirror.store.jsonpath import MAX_FLOAT

__all__ = ["DOCS", "TRIGGER_DDL", "rows_for", "value_row"]

DOCS = ("config", "summary")
_INT64 = 2**63

#: SQLite triggers that invalidate a run's rows when a document is written without the
#: store's write path (the store rewrites them right after its own UPDATE).
TRIGGER_DDL = tuple(
    f"CREATE TRIGGER run_value_stale_{doc} AFTER UPDATE OF {doc} ON run "
    f"BEGIN DELETE FROM run_value WHERE run_pk = NEW.pk AND doc = '{doc}'; END"
    for doc in DOCS
)


def value_row(value: Any) -> tuple[str, int | float | None, str | None]:
    """``(kind, num, text)`` of one JSON value, as the JSON path functions read it."""
    if value is None:
        return "null", None, None
    if isinstance(value, bool):
        return ("true" if value else "false"), None, None
    if isinstance(value, str):
        return "string", None, value if _storable(value) else None
    if isinstance(value, numbers.Integral):
        as_int = int(value)
        return "number", as_int if -_INT64 <= as_int < _INT64 else float(as_int), None
    if isinstance(value, numbers.Real):
        as_float = float(value)
        if math.isnan(as_float):
            return "null", None, None
        if math.isinf(as_float):
            return "number", MAX_FLOAT if as_float > 0 else -MAX_FLOAT, None
        return "number", as_float, None
    if isinstance(value, Mapping):
        return "object", None, None
    if isinstance(value, (list, tuple)):
        return "array", None, None
    # Anything else is stored as whatever JSON the codec writes for it.
    return value_row(codec.loads(codec.dumps(value)))


def _storable(text: str) -> bool:
    """Can the database hold ``text``? A lone surrogate (valid in Python, and in JSON as
    an escape) cannot be encoded. Such a key is left out (no filter can name it: the name
    could not be bound either); such a string value keeps its kind with ``text`` NULL, so
    it exists and equals no string a filter can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _entries(doc: str, value: Any) -> Iterator[tuple[str, Any]]:
    if not isinstance(value, Mapping):
        return
    for key, item in value.items():
        if not isinstance(key, str) or not _storable(key):
            continue
        if doc == "summary":
            yield key, item
        elif isinstance(item, Mapping) and "value" in item:
            yield key, item["value"]


def rows_for(run_pk: int, doc: str, value: Any) -> list[dict[str, Any]]:
    """The ``run_value`` rows of one run's ``doc`` (``"config"`` or ``"summary"``)."""
    if doc not in DOCS:
        raise ValueError(f"run_value indexes {DOCS}, not {doc!r}")
    out = []
    for key, item in _entries(doc, value):
        kind, num, text = value_row(item)
        out.append(
            {"run_pk": run_pk, "doc": doc, "key": key, "kind": kind, "num": num, "text": text}
        )
    return out
