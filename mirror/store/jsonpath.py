"""JSON access in queries: the one dialect-aware place (DESIGN.md, "The store").

JSON columns (``run.config``, ``run.summary``, ``run.tags``, ``run.history_keys``) are TEXT
written by :mod:`mirror.store.codec`. Queries reach into them only through the functions
here, which return SQLAlchemy expressions that compile to SQLite's JSON1 functions or to
PostgreSQL's ``jsonb`` operators, chosen when the statement is compiled (``@compiles``),
so callers never know the dialect.

Extraction is *typed* on purpose: :func:`json_number` is NULL unless the value is a
number, :func:`json_string` NULL unless it is a string, and :func:`json_type` names the
kind. Untyped extraction would compare across types (SQLite orders every number below
every text, so ``"abc" > 0.01`` is true), while MongoDB-style filters only compare values
of the same kind.

Three facts of the stored text shape the SQL:

* **NaN and Infinity.** W&B summaries hold bare ``NaN``/``Infinity``, which are not
  JSON: SQLite's parser (before 3.42) and PostgreSQL's reject the whole document, which
  would break the query for every row. Documents that are not valid JSON are read
  through a sanitizer that turns NaN into ``null`` and ±Infinity into ±max float, so a
  single NaN neither errors nor hides the run's other values (SQL has no NaN anyway).
* **Escaped keys.** codec's exact encoder writes non-ASCII as ``\\uXXXX``, and SQLite's
  path lookup (``$."key"``) compares key text *undecoded* and cannot express a key
  holding ``"``. Paths whose keys are all plain printable ASCII use ``json_extract``;
  any other key goes through ``mirror_json_get``, a registered Python function that
  decodes exactly.
* **Leading tab.** codec marks exact-encoded text with a tab, which is JSON whitespace:
  every JSON function reads it unchanged.

SQLite needs :func:`register_sqlite_functions` on each connection (the engine's connect
hook calls it, through ``mirror.store.filters.register_sqlite_functions``). User input
only ever reaches SQL as bound parameters.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, ClassVar

import orjson
from sqlalchemy import Boolean, Float, Integer, Text, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.type_api import TypeEngine
from sqlalchemy.sql.visitors import InternalTraversal

__all__ = [
    "array_contains",
    "array_length",
    "array_matches",
    "json_number",
    "json_string",
    "json_type",
    "register_sqlite_functions",
]

# What ±Infinity read as in queries: finite, so they compare and sort at the extremes.
MAX_FLOAT = sys.float_info.max

# Normalised kinds returned by json_type (PostgreSQL's jsonb_typeof, booleans split).
JSON_KINDS = ("null", "true", "false", "number", "string", "array", "object")


# --- public functions ----------------------------------------------------------------------


def json_type(doc: ColumnElement[Any], keys: Sequence[str]) -> ColumnElement[str]:
    """Kind of the value at ``keys`` (one of :data:`JSON_KINDS`), NULL when it is missing."""
    return _JsonGet(doc, keys, "type")


def json_number(doc: ColumnElement[Any], keys: Sequence[str]) -> ColumnElement[float]:
    """The number at ``keys``; NULL when missing, null, NaN or not a number (e.g. a bool)."""
    return _JsonGet(doc, keys, "number")


def json_string(doc: ColumnElement[Any], keys: Sequence[str]) -> ColumnElement[str]:
    """The string at ``keys``; NULL when missing or not a string."""
    return _JsonGet(doc, keys, "string")


def array_contains(doc: ColumnElement[Any], value: str) -> ColumnElement[bool]:
    """True when the JSON array ``doc`` holds the string ``value`` (e.g. a run's tags)."""
    return _JsonArrayAny(doc, "eq", value)


def array_matches(doc: ColumnElement[Any], pattern: str) -> ColumnElement[bool]:
    """True when a string of the JSON array ``doc`` matches the regular expression."""
    return _JsonArrayAny(doc, "regex", pattern)


def array_length(doc: ColumnElement[Any]) -> ColumnElement[int]:
    """Number of elements of the JSON array ``doc``: 0 when it is not an array, NULL if NULL."""
    return _JsonArrayLength(doc)


# --- SQLite functions ------------------------------------------------------------------------


_CONSTANTS: dict[str, float | None] = {"NaN": None, "Infinity": MAX_FLOAT, "-Infinity": -MAX_FLOAT}


def _load(text: str) -> Any:
    """Parse stored text, reading NaN as None and ±Infinity as ±max float.

    The standard library's C scanner with ``parse_constant`` is exact about what is a
    bare constant and what is text inside a string; raises ValueError on garbage.
    """
    return json.loads(text, parse_constant=_CONSTANTS.__getitem__)


def _dump(value: Any) -> str | None:
    """Strict JSON text of ``value`` (None if it cannot be: e.g. an infinite 1e999)."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:  # an integer beyond 64 bits
        try:
            return json.dumps(value, ensure_ascii=False, allow_nan=False)
        except ValueError:
            return None


@lru_cache(maxsize=16)
def _sanitize(text: Any) -> str | None:
    """``mirror_json_sanitize(doc)``: the document as strict JSON (NULL if unreadable).

    One row's document is sanitized by every expression that reads it; the small cache
    makes that once per row (SQLite does not memoize deterministic functions). Corrupt
    text reads as NULL instead of failing the whole query.
    """
    if not isinstance(text, str):
        return None
    try:
        return _dump(_load(text))
    except (ValueError, RecursionError):
        return None


@lru_cache(maxsize=16)
def _get(text: Any, keys_json: str) -> str | None:
    """``mirror_json_get(doc, keys)``: JSON text of the value at ``keys``, NULL if missing."""
    if not isinstance(text, str):
        return None
    try:
        value = _load(text)
    except (ValueError, RecursionError):
        return None
    for key in json.loads(keys_json):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return _dump(value)


def register_sqlite_functions(dbapi_connection: sqlite3.Connection) -> None:
    """Register the JSON helper functions the compiled SQL calls on a SQLite connection."""
    dbapi_connection.create_function("mirror_json_sanitize", 1, _sanitize, deterministic=True)
    dbapi_connection.create_function("mirror_json_get", 2, _get, deterministic=True)


# --- the constructs -----------------------------------------------------------------------


class _JsonGet(ColumnElement[Any]):
    """Typed value (``kind``: type/number/string) at a key path of a JSON text column.

    The keys are part of the cache key (``_traverse_internals``) because the SQL's shape
    depends on them (fast path or ``mirror_json_get``); the bound values created while
    compiling are therefore always the ones of the statement being run.
    """

    __visit_name__ = "mirror_json_get"
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 - SQLAlchemy's declaration
        ("doc", InternalTraversal.dp_clauseelement),
        ("keys", InternalTraversal.dp_string_list),
        ("kind", InternalTraversal.dp_string),
    ]
    _TYPES: ClassVar[dict[str, TypeEngine[Any]]] = {
        "type": Text(),
        "number": Float(),
        "string": Text(),
    }

    def __init__(self, doc: ColumnElement[Any], keys: Sequence[str], kind: str) -> None:
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(f"a JSON path needs non-empty string keys, got {keys!r}")
        self.doc = doc
        self.keys = list(keys)
        self.kind = kind
        self.type = self._TYPES[kind]


class _JsonArrayAny(ColumnElement[bool]):
    """Does any string element of a JSON array equal (``eq``) or match (``regex``) value?"""

    __visit_name__ = "mirror_json_array_any"
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 - SQLAlchemy's declaration
        ("doc", InternalTraversal.dp_clauseelement),
        ("mode", InternalTraversal.dp_string),
        ("value", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, doc: ColumnElement[Any], mode: str, value: str) -> None:
        self.doc = doc
        self.mode = mode  # "eq" or "regex" (not ``op``: ColumnElement.op is a method)
        self.value: BindParameter[str] = bindparam(None, value, type_=Text(), unique=True)
        self.type = Boolean()


class _JsonArrayLength(ColumnElement[int]):
    """Length of a JSON array column (0 for other JSON values)."""

    __visit_name__ = "mirror_json_array_length"
    inherit_cache = True
    _traverse_internals = [("doc", InternalTraversal.dp_clauseelement)]  # noqa: RUF012

    def __init__(self, doc: ColumnElement[Any]) -> None:
        self.doc = doc
        self.type = Integer()


def _bind(
    compiler: SQLCompiler, value: Any, type_: TypeEngine[Any] | None = None, **kw: Any
) -> str:
    """Render a fresh bound parameter: literal SQL text is never built from user input."""
    return compiler.process(bindparam(None, value, type_=type_ or Text(), unique=True), **kw)


def _plain(key: str) -> bool:
    """Can SQLite's path syntax address ``key`` in any stored text? (printable ASCII only)"""
    return all(" " <= ch <= "~" and ch not in '"\\' for ch in key)


# --- SQLite ---------------------------------------------------------------------------------


@compiles(_JsonGet, "sqlite")
def _sqlite_get(element: _JsonGet, compiler: SQLCompiler, **kw: Any) -> str:
    doc = compiler.process(element.doc, **kw)
    if all(_plain(k) for k in element.keys):
        source = f"CASE WHEN json_valid({doc}) THEN {doc} ELSE mirror_json_sanitize({doc}) END"
        path = "$" + "".join(f'."{k}"' for k in element.keys)
    else:
        source = f"mirror_json_get({doc}, {_bind(compiler, json.dumps(element.keys), **kw)})"
        path = "$"
    target = f"{source}, {_bind(compiler, path, **kw)}"
    jtype = f"json_type({target})"
    if element.kind == "type":
        return (
            f"(CASE {jtype} WHEN 'integer' THEN 'number' WHEN 'real' THEN 'number' "
            f"WHEN 'text' THEN 'string' ELSE {jtype} END)"
        )
    wanted = "'integer', 'real'" if element.kind == "number" else "'text'"
    return f"(CASE WHEN {jtype} IN ({wanted}) THEN json_extract({target}) END)"


@compiles(_JsonArrayAny, "sqlite")
def _sqlite_array_any(element: _JsonArrayAny, compiler: SQLCompiler, **kw: Any) -> str:
    doc = compiler.process(element.doc, **kw)
    value = compiler.process(element.value, **kw)
    test = "mirror_el.value = {v}" if element.mode == "eq" else "regexp({v}, mirror_el.value)"
    return (
        f"EXISTS (SELECT 1 FROM json_each({doc}) AS mirror_el "
        f"WHERE mirror_el.type = 'text' AND {test.format(v=value)})"
    )


@compiles(_JsonArrayLength, "sqlite")
def _sqlite_array_length(element: _JsonArrayLength, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_array_length({compiler.process(element.doc, **kw)})"


# --- PostgreSQL -----------------------------------------------------------------------------
# Only codec's exact encoder (text starting with a tab) can write NaN/Infinity; those
# documents are cleaned with a regular expression before the cast to jsonb (which cannot
# hold NaN). The pattern only rewrites a bare constant in value position.

_PG_NAN = r"([:,\[]\s*)NaN(?=\s*[,\]}])"
_PG_INF = r"([:,\[]\s*)(-?)Infinity(?=\s*[,\]}])"


def _pg_jsonb(compiler: SQLCompiler, doc_sql: str, **kw: Any) -> str:
    nan, inf = _bind(compiler, _PG_NAN, **kw), _bind(compiler, _PG_INF, **kw)
    null, big = _bind(compiler, r"\1null", **kw), _bind(compiler, rf"\1\2{MAX_FLOAT!r}", **kw)
    cleaned = f"regexp_replace(regexp_replace({doc_sql}, {nan}, {null}, 'g'), {inf}, {big}, 'g')"
    return f"CAST(CASE WHEN left({doc_sql}, 1) = chr(9) THEN {cleaned} ELSE {doc_sql} END AS jsonb)"


@compiles(_JsonGet, "postgresql")
def _pg_get(element: _JsonGet, compiler: SQLCompiler, **kw: Any) -> str:
    doc = _pg_jsonb(compiler, compiler.process(element.doc, **kw), **kw)
    value = f"({doc} #> {_bind(compiler, element.keys, ARRAY(Text()), **kw)})"
    if element.kind == "type":
        return (
            f"(CASE WHEN jsonb_typeof({value}) = 'boolean' THEN {value} #>> '{{}}' "
            f"ELSE jsonb_typeof({value}) END)"
        )
    if element.kind == "number":
        return (
            f"(CASE WHEN jsonb_typeof({value}) = 'number' "
            f"THEN CAST({value} #>> '{{}}' AS DOUBLE PRECISION) END)"
        )
    return f"(CASE WHEN jsonb_typeof({value}) = 'string' THEN {value} #>> '{{}}' END)"


@compiles(_JsonArrayAny, "postgresql")
def _pg_array_any(element: _JsonArrayAny, compiler: SQLCompiler, **kw: Any) -> str:
    doc = _pg_jsonb(compiler, compiler.process(element.doc, **kw), **kw)
    value = compiler.process(element.value, **kw)
    test = "=" if element.mode == "eq" else "~"
    return (
        f"EXISTS (SELECT 1 FROM jsonb_array_elements_text(CASE WHEN jsonb_typeof({doc}) = "
        f"'array' THEN {doc} ELSE '[]'::jsonb END) AS mirror_el(value) "
        f"WHERE mirror_el.value {test} {value})"
    )


@compiles(_JsonArrayLength, "postgresql")
def _pg_array_length(element: _JsonArrayLength, compiler: SQLCompiler, **kw: Any) -> str:
    doc = _pg_jsonb(compiler, compiler.process(element.doc, **kw), **kw)
    return f"(CASE WHEN jsonb_typeof({doc}) = 'array' THEN jsonb_array_length({doc}) ELSE 0 END)"


# --- anything else ------------------------------------------------------------------------


@compiles(_JsonGet)
@compiles(_JsonArrayAny)
@compiles(_JsonArrayLength)
def _unsupported(element: ColumnElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    raise CompileError(
        f"JSON queries are implemented for sqlite and postgresql, not {compiler.dialect.name}"
    )
