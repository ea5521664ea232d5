"""Column types shared by the tables."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from mirror.store import codec


class JSONText(TypeDecorator[Any]):
    """A JSON value stored as text with :mod:`mirror.store.codec` (exact round-trip).

    Text rather than the dialect's JSON type: SQLite has none, PostgreSQL's ``jsonb``
    cannot hold NaN or wide integers, and the exactness rules must be the same on both.
    Queries reach into it through :mod:`mirror.store.jsonpath`, the one dialect-aware place.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return codec.dumps(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return codec.loads(value)
