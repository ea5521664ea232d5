"""GraphQL answers -> typed records, validated, with no I/O.

Why a separate layer: the network gives us dicts of unknown shape. Checking them in one
pure place means the client stays about HTTP, the parsers can be tested with plain dicts,
and a malformed answer fails *here* with a :class:`~mirror.errors.ProtocolError` that
names the field (``project.runs.edges[3].node.config: not valid JSON``) instead of a
``KeyError`` three layers up.

What counts as malformed: a missing key the documents asked for, a value of the wrong
type, a JSON-string field (``config``, ``summaryMetrics``...) that is not JSON. What does
not: odd *values*. ``NaN``, ``Infinity``, huge integers, nested media dicts, unicode keys
are data and pass through exactly (parsed with :func:`mirror.store.codec.loads_wire`).
Timestamps stay the server's strings; ``config`` stays in W&B's wrapped form.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from mirror.errors import ProtocolError
from mirror.records import FileRecord, ProjectRecord, RunRecord, SweepRecord
from mirror.store import codec

__all__ = [
    "Page",
    "Viewer",
    "dig",
    "parse_connection",
    "parse_file",
    "parse_history_rows",
    "parse_history_texts",
    "parse_project",
    "parse_run",
    "parse_sweep",
    "parse_upload_headers",
    "parse_viewer",
]

_MISSING = object()

class _Shape(ProtocolError):
    """A ProtocolError about one field (kept internal: callers catch ProtocolError)."""


def _fail(path: str, problem: str, operation: str | None) -> ProtocolError:
    return _Shape(f"malformed answer from the server: {path}: {problem}", operation=operation)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def dig(value: Any, *keys: str, path: str = "data", operation: str | None = None) -> Any:
    """``value[k1][k2]...``, raising a ProtocolError naming the first missing step.

    A ``None`` at the end is returned (GraphQL nullable fields); a ``None`` on the way is
    returned too, so ``dig(data, "project", "run")`` is None when the project is null.
    """
    for key in keys:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise _fail(path, f"expected an object, got {_type_name(value)}", operation)
        if key not in value:
            raise _fail(f"{path}.{key}", "missing", operation)
        value = value[key]
        path = f"{path}.{key}"
    return value


class _Node:
    """One GraphQL object and its path, with typed, path-naming accessors."""

    def __init__(self, value: Any, path: str, operation: str | None) -> None:
        if not isinstance(value, Mapping):
            raise _fail(path, f"expected an object, got {_type_name(value)}", operation)
        self.value = value
        self.path = path
        self.operation = operation

    def _get(self, key: str, required: bool) -> Any:
        if key not in self.value:
            if required:
                raise _fail(f"{self.path}.{key}", "missing", self.operation)
            return None
        return self.value[key]

    def _bad(self, key: str, want: str, got: Any) -> ProtocolError:
        return _fail(
            f"{self.path}.{key}", f"expected {want}, got {_type_name(got)}", self.operation
        )

    def text(self, key: str, *, required: bool = False, nullable: bool = True) -> str | None:
        value = self._get(key, required)
        if value is None:
            if not nullable:
                raise self._bad(key, "a string", value)
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self._bad(key, "a string", value)
        return value if isinstance(value, str) else repr(value)

    def req_str(self, key: str) -> str:
        value = self.text(key, required=True, nullable=False)
        assert value is not None
        return value

    def integer(self, key: str, *, required: bool = False) -> int | None:
        value = self._get(key, required)
        if value is None:
            return None
        result = _as_int(value)
        if result is None:
            raise self._bad(key, "an integer", value)
        return result

    def flag(self, key: str) -> bool:
        value = self._get(key, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._bad(key, "a boolean", value)
        return value

    def number(self, key: str) -> float | None:
        value = self._get(key, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(key, "a number", value)
        return float(value)

    def str_list(self, key: str) -> list[str]:
        value = self._get(key, False)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(key, "a list of strings", value)
        return list(value)

    def json_doc(self, key: str) -> dict[str, Any] | None:
        """A JSONString field holding an object (config, summaryMetrics, systemMetrics).

        W&B sends a string; some servers send the object inline, which the official
        client also accepts. ``null`` (either way) means "none".
        """
        value = self._get(key, False)
        if isinstance(value, str):
            try:
                value = codec.loads_wire(value)
            except ValueError as exc:
                raise _fail(
                    f"{self.path}.{key}", f"not valid JSON ({exc})", self.operation
                ) from None
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._bad(key, "a JSON object", value)
        return value

    def inline_json(self, key: str) -> dict[str, Any] | None:
        value = self._get(key, False)
        if isinstance(value, str):  # a server that string-encodes JSON fields
            try:
                value = codec.loads_wire(value)
            except ValueError:
                raise self._bad(key, "a JSON object", value) from None
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._bad(key, "a JSON object", value)
        return value

    def child(self, key: str) -> _Node | None:
        value = self._get(key, False)
        return None if value is None else _Node(value, f"{self.path}.{key}", self.operation)


def _as_int(value: Any) -> int | None:
    """An integer from JSON: an int, an integral float, or a decimal string (Int64)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


# --- connections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One page of a GraphQL connection.

    ``cursor`` is the last edge's cursor (what the official paginator passes as
    ``after``), falling back to ``pageInfo.endCursor``.
    """

    nodes: list[Any]
    paths: list[str]
    cursor: str | None
    has_next: bool


def parse_connection(conn: Any, path: str, operation: str | None = None) -> Page:
    """Validate ``{edges: [{node, cursor}], pageInfo: {endCursor, hasNextPage}}``."""
    node = _Node(conn, path, operation)
    edges = node._get("edges", True)
    if not isinstance(edges, list):
        raise node._bad("edges", "a list", edges)
    nodes: list[Any] = []
    paths: list[str] = []
    cursor: str | None = None
    for i, edge in enumerate(edges):
        e = _Node(edge, f"{path}.edges[{i}]", operation)
        nodes.append(e._get("node", True))
        paths.append(f"{path}.edges[{i}].node")
        cursor = e.text("cursor") or cursor
    info = node.child("pageInfo")
    if info is None:
        raise _fail(f"{path}.pageInfo", "missing", operation)
    has_next = info.flag("hasNextPage")
    if cursor is None:
        cursor = info.text("endCursor")
    return Page(nodes=nodes, paths=paths, cursor=cursor, has_next=has_next)


# --- records -------------------------------------------------------------------------------


def parse_run(
    value: Any, entity: str, project: str, *, path: str = "run", operation: str | None = None
) -> RunRecord:
    """A ``Run`` node (RunFragment, RunLightFragment or any subset) -> RunRecord.

    Fields the document did not select stay None: a record from the light listing has no
    config or summary, which is not the same as an empty one.
    """
    n = _Node(value, path, operation)
    user = n.child("user")
    history_keys = n.inline_json("historyKeys")
    last_step = _as_int(history_keys.get("lastStep")) if history_keys else None
    return RunRecord(
        entity=entity,
        project=project,
        run_id=n.req_str("name"),
        storage_id=n.text("id"),
        display_name=n.text("displayName"),
        state=n.text("state"),
        config=n.json_doc("config"),
        summary=n.json_doc("summaryMetrics"),
        system_metrics=n.json_doc("systemMetrics"),
        tags=n.str_list("tags"),
        notes=n.text("notes"),
        description=n.text("description"),
        group_name=n.text("group"),
        job_type=n.text("jobType"),
        commit=n.text("commit"),
        host=n.text("host"),
        username=user.text("username") if user else None,
        user_name=user.text("name") if user else None,
        read_only=n.flag("readOnly"),
        created_at=n.text("createdAt"),
        heartbeat_at=n.text("heartbeatAt"),
        updated_at=n.text("updatedAt"),
        history_line_count=n.integer("historyLineCount"),
        events_line_count=n.integer("eventsLineCount"),
        file_count=n.integer("fileCount"),
        last_step=last_step,
        history_keys=history_keys,
        sweep_name=n.text("sweepName"),
    )


def parse_project(
    value: Any,
    *,
    entity: str | None = None,
    path: str = "project",
    operation: str | None = None,
) -> ProjectRecord:
    n = _Node(value, path, operation)
    ent = n.text("entityName") or entity
    if ent is None:
        raise _fail(f"{path}.entityName", "missing", operation)
    return ProjectRecord(
        entity=ent,
        name=n.req_str("name"),
        upstream_id=n.text("id"),
        internal_id=n.text("internalId"),
        description=n.text("description"),
        created_at=n.text("createdAt"),
        is_benchmark=n.flag("isBenchmark"),
        read_only=n.flag("readOnly"),
        run_count=n.integer("runCount"),
    )


def parse_file(value: Any, *, path: str = "file", operation: str | None = None) -> FileRecord:
    n = _Node(value, path, operation)
    return FileRecord(
        name=n.req_str("name"),
        size_bytes=n.integer("sizeBytes"),
        md5=n.text("md5"),
        mimetype=n.text("mimetype"),
        updated_at=n.text("updatedAt"),
        url=n.text("url"),
        direct_url=n.text("directUrl"),
        upstream_id=n.text("id"),
    )


def parse_sweep(
    value: Any, entity: str, project: str, *, path: str = "sweep", operation: str | None = None
) -> SweepRecord:
    n = _Node(value, path, operation)
    return SweepRecord(
        entity=entity,
        project=project,
        sweep_id=n.req_str("name"),
        upstream_id=n.text("id"),
        display_name=n.text("displayName"),
        method=n.text("method"),
        state=n.text("state"),
        description=n.text("description"),
        config=n.text("config"),
        best_loss=n.number("bestLoss"),
        created_at=n.text("createdAt"),
        updated_at=n.text("updatedAt"),
        run_count=n.integer("runCount"),
        run_count_expected=n.integer("runCountExpected"),
    )


def parse_history_texts(
    value: Any, *, path: str = "history", operation: str | None = None
) -> tuple[list[dict[str, Any]], list[str | None]]:
    """:func:`parse_history_rows`, plus each row's text where it can be stored as it came.

    A text orjson read exactly (no bare NaN/Infinity, no integer beyond 64 bits) is one
    :func:`mirror.store.codec.loads` reads back exactly too, so a pull may store it as is
    instead of encoding the row again; for the other rows the text is None.
    """
    if not isinstance(value, list):
        raise _fail(path, f"expected a list, got {_type_name(value)}", operation)
    rows: list[dict[str, Any]] = []
    texts: list[str | None] = []
    for i, line in enumerate(value):
        text = None
        if isinstance(line, str):
            try:
                row = orjson.loads(line)
                if codec.has_wide_float(row):
                    row = json.loads(line)
                else:
                    text = line
            except orjson.JSONDecodeError:
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise _fail(f"{path}[{i}]", f"not valid JSON ({exc})", operation) from None
        else:
            row = line  # a server that sends rows inline
        if not isinstance(row, dict):
            raise _fail(f"{path}[{i}]", f"expected a JSON object, got {_type_name(row)}", operation)
        rows.append(row)
        texts.append(text)
    return rows, texts


def parse_history_rows(
    value: Any, *, path: str = "history", operation: str | None = None
) -> list[dict[str, Any]]:
    """``[String!]!`` of JSON rows -> list of dicts, exactly (NaN, wide ints kept)."""
    return parse_history_texts(value, path=path, operation=operation)[0]


@dataclass(frozen=True)
class Viewer:
    """Who the API key belongs to (the ``Viewer`` login check)."""

    id: str | None
    entity: str | None
    username: str | None
    email: str | None
    teams: list[str]
    flags: dict[str, Any] | None


def parse_viewer(value: Any, *, path: str = "viewer", operation: str | None = None) -> Viewer:
    n = _Node(value, path, operation)
    teams: list[str] = []
    conn = n.child("teams")
    if conn is not None:
        edges = conn._get("edges", False) or []
        if not isinstance(edges, list):
            raise conn._bad("edges", "a list", edges)
        for i, edge in enumerate(edges):
            node = _Node(edge, f"{conn.path}.edges[{i}]", operation).child("node")
            name = node.text("name") if node else None
            if name:
                teams.append(name)
    return Viewer(
        id=n.text("id"),
        entity=n.text("entity"),
        username=n.text("username"),
        email=n.text("email"),
        teams=teams,
        flags=n.json_doc("flags"),
    )


def parse_upload_headers(value: Any, *, path: str, operation: str | None = None) -> dict[str, str]:
    """``["Name:value", ...]`` (split on the first colon, as wandb does) -> dict."""
    if value is None:
        return {}
    if not isinstance(value, list):
        raise _fail(path, f"expected a list, got {_type_name(value)}", operation)
    headers: dict[str, str] = {}
    for i, item in enumerate(value):
        if not isinstance(item, str) or ":" not in item:
            raise _fail(f"{path}[{i}]", "expected 'Name:value'", operation)
        name, _, val = item.partition(":")
        headers[name.strip()] = val.strip()
    return headers
