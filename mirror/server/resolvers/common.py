"""What every resolver shares: the per-request context, ids, cursors, connections.

Resolvers are plain Python objects. :func:`mirror.server.graphql_api.field_resolver`
maps a GraphQL field ``fooBar(argName: ...)`` on an object to the attribute or method
``foo_bar(arg_name=...)`` of the Python value standing for it (dicts are read by key), so
a resolver class reads like the schema and needs no registration.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from graphql import GraphQLError

from mirror.errors import MirrorError
from mirror.paths import wandb_time
from mirror.server.context import ServerContext
from mirror.store import codec

EPOCH = "1970-01-01T00:00:00Z"
"""Stand-in for a non-null ``DateTime`` the store does not know (e.g. a bare project)."""


def now_iso() -> str:
    """Current UTC time the way W&B writes timestamps (``2024-01-01T00:00:00Z``).

    Second precision, like the file_stream route and upstream, so that timestamp strings
    of every origin compare correctly as strings (``...:00Z`` vs ``...:00.5Z`` would not).
    """
    return wandb_time()


class RequestContext:
    """One GraphQL request: the server context plus one read session.

    All reads of a request share one session, so a page of runs is one consistent
    snapshot and costs one connection checkout. A mutation calls :meth:`after_write` once
    it committed, so that reads after it (its payload, the next aliased mutation) open a
    fresh snapshot that sees the write.
    """

    def __init__(self, server: ServerContext) -> None:
        self.server = server
        self._stack = ExitStack()
        self._session: Any = None
        self.cache: dict[Any, Any] = {}
        """Per-request memo (e.g. a project's ids, shared by the 50 runs of a page)."""

    @property
    def session(self) -> Any:
        """The request's read session (a ``sqlmodel.Session``, opened on first use)."""
        if self._session is None:
            self._session = self._stack.enter_context(self.server.store.session())
        return self._session

    @contextmanager
    def write(self) -> Iterator[Any]:
        """A write transaction; the read snapshot is dropped so later reads see it."""
        self.after_write()
        with self.server.store.transaction() as s:
            yield s
        self.after_write()

    def after_write(self) -> None:
        self._stack.close()
        self._stack = ExitStack()
        self._session = None
        self.cache.clear()

    def close(self) -> None:
        self._stack.close()
        self._session = None

    def require_authoritative(self) -> None:
        """Edits apply directly only in authoritative mode (the outbox does not exist yet)."""
        if not self.server.authoritative:
            raise MirrorError(
                "edits need --authoritative until the outbox lands",
                hint="Start the server with `mirror serve --authoritative` to apply edits "
                "to the store directly.",
            )


# --- ids and cursors -------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def unb64(value: str) -> str | None:
    """Decode an opaque id/cursor; ``None`` if it is not base64 of UTF-8 text."""
    try:
        return base64.b64decode(value.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return None


def parse_run_storage_id(value: str) -> tuple[str, str, str] | None:
    """``(entity, project, run_id)`` from a computed storage id, else ``None``.

    Entity and project names cannot hold ``:``, so they are split off from the right and
    whatever remains is the run id.
    """
    raw = unb64(value)
    if raw is None or not raw.startswith("Run:v1:"):
        return None
    parts = raw[len("Run:v1:") :].rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        return None
    run_id, project, entity = parts
    return entity, project, run_id


def file_id(run_pk: int, name: str) -> str:
    """A stable opaque ``File.id`` that decodes back to ``(run_pk, name)``."""
    return b64(f"File:{run_pk}:{name}")


def parse_file_id(value: str) -> tuple[int, str] | None:
    raw = unb64(value)
    if raw is None or not raw.startswith("File:"):
        return None
    pk, sep, name = raw[len("File:") :].partition(":")
    if not sep or not pk.isdigit() or not name:
        return None
    return int(pk), name


def offset_cursor(index: int) -> str:
    """Cursor of the item at absolute position ``index`` of an ordered listing."""
    return b64(f"cursor:{index}")


def offset_after(cursor: str | None) -> int:
    """The offset where a page ``after`` the given cursor starts."""
    if cursor is None or cursor == "":
        return 0
    raw = unb64(cursor)
    if raw is None or not raw.startswith("cursor:") or not raw[7:].isdigit():
        raise GraphQLError(f"invalid cursor {cursor!r}")
    return int(raw[7:]) + 1


def run_cursor(keys: Sequence[Any]) -> str:
    """Keyset cursor of a run: its sort-key values under the listing's order."""
    return b64("keyset:" + json.dumps(list(keys), separators=(",", ":")))


def parse_run_cursor(cursor: str | None) -> tuple[list[Any] | None, int]:
    """``(sort-key values, 0)`` of a keyset cursor, or ``(None, offset)`` of a positional one."""
    if cursor is None or cursor == "":
        return None, 0
    raw = unb64(cursor)
    if raw is not None and raw.startswith("keyset:"):
        try:
            values = json.loads(raw[len("keyset:") :])
        except ValueError:
            values = None
        if isinstance(values, list):
            return values, 0
    return None, offset_after(cursor)


def name_cursor(name: str) -> str:
    """Keyset cursor of a file: its name (files are listed by name)."""
    return b64(f"file:{name}")


def name_after(cursor: str | None) -> str | None:
    if cursor is None or cursor == "":
        return None
    raw = unb64(cursor)
    if raw is None or not raw.startswith("file:"):
        raise GraphQLError(f"invalid cursor {cursor!r}")
    return raw[5:]


def page_limit(first: int | None) -> int | None:
    if first is None:
        return None
    if first < 0:
        raise GraphQLError("first must not be negative")
    return first


@dataclass
class Connection:
    """A Relay connection: ``edges{node cursor}``, ``pageInfo``, ``totalCount``.

    Every edge carries its cursor (the 0.31 client pages with the LAST EDGE's cursor, not
    ``pageInfo.endCursor``). ``totalCount`` is computed only if a query selects it.
    """

    nodes: Sequence[Any]
    cursors: Sequence[str]
    has_next: bool
    has_previous: bool = False
    count: Callable[[], int] | None = None
    upload_headers: list[str] = field(default_factory=list)

    def edges(self) -> list[dict[str, Any]]:
        return [{"node": n, "cursor": c} for n, c in zip(self.nodes, self.cursors, strict=True)]

    def page_info(self) -> dict[str, Any]:
        return {
            "hasNextPage": self.has_next,
            "hasPreviousPage": self.has_previous,
            "startCursor": self.cursors[0] if self.cursors else None,
            "endCursor": self.cursors[-1] if self.cursors else None,
        }

    def total_count(self) -> int | None:
        return None if self.count is None else self.count()


def offset_connection(
    fetch: Callable[[int, int | None], Sequence[Any]],
    after: str | None,
    first: int | None,
    count: Callable[[], int] | None = None,
) -> Connection:
    """Page an ordered listing by offset: ``fetch(offset, limit)`` returns raw items.

    One extra item is fetched to learn ``hasNextPage`` without a count query.
    """
    start = offset_after(after)
    limit = page_limit(first)
    items = list(fetch(start, None if limit is None else limit + 1))
    has_next = limit is not None and len(items) > limit
    if has_next:
        items = items[:limit]
    cursors = [offset_cursor(start + i) for i in range(len(items))]
    return Connection(items, cursors, has_next, start > 0, count)


# --- JSON values ----------------------------------------------------------------------


def json_string(value: Any) -> str:
    """A JSONString field's value: W&B's wire JSON (bare NaN/Infinity, exact ints)."""
    return codec.dumps_wire({} if value is None else value)


def parse_json_input(value: Any, what: str) -> Any:
    """A JSONString argument: text the client ``json.dumps``-ed (or, leniently, a value)."""
    if value is None or not isinstance(value, (str, bytes)):
        return value
    try:
        return codec.loads_wire(value)
    except ValueError as exc:
        raise GraphQLError(f"{what} is not valid JSON: {exc}") from exc


def pick_keys(doc: Any, keys: Sequence[str] | None) -> Any:
    """The listed top-level keys of a JSON document (all of it when ``keys`` is empty)."""
    if not keys or not isinstance(doc, dict):
        return doc
    return {k: doc[k] for k in keys if k in doc}
