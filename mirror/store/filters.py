"""W&B runs filters and order strings, compiled to SQL over the ``run`` table.

``api.runs(path, filters, order)`` and the server's ``runs(filters:, order:)`` /
``runCount(filters:)`` take MongoDB-style filters (wandb-protocol.md section 5). They are
compiled here into one SQLAlchemy boolean expression, so the database does the filtering
(and the counting, and the paging): runs are never loaded to be filtered in Python.

Semantics, MongoDB's where W&B does not say otherwise:

* Top-level keys are AND-ed; a bare value means ``$eq``; ``$and``/``$or``/``$nor`` take
  lists of filters (empty lists: ``$and`` and ``$nor`` match all, ``$or`` none).
* Field operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists $regex`` (with
  ``$options`` from ``imsx``), ``$not`` (negates a dict of operators) and ``$all``
  (tags). Several operators on one field are AND-ed.
* **Missing keys and nulls:** ``{"f": null}`` matches null *or* missing; ``$gt`` & co.,
  ``$in`` and ``$regex`` never match a missing value; ``$ne``, ``$nin``, ``$not`` and
  ``$nor`` do (they are exact negations). ``$exists: true`` matches a present key, even
  a JSON null.
* **Types:** values compare only with values of their kind (numbers with numbers,
  strings with strings, booleans by equality): ``{"config.lr": {"$gt": 0.01}}`` never
  matches a string ``lr``. Run columns hold strings, so they take string operands; an
  epoch number against ``createdAt`` is an error (timestamps are ISO-8601 strings, which
  compare correctly as text). NaN operands are an error (W&B answers 400); NaN in stored
  summaries reads as null (see :mod:`mirror.store.jsonpath`).
* **Fields:** the keys of :data:`RUN_FIELDS` (camelCase and snake_case), ``tags``,
  ``duration`` (summary ``_wandb.runtime``, else ``_runtime``), ``_step``/``_runtime``/
  ``_timestamp`` (summary), ``config.<key>[.value][.<nested>...]`` (config is stored
  wrapped, so ``config.a.b`` reads ``a.value.b``), ``summary_metrics.<k>[.<nested>...]``
  (also ``summaryMetrics.``, ``summary.``) and ``keys_info.keys.<history key>`` (the
  rest of the name is one key: history keys contain dots). Dotted names are split on
  dots, so a key that itself holds a dot is only reachable under ``keys_info``.
* **Unknown fields raise** :class:`~mirror.errors.FilterError` listing the valid ones.
  A silently ignored typo would return every run, and a sync or an export that trusts
  the result would act on the wrong runs.
* **Tags:** ``{"tags": "x"}`` contains x; ``$ne`` does not contain; ``$in`` any of;
  ``$nin`` none of; ``$all`` all of; ``$regex`` some tag matches; ``{"tags": null}`` and
  ``$exists: false`` mean no tags at all.
* ``$regex`` follows Python's ``re.search`` on SQLite (close to W&B's RE2) and
  PostgreSQL's ``~`` there.

Where values are read: a top-level config key (``config.<key>``, ``config.<key>.value``)
or summary key (``summary_metrics.<key>``, ``_step``...) comes from the ``run_value`` side
table (:mod:`mirror.store.run_values`), so a predicate is an index range scan and no JSON
is parsed; deeper paths, ``duration`` and ``keys_info`` read the JSON text through
:mod:`mirror.store.jsonpath`. Both give the same answers (tests/test_filters.py checks it).

Order: ``"+field"``, ``"-field"`` or ``"field"`` (ascending); empty means
``"+created_at"``. Any filter field except ``tags`` can be a sort key. Runs without a
value sort last in both directions (so ``sweep.best_run()`` picks a run that has the
metric), and the run's primary key breaks ties, so pages never overlap or skip.
"""

from __future__ import annotations

import json
import math
import numbers
import operator
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from types import MappingProxyType
from typing import Any, NamedTuple

from sqlalchemy import Float, Table, and_, case, false, func, not_, or_, select, true, type_coerce
from sqlalchemy.sql.elements import ColumnElement

from mirror.errors import FilterError
from mirror.store import jsonpath
from mirror.store.models import Run, RunValue

__all__ = [
    "RUN_FIELDS",
    "OrderColumn",
    "compile_filters",
    "compile_order",
    "keyset_after",
    "order_columns",
    "register_sqlite_functions",
]

Pred = ColumnElement[bool]

RUN: Table = Run.__table__  # type: ignore[attr-defined]
VALUE: Table = RunValue.__table__  # type: ignore[attr-defined]

#: Filter/order field name (W&B backend camelCase and snake_case) -> ``run`` column.
RUN_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "name": "run_id",
        "id": "run_id",
        "displayName": "display_name",
        "display_name": "display_name",
        "state": "state",
        "createdAt": "created_at",
        "created_at": "created_at",
        "heartbeatAt": "heartbeat_at",
        "heartbeat_at": "heartbeat_at",
        "updatedAt": "updated_at",
        "updated_at": "updated_at",
        "group": "group_name",
        "host": "host",
        "jobType": "job_type",
        "job_type": "job_type",
        "username": "username",
        "sweep": "sweep_name",
        "sweepName": "sweep_name",
        "commit": "commit",
        "notes": "notes",
        "description": "description",
    }
)

_SUMMARY_PREFIXES = ("summary_metrics", "summaryMetrics", "summary")
_SUMMARY_FIELDS = ("_step", "_runtime", "_timestamp")
_HISTORY_KEYS_PREFIX = "keys_info.keys."
_TIMESTAMP_COLUMNS = ("created_at", "heartbeat_at", "updated_at")
_MAX_DEPTH = 32
_INT64 = 2**63

_VALID_FIELDS = (
    ", ".join(sorted(RUN_FIELDS, key=str.lower))
    + ", tags, duration, _step, _runtime, _timestamp, config.<key>, config.<key>.value, "
    "summary_metrics.<key>, keys_info.keys.<history key>"
)


def _error(message: str, hint: str | None = None) -> FilterError:
    return FilterError(message, hint=hint)


def _flag(pred: Pred) -> ColumnElement[int]:
    """1 where ``pred`` holds, else 0: a sort key that is a plain integer in every dialect
    (and in a paginator's cursor), unlike a boolean expression."""
    return case((pred, 1), else_=0)


def _negate(pred: Pred) -> Pred:
    """Exact negation: a NULL (unknown, e.g. a missing key) counts as "no match" first."""
    return not_(func.coalesce(pred, false()))


# --- operands --------------------------------------------------------------------------------


def _number(value: Any) -> int | float | None:
    """``value`` as a bindable number, None if it is not one (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        as_int = int(value)
        return as_int if -_INT64 <= as_int < _INT64 else float(as_int)
    as_float = float(value)
    if not math.isfinite(as_float):
        raise _error(
            f"the filter value {value!r} is not a finite number",
            "NaN and Infinity cannot be compared; use a finite bound such as 1e308.",
        )
    return as_float


def _scalar_number(name: str, value: Any) -> Any:
    """``value`` as the number a comparison binds; objects and lists are refused."""
    number = _number(value)
    if number is None:
        raise _error(
            f"{name!r}: comparing whole objects or lists ({_describe(value)}) is not "
            "supported",
            'Compare a nested key instead, e.g. {"config.opt.name": "adam"}.',
        )
    return number


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


# --- fields ----------------------------------------------------------------------------------


class _Field:
    """Something a filter can test and an order can sort by.

    Subclasses implement what makes sense for their kind and inherit errors for the rest.
    Predicates may be NULL where the value is missing; callers negate with :func:`_negate`.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def _unsupported(self, what: str, hint: str | None = None) -> FilterError:
        return _error(f"{what} is not supported on {self.name!r}", hint)

    def _bad_operand(self, value: Any, expected: str) -> FilterError:
        return _error(f"{self.name!r} compares with {expected}, not {_describe(value)}")

    def eq(self, value: Any) -> Pred:
        raise self._unsupported("equality")

    def compare(self, op: Callable[[Any, Any], Any], value: Any) -> Pred:
        raise self._unsupported("$gt/$gte/$lt/$lte")

    def in_(self, values: Sequence[Any]) -> Pred:
        return or_(false(), *(self.eq(v) for v in values))

    def all_(self, values: Sequence[Any]) -> Pred:
        raise self._unsupported("$all", "$all applies to tags, e.g. {\"tags\": {\"$all\": [...]}}.")

    def exists(self) -> Pred:
        raise self._unsupported("$exists")

    def regex(self, pattern: str) -> Pred:
        raise self._unsupported("$regex")

    def sort_keys(self) -> list[tuple[ColumnElement[Any], bool]]:
        """Sort expressions, each with "follows the order's direction" (False: always ASC)."""
        raise self._unsupported("ordering")


class _Column(_Field):
    """A text column of ``run`` (ids, names, state, ISO-8601 timestamps...)."""

    def __init__(self, name: str, column: str) -> None:
        super().__init__(name)
        self.col: ColumnElement[Any] = RUN.c[column]
        self.timestamp = column in _TIMESTAMP_COLUMNS

    def _string(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        hint = None
        if self.timestamp:
            hint = (
                "Timestamps are ISO-8601 strings, "
                'e.g. {"createdAt": {"$gt": "2024-01-01T00:00:00Z"}}.'
            )
        raise _error(f"{self.name!r} compares with strings, not {_describe(value)}", hint)

    def eq(self, value: Any) -> Pred:
        return self.col.is_(None) if value is None else self.col == self._string(value)

    def compare(self, op: Callable[[Any, Any], Any], value: Any) -> Pred:
        pred: Pred = op(self.col, self._string(value))
        return pred

    def in_(self, values: Sequence[Any]) -> Pred:
        strings = [self._string(v) for v in values if v is not None]
        pred = self.col.in_(strings) if strings else false()
        return or_(pred, self.col.is_(None)) if None in values else pred

    def exists(self) -> Pred:
        return self.col.is_not(None)

    def regex(self, pattern: str) -> Pred:
        return self.col.regexp_match(pattern)

    def sort_keys(self) -> list[tuple[ColumnElement[Any], bool]]:
        return [(_flag(self.col.is_(None)), False), (self.col, True)]


class _Json(_Field):
    """A value at a key path inside a JSON column (config, summary, history keys)."""

    def __init__(self, name: str, doc: ColumnElement[Any], keys: Sequence[str]) -> None:
        super().__init__(name)
        self.kind = jsonpath.json_type(doc, keys)
        self.num = jsonpath.json_number(doc, keys)
        self.text = jsonpath.json_string(doc, keys)

    def eq(self, value: Any) -> Pred:
        if value is None:
            return func.coalesce(self.kind, "null") == "null"
        if isinstance(value, bool):
            return self.kind == ("true" if value else "false")
        if isinstance(value, str):
            return self.text == value
        return self.num == _scalar_number(self.name, value)

    def compare(self, op: Callable[[Any, Any], Any], value: Any) -> Pred:
        if isinstance(value, str):
            pred: Pred = op(self.text, value)
            return pred
        number = _number(value)
        if number is None:
            raise self._bad_operand(value, "a number or a string")
        pred = op(self.num, number)
        return pred

    def in_(self, values: Sequence[Any]) -> Pred:
        strings = [v for v in values if isinstance(v, str)]
        numbers_ = [v for v in values if not isinstance(v, (str, bool)) and v is not None]
        others = [v for v in values if v is None or isinstance(v, bool)]
        parts = [self.eq(v) for v in others]
        if strings:
            parts.append(self.text.in_(strings))
        if numbers_:
            bound = [_number(v) for v in numbers_]
            if any(b is None for b in bound):
                raise self._bad_operand(values, "a list of JSON scalars")
            parts.append(self.num.in_(bound))
        return or_(false(), *parts)

    def exists(self) -> Pred:
        return self.kind.is_not(None)

    def regex(self, pattern: str) -> Pred:
        return self.text.regexp_match(pattern)

    def sort_keys(self) -> list[tuple[ColumnElement[Any], bool]]:
        # Numbers, then strings, then the rest (missing, null, NaN, booleans, containers)
        # in both directions and both dialects. Within a rank, one value key is set for
        # all runs and the other NULL for all, so keyset paging stays exact.
        rank = case({"number": 0, "string": 1}, value=self.kind, else_=2)
        return [(rank, False), (self.num, True), (self.text, True)]


class _Indexed(_Field):
    """A top-level config or summary value, read from the ``run_value`` side table.

    Same answers as :class:`_Json` at that path (the table holds what the JSON functions
    would read, see :mod:`mirror.store.run_values`), without parsing any JSON: a predicate
    is ``run.pk IN (rows of this key satisfying it)``, an index range scan on ``(doc, key,
    num)`` or ``(doc, key, text)``; a run without the key has no row, so it never
    matches, which is exactly the JSON semantics of a missing value. Sort keys look the
    row up by primary key for each run that passed the filter.
    """

    def __init__(self, name: str, doc: str, key: str) -> None:
        super().__init__(name)
        self.doc = doc
        self.key = key
        self.num = type_coerce(VALUE.c.num, Float())
        self.text = VALUE.c.text

    def _having(self, *conds: Pred) -> Pred:
        """Runs holding the key with a value that satisfies ``conds`` (never NULL)."""
        rows = select(VALUE.c.run_pk).where(VALUE.c.doc == self.doc, VALUE.c.key == self.key)
        pred: Pred = RUN.c.pk.in_(rows.where(*conds))
        return pred

    def _value(self, value: Any) -> Pred:
        """The row condition "the value equals ``value``" (``value`` not None)."""
        if isinstance(value, bool):
            return VALUE.c.kind == ("true" if value else "false")
        if isinstance(value, str):
            return self.text == value
        return self.num == _scalar_number(self.name, value)

    def _null_or_missing(self) -> Pred:
        return not_(self._having(VALUE.c.kind != "null"))

    def eq(self, value: Any) -> Pred:
        if value is None:
            return self._null_or_missing()
        return self._having(self._value(value))

    def compare(self, op: Callable[[Any, Any], Any], value: Any) -> Pred:
        if isinstance(value, str):
            return self._having(op(self.text, value))
        number = _number(value)
        if number is None:
            raise self._bad_operand(value, "a number or a string")
        return self._having(op(self.num, number))

    def in_(self, values: Sequence[Any]) -> Pred:
        conds = [self._value(v) for v in values if v is not None]
        pred = self._having(or_(*conds)) if conds else false()
        return or_(pred, self._null_or_missing()) if None in values else pred

    def exists(self) -> Pred:
        return self._having()

    def regex(self, pattern: str) -> Pred:
        return self._having(self.text.regexp_match(pattern))

    def _lookup(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        return (
            select(column)
            .where(VALUE.c.run_pk == RUN.c.pk, VALUE.c.doc == self.doc, VALUE.c.key == self.key)
            .scalar_subquery()
        )

    def sort_keys(self) -> list[tuple[ColumnElement[Any], bool]]:
        # As _Json: numbers, then strings, then the rest (missing, null, booleans...).
        rank = self._lookup(case({"number": 0, "string": 1}, value=VALUE.c.kind, else_=2))
        return [
            (func.coalesce(rank, 2), False),
            (self._lookup(self.num), True),
            (self._lookup(self.text), True),
        ]


class _Number(_Field):
    """A derived numeric value (``duration``)."""

    def __init__(self, name: str, expr: ColumnElement[Any]) -> None:
        super().__init__(name)
        self.expr = expr

    def _value(self, value: Any) -> int | float:
        number = _number(value)
        if number is None:
            raise self._bad_operand(value, "numbers (seconds)")
        return number

    def eq(self, value: Any) -> Pred:
        return self.expr.is_(None) if value is None else self.expr == self._value(value)

    def compare(self, op: Callable[[Any, Any], Any], value: Any) -> Pred:
        pred: Pred = op(self.expr, self._value(value))
        return pred

    def exists(self) -> Pred:
        return self.expr.is_not(None)

    def sort_keys(self) -> list[tuple[ColumnElement[Any], bool]]:
        return [(_flag(self.expr.is_(None)), False), (self.expr, True)]


class _Tags(_Field):
    """The run's tags, a JSON array of strings: equality means "contains"."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.col: ColumnElement[Any] = RUN.c.tags

    def _tag(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        raise _error(
            f"tags are strings, not {_describe(value)}",
            'Use {"tags": "x"}, {"tags": {"$in": ["x", "y"]}} or {"tags": {"$all": [...]}}.',
        )

    def _none(self) -> Pred:
        return func.coalesce(jsonpath.array_length(self.col), 0) == 0

    def eq(self, value: Any) -> Pred:
        if value is None:
            return self._none()
        return jsonpath.array_contains(self.col, self._tag(value))

    def all_(self, values: Sequence[Any]) -> Pred:
        if not values:
            return false()  # MongoDB: $all of nothing matches nothing
        return and_(*(jsonpath.array_contains(self.col, self._tag(v)) for v in values))

    def exists(self) -> Pred:
        return not_(self._none())

    def regex(self, pattern: str) -> Pred:
        return jsonpath.array_matches(self.col, pattern)


def _keys(name: str, rest: str) -> list[str]:
    keys = rest.split(".")
    if not rest or "" in keys:
        raise _error(
            f"field {name!r} has an empty key",
            'Name a key after the prefix, e.g. "config.lr" or "summary_metrics.loss".',
        )
    return keys


def _resolve(name: Any) -> _Field:
    """The field a filter or order names."""
    if not isinstance(name, str):
        raise _error(f"field names are strings, not {_describe(name)}")
    column = RUN_FIELDS.get(name)
    if column is not None:
        return _Column(name, column)
    if name == "tags":
        return _Tags(name)
    summary = RUN.c.summary
    if name == "duration":
        runtime = func.coalesce(
            jsonpath.json_number(summary, ["_wandb", "runtime"]),
            jsonpath.json_number(summary, ["_runtime"]),
        )
        return _Number(name, runtime)
    if name in _SUMMARY_FIELDS:
        return _Indexed(name, "summary", name)
    if name.startswith(_HISTORY_KEYS_PREFIX):
        key = name[len(_HISTORY_KEYS_PREFIX) :]
        if not key:
            raise _error(f"field {name!r} has an empty key")
        return _Json(name, RUN.c.history_keys, ["keys", key])
    head, dot, rest = name.partition(".")
    if dot and head == "config":
        keys = _keys(name, rest)
        if keys[1:2] != ["value"]:  # stored wrapped: {"lr": {"value": 0.1, "desc": null}}
            keys.insert(1, "value")
        if len(keys) == 2:  # a top-level key: indexed in run_value
            return _Indexed(name, "config", keys[0])
        return _Json(name, RUN.c.config, keys)
    if dot and head in _SUMMARY_PREFIXES:
        keys = _keys(name, rest)
        if len(keys) == 1:
            return _Indexed(name, "summary", keys[0])
        return _Json(name, summary, keys)
    raise _error(f"unknown run field {name!r}", f"Valid fields: {_VALID_FIELDS}.")


# --- operators -------------------------------------------------------------------------------


def _list(field: _Field, op: str, value: Any) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise _error(
            f"{op} on {field.name!r} takes a list, not {_describe(value)}",
            f'Write e.g. {{"{field.name}": {{"{op}": ["a", "b"]}}}}.',
        )
    return list(value)


def _exists(field: _Field, value: Any) -> Pred:
    if not isinstance(value, (bool, int)):
        raise _error(f"$exists on {field.name!r} takes true or false, not {_describe(value)}")
    return field.exists() if value else _negate(field.exists())


def _compare(op: Callable[[Any, Any], Any]) -> Callable[[_Field, Any], Pred]:
    def apply(field: _Field, value: Any) -> Pred:
        if value is None or isinstance(value, bool):
            raise _error(
                f"ordering comparison of {field.name!r} with {_describe(value)}",
                "$gt/$gte/$lt/$lte take a number or a string.",
            )
        return field.compare(op, value)

    return apply


_FIELD_OPS: dict[str, Callable[[_Field, Any], Pred]] = {
    "$eq": lambda f, v: f.eq(v),
    "$ne": lambda f, v: _negate(f.eq(v)),
    "$gt": _compare(operator.gt),
    "$gte": _compare(operator.ge),
    "$lt": _compare(operator.lt),
    "$lte": _compare(operator.le),
    "$in": lambda f, v: f.in_(_list(f, "$in", v)),
    "$nin": lambda f, v: _negate(f.in_(_list(f, "$nin", v))),
    "$all": lambda f, v: f.all_(_list(f, "$all", v)),
    "$exists": _exists,
}
_REGEX_FLAGS = frozenset("imsx")


def _regex(field: _Field, pattern: Any, options: Any) -> Pred:
    """``$regex`` (+ ``$options``): checked with Python's ``re`` here, before any SQL runs."""
    if not isinstance(pattern, str):
        raise _error(f"$regex on {field.name!r} takes a string, not {_describe(pattern)}")
    if options is not None:
        if not isinstance(options, str) or not set(options) <= _REGEX_FLAGS:
            raise _error(
                f"$options on {field.name!r} must be letters of 'imsx', not {options!r}"
            )
        if options:
            pattern = f"(?{''.join(sorted(set(options)))}){pattern}"
    try:
        re.compile(pattern)
    except re.error as exc:
        raise _error(
            f"invalid $regex {pattern!r} on {field.name!r}: {exc}",
            "Regular expressions use Python/RE2 syntax, e.g. \"^foo.*\".",
        ) from exc
    return field.regex(pattern)


def _field_ops(field: _Field, spec: Mapping[str, Any], depth: int) -> Pred:
    """AND of the operators of ``{"$gt": 1, "$lt": 5}`` applied to ``field``."""
    if depth > _MAX_DEPTH:
        raise _error(f"the filter on {field.name!r} is nested too deeply")
    parts: list[Pred] = []
    for op, value in spec.items():
        if op == "$regex":
            parts.append(_regex(field, value, spec.get("$options")))
        elif op == "$options":
            if "$regex" not in spec:
                raise _error(f"$options on {field.name!r} needs a $regex")
        elif op == "$not":
            if not isinstance(value, Mapping) or not _is_operators(value):
                raise _error(
                    f"$not on {field.name!r} takes operators, not {_describe(value)}",
                    f'Write e.g. {{"{field.name}": {{"$not": {{"$gt": 1}}}}}}.',
                )
            parts.append(_negate(_field_ops(field, value, depth + 1)))
        elif op in _FIELD_OPS:
            parts.append(_FIELD_OPS[op](field, value))
        else:
            raise _error(
                f"unknown operator {op!r} on {field.name!r}",
                "Field operators: " + ", ".join([*_FIELD_OPS, "$regex", "$options", "$not"]),
            )
    return and_(true(), *parts)


def _is_operators(spec: Mapping[Any, Any]) -> bool:
    """Is ``spec`` a dict of operators (``{"$gt": 1}``) rather than a value to equal?"""
    ops = [isinstance(k, str) and k.startswith("$") for k in spec]
    if any(ops) and not all(ops):
        raise _error(
            f"cannot mix operators and plain keys in {spec!r}",
            "Put each operator on its own field, e.g. {\"config.lr\": {\"$gt\": 0.1}}.",
        )
    return bool(ops) and all(ops)


_LOGICAL: dict[str, Callable[[list[Pred]], Pred]] = {
    "$and": lambda parts: and_(true(), *parts),
    "$or": lambda parts: or_(false(), *parts),
    "$nor": lambda parts: _negate(or_(false(), *parts)),
}


def _document(doc: Any, where: str, depth: int) -> Pred:
    """A filter document: the AND of its fields and logical operators."""
    if not isinstance(doc, Mapping):
        raise _error(f"{where} must be a filter object, not {_describe(doc)}")
    if depth > _MAX_DEPTH:
        raise _error(f"{where} is nested too deeply (more than {_MAX_DEPTH} levels)")
    parts: list[Pred] = []
    for key, value in doc.items():
        if isinstance(key, str) and key.startswith("$"):
            combine = _LOGICAL.get(key)
            if combine is None:
                raise _error(
                    f"unknown top-level operator {key!r} in {where}",
                    "Top-level operators are $and, $or and $nor; field names have no '$'.",
                )
            if not isinstance(value, (list, tuple)):
                raise _error(
                    f"{key} in {where} takes a list of filters, not {_describe(value)}",
                    f'Write e.g. {{"{key}": [{{"state": "finished"}}, {{"tags": "x"}}]}}.',
                )
            subs = [_document(v, f"{where}.{key}[{i}]", depth + 1) for i, v in enumerate(value)]
            parts.append(combine(subs))
            continue
        field = _resolve(key)
        if isinstance(value, Mapping) and _is_operators(value):
            parts.append(_field_ops(field, value, depth + 1))
        else:
            parts.append(field.eq(value))
    return and_(true(), *parts)


def compile_filters(filters: Mapping[str, Any] | str | None) -> Pred:
    """The SQL condition on ``run`` for a W&B filter (dict, or its JSON text as sent).

    ``None``, ``""``, ``"{}"`` and ``{}`` match every run. Raises
    :class:`~mirror.errors.FilterError` for anything that is not a valid filter, before
    any SQL runs.
    """
    if filters is None:
        return true()
    if isinstance(filters, (str, bytes)):
        text = filters.decode("utf-8") if isinstance(filters, bytes) else filters
        if not text.strip():
            return true()
        try:
            filters = json.loads(text)
        except ValueError as exc:
            raise _error(
                f"filters are not valid JSON: {exc}",
                'Pass a dict or its JSON text, e.g. \'{"state": "finished"}\'.',
            ) from exc
        if filters is None:
            return true()
    return _document(filters, "filters", 0)


# --- order -----------------------------------------------------------------------------------


class OrderColumn(NamedTuple):
    """One sort key: ``expr`` sorted descending or ascending. A paginator selects the
    ``expr`` of each key (e.g. labelled) to remember where a page ended."""

    expr: ColumnElement[Any]
    descending: bool


DEFAULT_ORDER = "+created_at"


def order_columns(order: str | None) -> list[OrderColumn]:
    """The sort keys of an order string, ending with the ``run.pk`` tie-breaker.

    Each field expands into a rank that is always ascending (runs without a value rank
    last), then its value(s) in the requested direction; the primary key follows the
    same direction.
    """
    if order is not None and not isinstance(order, str):
        raise _error(f"order must be a string, not {_describe(order)}")
    text = (order or "").strip() or DEFAULT_ORDER  # "+x" in a URL query decodes to " x"
    descending = text.startswith("-")
    name = text[1:].strip() if text[0] in "+-" else text
    try:
        field = _resolve(name)
        keys = field.sort_keys()
    except FilterError as exc:
        raise _error(
            f"cannot order by {order!r}: {exc.message}",
            'Order is "+field" or "-field", e.g. "-created_at" or "+summary_metrics.loss".',
        ) from exc
    columns = [OrderColumn(expr, descending and directional) for expr, directional in keys]
    columns.append(OrderColumn(RUN.c.pk, descending))
    return columns


def compile_order(order: str | None) -> list[ColumnElement[Any]]:
    """``ORDER BY`` clauses for an order string: ``select(...).order_by(*compile_order(o))``."""
    return [c.expr.desc() if c.descending else c.expr.asc() for c in order_columns(order)]


def keyset_after(columns: Sequence[OrderColumn], values: Sequence[Any]) -> Pred:
    """Runs strictly after the run whose sort-key values are ``values`` (keyset paging).

    ``values`` are what selecting each ``columns[i].expr`` returned for the last run of
    the previous page. Within the runs that tie on the earlier keys, a value key is
    either NULL for all of them or for none (that is what the rank keys ensure), so a
    NULL value just defers to the next key.
    """
    if len(columns) != len(values):
        raise ValueError(f"{len(columns)} sort keys but {len(values)} values")
    options: list[Pred] = []
    for i, (column, value) in enumerate(zip(columns, values, strict=True)):
        if value is None:
            continue
        earlier = zip(columns[:i], values[:i], strict=True)
        ties = [c.expr.is_not_distinct_from(v) for c, v in earlier]
        beyond = column.expr < value if column.descending else column.expr > value
        options.append(and_(*ties, beyond))
    return or_(false(), *options)


# --- SQLite functions ------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _regexp(pattern: str | None, value: Any) -> int | None:
    """SQLite's ``X REGEXP P`` calls ``regexp(P, X)``: Python ``re.search`` semantics."""
    if pattern is None or value is None:
        return None
    return 1 if _compiled(pattern).search(str(value)) else 0


def register_sqlite_functions(dbapi_connection: sqlite3.Connection) -> None:
    """Install what compiled filters call on a SQLite connection (``regexp``, JSON helpers).

    Called from the engine's ``connect`` hook, so every pooled connection has them.
    """
    jsonpath.register_sqlite_functions(dbapi_connection)
    dbapi_connection.create_function("regexp", 2, _regexp, deterministic=True)
