"""The HTTP side of ``mirror serve``: W&B's wire protocol on the standard library.

Routes (everything else is a JSON 404):

* ``POST /graphql`` (and ``/graphql/``): Basic auth ``api:<key>``, JSON (optionally
  gzip-encoded) body, one document or a batch (list); executed by
  :func:`mirror.server.graphql_api.execute_graphql`.
* ``GET|HEAD|PUT /storage/{entity}/{project}/{run}/{name}?method=&expires=&sig=``: the
  signed file URLs ``File.url`` and ``createRunFiles.uploadUrl`` hand out. The signature
  is the only credential (wandb 0.22.3 PUTs without auth), so it is checked for method,
  run, file name and expiry; bytes go to the blob cache, then the run file row is
  upserted.
* ``POST /files/{entity}/{project}/{run}/file_stream``: the SDK's logging stream
  (history, events, summary, console lines at line offsets; see
  :func:`apply_file_stream`).
* ``POST /sdk/otel/v1/*``: 404, which turns the client's telemetry off.

Why the standard library: the server is a test fixture, a demo and an offline drop-in on
a laptop, so it must start in milliseconds with no extra dependency; ``ThreadingHTTPServer``
with HTTP/1.1 keep-alive is plenty for one user and the official client's 10 parallel
requests. Every request passes through fault injection (:mod:`mirror.server.faults`) and
is recorded in the request log (:mod:`mirror.server.requestlog`); neither ever sees the
``Authorization`` header or a URL's query string.
"""

from __future__ import annotations

import base64
import hmac
import logging
import mimetypes
import re
import secrets
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any
from urllib.parse import parse_qs, unquote

from mirror import __version__
from mirror.errors import (
    BlobVerifyError,
    ConfigError,
    MirrorError,
    StoreBusyError,
    UnsafePathError,
)
from mirror.outbox import edits, overlay
from mirror.paths import (
    run_storage_id,
    validate_path_part,
    validate_run_file_name,
    wandb_time,
)
from mirror.records import FileRecord, RunRecord
from mirror.server.context import ServerContext
from mirror.server.faults import NO_FAULT, Decision, FaultPlan
from mirror.server.requestlog import RequestEntry, RequestLog
from mirror.store import Store, blobs, codec, history, queries, runs
from mirror.store import outbox as outbox_store

log = logging.getLogger("mirror.server")

MIN_KEY_LENGTH = 40
"""The official client refuses keys shorter than this before sending anything."""
MAX_JSON_BODY = 256 * 1024 * 1024
"""Largest JSON body (after gunzip); the SDK splits file_stream posts at 10 MiB."""
MAX_UPLOAD = 64 * 1024 * 1024 * 1024
UNAUTHENTICATED_BODY = 1024 * 1024
"""A refused request's body is drained up to this size, else the connection closes."""
IDLE_TIMEOUT = 120.0
"""Seconds a keep-alive connection may sit idle before the server closes it."""
CHUNK = 1024 * 1024

HISTORY_FILE = "wandb-history.jsonl"
EVENTS_FILE = "wandb-events.jsonl"
SUMMARY_FILE = "wandb-summary.json"

_OPERATION = re.compile(r"\b(?:query|mutation|subscription)\s+([_A-Za-z][_0-9A-Za-z]*)")
_COMMENT = re.compile(r"#[^\n\r]*")


class HttpError(MirrorError):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None,
                 close: bool = False) -> None:
        super().__init__(message, hint="")
        self.status = status
        self.headers = dict(headers or {})
        self.close = close


class _Dropped(Exception):
    """Internal: the connection was closed on purpose; no answer is sent."""


# --- file_stream ------------------------------------------------------------------------


@dataclass
class _Chunk:
    offset: int
    lines: list[str]


@dataclass
class FileStreamRequest:
    """A validated file_stream body (the parsed JSON is checked before any write)."""

    files: dict[str, list[_Chunk]] = field(default_factory=dict)
    complete: bool = False
    exitcode: int | None = None
    preempting: bool = False
    uploaded: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, body: Any) -> FileStreamRequest:
        if not isinstance(body, dict):
            raise HttpError(400, "a file_stream body is a JSON object")
        req = cls()
        files = body.get("files") or {}
        if not isinstance(files, dict):
            raise HttpError(400, "file_stream `files` must be an object")
        for name, value in files.items():
            if name not in (HISTORY_FILE, EVENTS_FILE, SUMMARY_FILE):
                validate_run_file_name(name)
            chunks = value if isinstance(value, list) else [value]  # Python sender: a list
            parsed: list[_Chunk] = []
            for chunk in chunks:
                if not isinstance(chunk, dict):
                    raise HttpError(400, f"file_stream chunk of {name!r} is not an object")
                offset = chunk.get("offset", 0)
                content = chunk.get("content", [])
                if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                    raise HttpError(400, f"file_stream offset of {name!r} is not an int >= 0")
                if not isinstance(content, list) or not all(isinstance(c, str) for c in content):
                    raise HttpError(400, f"file_stream content of {name!r} is not a list of str")
                parsed.append(_Chunk(offset, content))
            req.files[name] = parsed
        req.complete = bool(body.get("complete", False))
        exitcode = body.get("exitcode")
        if exitcode is not None and (isinstance(exitcode, bool) or not isinstance(exitcode, int)):
            raise HttpError(400, "file_stream `exitcode` is not an integer")
        req.exitcode = exitcode
        req.preempting = bool(body.get("preempting", False))
        uploaded = body.get("uploaded") or []
        if not isinstance(uploaded, list) or not all(isinstance(u, str) for u in uploaded):
            raise HttpError(400, "file_stream `uploaded` is not a list of names")
        req.uploaded = [validate_run_file_name(u) for u in uploaded]
        return req


def _parse_line(name: str, index: int, line: str) -> dict[str, Any]:
    try:
        value = codec.loads_wire(line)
    except ValueError as exc:
        raise HttpError(400, f"{name} line {index} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HttpError(400, f"{name} line {index} is not a JSON object")
    return value


def merge_history_keys(
    doc: Mapping[str, Any] | None, rows: Iterable[Mapping[str, Any]], last_step: int | None
) -> dict[str, Any]:
    """``historyKeys`` after ``rows`` were appended: per key, a count of rows per type.

    An approximation of W&B's document that is exact for append-only history (what the
    SDK sends): re-sent lines are not counted again because callers pass only lines
    beyond the previous line count. The client reads only ``lastStep``.
    """
    keys: dict[str, Any] = {}
    if doc and isinstance(doc.get("keys"), dict):
        # Copies: the stored document is not mutated; fields we do not compute (W&B's
        # previousValue, monotonic, ...) are kept as they were.
        keys = {k: {**v, "typeCounts": [dict(c) for c in v.get("typeCounts", [])]}
                for k, v in doc["keys"].items() if isinstance(v, dict)}
    tally = _tally_types(rows)
    for (key, kind), n in tally.items():
        counts = keys.setdefault(key, {"typeCounts": []})["typeCounts"]
        for entry in counts:
            if entry.get("type") == kind:
                entry["count"] = int(entry.get("count", 0)) + n
                break
        else:
            counts.append({"type": kind, "count": n})
    extra = {k: v for k, v in (doc or {}).items() if k not in ("lastStep", "keys")}
    return {**extra, "lastStep": -1 if last_step is None else last_step, "keys": keys}


_KIND_OF_CLASS = {int: "number", float: "number", bool: "boolean", str: "string",
                  type(None): "nil", list: "list"}


def _tally_types(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """How many rows hold each ``(key, value type)``, grouping rows by shape first.

    SDK rows of one run nearly always share their keys and value classes, so counting
    shapes (key tuple + class tuple, built in C) and then typing each distinct shape once
    is several times faster than typing every cell. A row holding a dict (media: its kind
    is the ``_type`` inside) is typed cell by cell.
    """
    shapes: dict[tuple[tuple[str, ...], tuple[type, ...]], list[Any]] = {}
    tally: Counter[tuple[str, str]] = Counter()
    for row in rows:
        classes = tuple(map(type, row.values()))
        if dict in classes:
            tally.update((k, history.value_type(v)) for k, v in row.items())
            continue
        seen = shapes.get(shape := (tuple(row), classes))
        if seen is None:
            shapes[shape] = [1, row]
        else:
            seen[0] += 1
    for (keys, classes), (n, example) in shapes.items():
        for key, cls in zip(keys, classes, strict=True):
            kind = _KIND_OF_CLASS.get(cls) or history.value_type(example[key])
            tally[(key, kind)] += n
    return dict(tally)


def _rebuild_lines(old: bytes | None, chunks: Sequence[_Chunk]) -> bytes:
    """A text file's new content after writing ``chunks`` at their line offsets."""
    lines: list[str] = []
    if old:
        text = old.decode("utf-8", "replace")
        if text.endswith("\n"):
            text = text[:-1]
        lines = text.split("\n")
    for chunk in chunks:
        end = chunk.offset + len(chunk.lines)
        if len(lines) < end:
            lines.extend([""] * (end - len(lines)))
        for i, line in enumerate(chunk.lines):
            lines[chunk.offset + i] = line[:-1] if line.endswith("\n") else line
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def apply_file_stream(
    store: Store, entity: str, project: str, run_id: str, body: Any, *,
    now: float | None = None, local: bool = False,
) -> dict[str, Any]:
    """Apply one file_stream request to the store; returns the response document.

    Lines are written at ``offset + i`` (history rows keyed by their ``_step``, events by
    line number), so a retried request overwrites instead of duplicating; line counts are
    "highest index written + 1". The summary line replaces the summary. Other files
    (``output.log``) are rebuilt line by line in the blob cache. ``complete`` sets the
    state from ``exitcode`` (0 -> finished, else failed); a run stopped by ``stopRun``
    (state ``killed``) stays killed and is answered ``"stopped": true``. Every request,
    ``{}`` included, is a heartbeat. The run is created (source ``local``) if it does not
    exist, because the SDK treats a 404 as fatal and stops streaming for good.

    ``local`` (the drop-in server, not ``--authoritative``): data for a run logged here
    (source ``local``) that has no upload queued, say a run resumed after ``mirror push``,
    queues a new ``create_run`` upload; it resumes from what upstream already holds.
    """
    req = FileStreamRequest.parse(body)
    # Parse every JSON line before the transaction: a bad line writes nothing.
    parsed: dict[str, list[list[dict[str, Any]]]] = {}
    for name in (HISTORY_FILE, EVENTS_FILE, SUMMARY_FILE):
        parsed[name] = [
            [_parse_line(name, c.offset + i, line) for i, line in enumerate(c.lines)]
            for c in req.files.get(name, [])
        ]
    history_chunks = req.files.get(HISTORY_FILE, [])
    for chunk_rows, chunk in zip(parsed[HISTORY_FILE], history_chunks, strict=True):
        for i, row in enumerate(chunk_rows):
            step = row.get("_step")
            if step is None:
                row["_step"] = chunk.offset + i
            elif isinstance(step, bool) or not isinstance(step, (int, float)) or step != int(step):
                raise HttpError(400, f"{HISTORY_FILE} line {chunk.offset + i}: bad _step {step!r}")
            elif isinstance(step, float):
                row["_step"] = int(step)
    ts = time.time() if now is None else now
    stamp = wandb_time(ts)
    with store.transaction() as s:
        rec = runs.get_run(s, entity, project, run_id)
        if rec is None:
            rec = RunRecord(
                entity=entity, project=project, run_id=run_id,
                storage_id=run_storage_id(entity, project, run_id),
                state="running", config={}, summary={}, tags=[], created_at=stamp,
                heartbeat_at=stamp, updated_at=stamp, history_line_count=0,
                events_line_count=0, file_count=0, source="local",
            )
            rec.pk = runs.save_run(s, rec)
        pk = rec.pk
        assert pk is not None
        changes: dict[str, Any] = {"heartbeat_at": stamp, "updated_at": stamp}

        line_count = rec.history_line_count or 0
        last_step = rec.last_step
        keys_doc = rec.history_keys
        new_rows: list[dict[str, Any]] = []
        for chunk, rows in zip(req.files.get(HISTORY_FILE, []), parsed[HISTORY_FILE], strict=True):
            history.save_history(s, pk, rows)
            new_rows.extend(r for i, r in enumerate(rows) if chunk.offset + i >= line_count)
            if rows:
                line_count = max(line_count, chunk.offset + len(rows))
                top = max(int(r["_step"]) for r in rows)
                last_step = top if last_step is None else max(last_step, top)
        if req.files.get(HISTORY_FILE):
            changes["history_line_count"] = line_count
            changes["last_step"] = last_step
            changes["history_keys"] = merge_history_keys(keys_doc, new_rows, last_step)

        events_count = rec.events_line_count or 0
        for chunk, rows in zip(req.files.get(EVENTS_FILE, []), parsed[EVENTS_FILE], strict=True):
            history.save_events(s, pk, rows, start_seq=chunk.offset)
            if rows and chunk.offset + len(rows) >= events_count:
                latest = {k: v for k, v in rows[-1].items() if k != "_wandb"}
                changes["system_metrics"] = latest
            events_count = max(events_count, chunk.offset + len(rows))
        if req.files.get(EVENTS_FILE):
            changes["events_line_count"] = events_count

        for rows in parsed[SUMMARY_FILE]:
            if rows:
                changes["summary"] = rows[-1]

        text_files = {n: c for n, c in req.files.items()
                      if n not in (HISTORY_FILE, EVENTS_FILE, SUMMARY_FILE)}
        for name, chunks in text_files.items():
            old = runs.get_file(s, pk, name)
            old_bytes = None
            if old is not None and old.blob_hash and blobs.has_blob(store, old.blob_hash):
                old_bytes = blobs.read_blob(store, old.blob_hash)
            data = _rebuild_lines(old_bytes, chunks)
            info = blobs.put_bytes(store, data, session=s)
            runs.save_file(s, pk, _file_record(old, name, info, stamp, "text/plain"))
        if text_files:
            changes["file_count"] = len(runs.list_files(s, pk))

        # A run the server was asked to stop (stopRun -> "killed") stays killed, and the
        # answer says "stopped": the SDK then raises KeyboardInterrupt and exits with 255.
        stopped = rec.state == "killed"
        if stopped:
            state = "killed"
        elif req.complete:
            state = "finished" if (req.exitcode or 0) == 0 else "failed"
        elif req.preempting or rec.state == "preempting":
            state = "preempting"
        else:
            state = "running"
        changes["state"] = state
        runs.update_run(s, pk, **changes)
        if (local and rec.source == "local" and (req.files or req.complete or req.preempting)
                and edits.pending_create(s, pk) is None):
            outbox_store.enqueue(s, pk, "create_run", {})
    return {"exitcode": None, "limits": {}, "stopped": stopped}


def _file_record(old: FileRecord | None, name: str, info: blobs.BlobInfo, stamp: str,
                 mimetype: str | None = None) -> FileRecord:
    """The run file row for new content, keeping the ids/urls the old row had."""
    if mimetype is None:
        mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FileRecord(
        name=name, size_bytes=info.size, md5=info.md5_b64, mimetype=mimetype,
        updated_at=stamp, url=old.url if old else None,
        direct_url=old.direct_url if old else None,
        upstream_id=old.upstream_id if old else None, blob_hash=info.hash, tombstoned=False,
    )


def store_uploaded_file(
    store: Store, entity: str, project: str, run_id: str, name: str, fileobj: blobs.Readable,
    *, size: int, md5_b64: str | None = None, now: float | None = None,
) -> blobs.BlobInfo:
    """Store an uploaded file: blob first (verified, fsynced), then one transaction.

    The transaction records the blob and upserts the run file row (size, md5, mimetype,
    updatedAt), so a crash leaves either the old row or the new one, never a row that
    points at missing bytes. Raises :class:`HttpError` 404 if the run does not exist.
    """
    with store.session() as s:
        if runs.run_pk(s, entity, project, run_id) is None:
            raise HttpError(404, f"run {entity}/{project}/{run_id} not found", close=True)
    info = blobs.put_stream(store, fileobj, expected_size=size, expected_md5_b64=md5_b64,
                            record=False)
    stamp = wandb_time(now)
    with store.transaction() as s:
        pk = runs.run_pk(s, entity, project, run_id)
        if pk is None:
            raise HttpError(404, f"run {entity}/{project}/{run_id} not found")
        blobs.record_blob(s, info)
        old = runs.get_file(s, pk, name)
        runs.save_file(s, pk, _file_record(old, name, info, stamp))
        runs.update_run(s, pk, file_count=len(runs.list_files(s, pk)), updated_at=stamp)
    return info


# --- request plumbing -------------------------------------------------------------------


def _operation_names(body: Any) -> tuple[str, ...]:
    """GraphQL operation names of a request, for the log and per-operation faults.

    ``operationName`` when the client sent one; else the name of the first operation in
    the document (0.31.0 sends ``""`` for documents written in Python); ``""`` if none.
    Only for logging: execution parses the document properly.
    """
    docs = body if isinstance(body, list) else [body]
    names: list[str] = []
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        name = doc.get("operationName")
        if isinstance(name, str) and name:
            names.append(name)
            continue
        query = doc.get("query")
        match = _OPERATION.search(_COMMENT.sub("", query)) if isinstance(query, str) else None
        names.append(match.group(1) if match else "")
    return tuple(names)


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing to inflate past ``limit`` bytes (zip bombs)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
        if len(out) > limit or inflater.unconsumed_tail:
            raise HttpError(413, f"the decompressed body is larger than {limit} bytes")
        out += inflater.flush()
    except zlib.error as exc:
        raise HttpError(400, f"the gzip body is corrupt: {exc}") from None
    if not inflater.eof:
        raise HttpError(400, "the gzip body is truncated")
    return out


def _route(method: str, raw_path: str) -> tuple[str, list[str]]:
    """``(route name, decoded path parameters)`` of a request path."""
    parts = raw_path.split("/")
    if raw_path in ("/graphql", "/graphql/"):
        return ("graphql" if method == "POST" else "other"), []
    if len(parts) == 6 and parts[1] == "files" and parts[5] == "file_stream":
        return ("file_stream" if method == "POST" else "other"), [unquote(p) for p in parts[2:5]]
    if len(parts) >= 6 and parts[1] == "storage":
        params = [unquote(p) for p in parts[2:5]] + ["/".join(unquote(p) for p in parts[5:])]
        if method in ("GET", "HEAD"):
            return "storage_get", params
        if method == "PUT":
            return "storage_put", params
        return "other", []
    if raw_path.startswith("/sdk/otel/"):
        return "otel", []
    if raw_path == "/healthz" and method == "GET":
        return "healthz", []
    return "other", []


class MirrorHandler(BaseHTTPRequestHandler):
    """One connection: HTTP/1.1 keep-alive, every request routed by :meth:`_dispatch`."""

    protocol_version = "HTTP/1.1"
    server_version = f"wandb-mirror/{__version__}"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    server: MirrorServer

    # Per-request state, reset by _dispatch.
    _status: int | None = None
    _response_bytes = 0
    _logged = True
    _started = 0.0
    _t0 = 0.0
    _route_name = "other"
    _request_bytes = 0
    _body_read = False
    _operations: tuple[str, ...] = ()
    _decision: Decision = NO_FAULT

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def setup(self) -> None:
        """Disable Nagle: a response is headers then body, and with Nagle plus the
        client's delayed ACK every small response would stall ~40 ms."""
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not a TCP socket
            pass

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request log records requests, without credentials."""

    # --- dispatch -------------------------------------------------------------------

    def _dispatch(self) -> None:
        self._started = time.time()
        self._t0 = time.perf_counter()
        self._status = None
        self._response_bytes = 0
        self._request_bytes = 0
        self._body_read = False
        self._operations = ()
        self._decision = NO_FAULT
        raw_path, _, query = self.path.partition("?")
        route, params = _route(self.command, raw_path)
        self._route_name = route
        self._logged = route == "healthz"
        try:
            self._handle(route, params, query)
        except _Dropped:
            self._drop()
        except HttpError as exc:
            if exc.close:
                self.close_connection = True
            self._send_error(exc.status, exc.message, exc.headers)
        except UnsafePathError as exc:
            self._send_error(400, exc.message)
        except BlobVerifyError as exc:
            self._send_error(400, exc.message)
        except StoreBusyError as exc:
            self._send_error(503, exc.message, {"Retry-After": "1"})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as exc:
            log.exception("error handling %s %s", self.command, raw_path)
            if self._status is None:
                self._send_error(500, f"internal server error: {type(exc).__name__}: {exc}")
            else:  # the response had begun: the only honest signal left is to hang up
                self.close_connection = True
        finally:
            self._record(self._status, self._response_bytes)

    def _record(self, status: int | None, response_bytes: int) -> None:
        """Append this request's log entry (once), BEFORE the client can see the answer.

        Tests read the log as soon as their request returns, so the entry must already be
        there: it is written before the response's last byte (or the drop) goes out.
        """
        if self._logged:
            return
        self._logged = True
        self.server.request_log.append(RequestEntry(
            time=self._started, route=self._route_name, method=self.command,
            path=self.path.partition("?")[0], operations=self._operations, status=status,
            request_bytes=self._request_bytes, response_bytes=response_bytes,
            duration_ms=round((time.perf_counter() - self._t0) * 1000.0, 3),
            fault=self._decision.label,
        ))

    def _handle(self, route: str, params: list[str], query: str) -> None:
        if route == "graphql":
            self._graphql()
        elif route == "file_stream":
            self._file_stream(params)
        elif route == "storage_get":
            self._storage_get(params, query)
        elif route == "storage_put":
            self._storage_put(params, query)
        elif route == "healthz":
            self._discard_body()
            self._send_json(200, {"ok": True})
        else:  # no faults here: "*" rules must not be used up by telemetry probes
            self._discard_body()
            self._send_error(404, f"no route for {self.command} {self.path.partition('?')[0]}")

    # --- routes ---------------------------------------------------------------------

    def _graphql(self) -> None:
        raw = self._read_authenticated_body()
        body = self._decode_json(raw)
        if not isinstance(body, (dict, list)):
            raise HttpError(400, "a GraphQL request is a JSON object or a list of them")
        self._operations = _operation_names(body)
        self._inject("graphql")
        execute = _graphql_executor()
        result = execute(self.server.ctx, body)
        self._after_write()
        self._send_json(200, result)

    def _file_stream(self, params: list[str]) -> None:
        raw = self._read_authenticated_body()
        entity, project, run_id = (validate_path_part(p, w) for p, w in
                                   zip(params, ("entity", "project", "run id"), strict=True))
        body = self._decode_json(raw)
        self._inject("file_stream")
        doc = apply_file_stream(self.server.ctx.store, entity, project, run_id, body,
                                local=not self.server.ctx.authoritative)
        self._after_write()
        self._send_json(200, doc)

    def _signed(self, method: str, params: list[str], query: str) -> tuple[str, str, str, str]:
        entity, project, run_id, name = params
        validate_path_part(entity, "entity")
        validate_path_part(project, "project")
        validate_path_part(run_id, "run id")
        validate_run_file_name(name)
        qs = parse_qs(query, keep_blank_values=True)
        expires = qs.get("expires", [None])[0]
        sig = qs.get("sig", [None])[0]
        if qs.get("method", [method])[0] != method or not self.server.ctx.signer.verify(
            method, entity, project, run_id, name, expires, sig
        ):
            raise HttpError(403, "the signed URL is invalid or has expired", close=True)
        return entity, project, run_id, name

    def _storage_put(self, params: list[str], query: str) -> None:
        entity, project, run_id, name = self._signed("PUT", params, query)
        self._inject("storage_put")
        size = self._content_length(required=True)
        if size > MAX_UPLOAD:
            raise HttpError(413, f"uploads are limited to {MAX_UPLOAD} bytes", close=True)
        md5 = self.headers.get("Content-MD5") or None
        reader = _CountingReader(self.rfile, size)
        ctx = self.server.ctx
        try:
            # Local (drop-in) mode: an upload to a run known upstream is an outbox op.
            queued = None if ctx.authoritative else edits.queue_upload(
                ctx.store, entity, project, run_id, name, reader, size=size, md5_b64=md5)
            info = queued or store_uploaded_file(ctx.store, entity, project, run_id, name,
                                                 reader, size=size, md5_b64=md5)
        finally:
            self._request_bytes = reader.count
            self._body_read = reader.count >= size
        self._after_write()
        self._send(200, b"", "application/octet-stream",
                   {"ETag": '"' + base64.b64decode(info.md5_b64).hex() + '"'})

    def _storage_get(self, params: list[str], query: str) -> None:
        self._discard_body()
        entity, project, run_id, name = self._signed("GET", params, query)
        self._inject("storage_get")
        store = self.server.ctx.store
        blob_hash: str | None = None
        mimetype: str | None = None
        with store.session() as s:
            if self.server.ctx.authoritative:
                # One indexed lookup: this is the most frequent request of a sync.
                found = queries.file_content(s, entity, project, run_id, name)
                if found is not None:
                    blob_hash, mimetype = found
            else:  # the drop-in serves what its user sees: pending uploads included
                pk = runs.run_pk(s, entity, project, run_id)
                rec = overlay.view_file(s, pk, name) if pk is not None else None
                if rec is not None and not rec.tombstoned:
                    blob_hash, mimetype = rec.blob_hash, rec.mimetype
        if not blob_hash:
            raise HttpError(404, f"file {name!r} of {entity}/{project}/{run_id} has no content")
        try:
            fh = blobs.open_blob(store, blob_hash)
        except FileNotFoundError:
            raise HttpError(404, f"file {name!r} is not in the blob cache") from None
        if self._unread_body():
            self.close_connection = True
        with fh:
            size = fh.seek(0, 2)
            fh.seek(0)
            if self._decision.action is not None and self._decision.action.kind == "drop_after":
                raise _Dropped
            self.send_response(200)
            self._status = 200
            self.send_header("Content-Type", mimetype or "application/octet-stream")
            self.send_header("Content-Length", str(size))
            if self.close_connection:
                self.send_header("Connection", "close")
            body_size = 0 if self.command == "HEAD" else size
            self._record(200, body_size)
            self.end_headers()
            if not body_size:
                return
            while chunk := fh.read(CHUNK):
                self.wfile.write(chunk)
                self._response_bytes += len(chunk)

    # --- helpers --------------------------------------------------------------------

    def _read_authenticated_body(self) -> bytes:
        """Check the key first, so that no unauthenticated body is ever parsed.

        On a 401 a small body is read and dropped (the keep-alive connection stays
        usable); a large one is not read at all and the connection is closed instead.
        """
        try:
            self._require_auth()
        except HttpError:
            chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
            if not chunked and self._content_length() <= UNAUTHENTICATED_BODY:
                self._read_body(UNAUTHENTICATED_BODY)
            else:
                self.close_connection = True
            raise
        return self._read_body(MAX_JSON_BODY)

    def _require_auth(self) -> None:
        """Basic auth: the password must be the server's key (the user name is ignored,
        as W&B does: clients send ``api``). Compared in constant time."""
        challenge = {"WWW-Authenticate": 'Basic realm="wandb-mirror"'}
        header = self.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value.strip():
            raise HttpError(401, "authentication required: HTTP Basic api:<API key>",
                            headers=challenge)
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise HttpError(401, "malformed Basic credentials", headers=challenge) from None
        _, sep, key = decoded.partition(":")
        if not sep or len(key) < MIN_KEY_LENGTH:
            raise HttpError(401, f"API key must have {MIN_KEY_LENGTH}+ characters",
                            headers=challenge)
        if not hmac.compare_digest(key.encode("utf-8"), self.server.ctx.api_key.encode("utf-8")):
            raise HttpError(401, "invalid API key", headers=challenge)

    def _inject(self, route: str) -> None:
        """Apply the fault plan's decision for this request (before the handler runs)."""
        decision = self.server.faults.decide(route, self._operations)
        self._decision = decision
        if decision is NO_FAULT:
            return
        if decision.latency_ms:
            self.server.stopping.wait(decision.latency_ms / 1000.0)
        fault = decision.action
        if fault is None or fault.kind == "drop_after":
            return
        if fault.kind == "drop_before":
            raise _Dropped
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        message = {"429": "rate limit exceeded", "500": "internal server error",
                   "503": "service unavailable"}[fault.kind]
        raise HttpError(int(fault.kind), f"{message} (injected fault)", headers=headers)

    def _after_write(self) -> None:
        """The handler ran: drop the connection now if the plan says so."""
        action = self._decision.action
        if action is not None and action.kind == "drop_after":
            raise _Dropped

    def _drop(self) -> None:
        """Close the connection without a response, as a crashed proxy would."""
        self._status = None
        self.close_connection = True
        self._record(None, 0)
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _content_length(self, *, required: bool = False) -> int:
        raw = self.headers.get("Content-Length")
        if raw is None:
            if required:  # uploads are streamed to disk by length (clients always send it)
                raise HttpError(411, "Content-Length is required", close=True)
            return 0
        try:
            n = int(raw)
        except ValueError:
            raise HttpError(400, "bad Content-Length", close=True) from None
        if n < 0:
            raise HttpError(400, "bad Content-Length", close=True)
        return n

    def _read_body(self, limit: int) -> bytes:
        """The whole request body (Content-Length or chunked), at most ``limit`` bytes."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = self._read_chunked(limit)
        else:
            n = self._content_length()
            if n > limit:
                raise HttpError(413, f"the body is larger than {limit} bytes", close=True)
            data = self.rfile.read(n) if n else b""
            if len(data) < n:
                self.close_connection = True
                raise HttpError(400, "the body is shorter than Content-Length", close=True)
        self._request_bytes = len(data)
        self._body_read = True
        return data

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(65537)
            try:
                n = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(400, "bad chunked encoding", close=True) from None
            if n == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += n
            if total > limit:
                raise HttpError(413, f"the body is larger than {limit} bytes", close=True)
            parts.append(self.rfile.read(n))
            self.rfile.readline(65537)

    def _discard_body(self) -> None:
        """Read and drop a body nobody wants, so the keep-alive connection stays in sync."""
        if self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding"):
            self._read_body(MAX_JSON_BODY)

    def _decode_json(self, raw: bytes) -> Any:
        if (self.headers.get("Content-Encoding") or "").lower() in ("gzip", "x-gzip"):
            raw = _gunzip(raw, MAX_JSON_BODY)
        try:
            return codec.loads_wire(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"the body is not JSON: {exc}") from None

    def _send_json(self, status: int, doc: Any, headers: Mapping[str, str] | None = None) -> None:
        body = codec.dumps_strict(doc).encode("utf-8")
        self._send(status, body, "application/json", headers)

    def _send_error(self, status: int, message: str,
                    headers: Mapping[str, str] | None = None) -> None:
        self._send_json(status, {"errors": [{"message": message}]}, headers)

    def _unread_body(self) -> bool:
        """True if a request body is (maybe) still in the socket, unread."""
        if self._body_read:
            return False
        if self.headers.get("Transfer-Encoding"):
            return True
        try:
            return int(self.headers.get("Content-Length") or 0) > 0
        except ValueError:
            return True

    def _send(self, status: int, body: bytes, content_type: str,
              headers: Mapping[str, str] | None = None) -> None:
        if self._unread_body():
            # The next "request" on this connection would be the rest of this body.
            self.close_connection = True
        self.send_response(status)
        self._status = status
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        body_size = 0 if self.command == "HEAD" else len(body)
        self._record(status, body_size)
        self.end_headers()
        if body_size:
            self.wfile.write(body)
        self._response_bytes = body_size


class _CountingReader:
    """A file-like view of the next ``limit`` body bytes of a connection, counting them."""

    def __init__(self, raw: blobs.Readable, limit: int) -> None:
        self._raw = raw
        self._left = limit
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._raw.read(n)
        self._left -= len(data)
        self.count += len(data)
        if not data:
            self._left = 0
        return data


def _graphql_executor() -> Callable[[ServerContext, Any], Any]:
    """The GraphQL executor, imported lazily (it pulls in graphql-core and the schema)."""
    try:
        from mirror.server.graphql_api import execute_graphql
    except ImportError as exc:
        if exc.name != "mirror.server.graphql_api":
            raise
        raise HttpError(501, "the GraphQL API is not available in this build") from None
    return execute_graphql


# --- the server -------------------------------------------------------------------------


class MirrorServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` over one store, with faults, a request log and clean stop.

    ``stop()`` ends the accept loop, closes the keep-alive connections that idle clients
    hold open (otherwise their handler threads would wait for the next request), and joins
    every handler thread, so tests leak no threads.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        store: Store,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        authoritative: bool = False,
        faults: FaultPlan | None = None,
        request_log: RequestLog | None = None,
        entity: str = "mirror",
        public_url: str | None = None,
    ) -> None:
        if api_key is None:
            api_key = secrets.token_hex(24)
        if not re.fullmatch(r"(?:\w+-)?\w{40,}", api_key, re.ASCII):
            raise ConfigError(
                f"the server's API key must have {MIN_KEY_LENGTH}+ characters of [A-Za-z0-9_]",
                hint="The official wandb client refuses shorter keys before it sends anything.",
            )
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.faults = faults if faults is not None else FaultPlan()
        self.request_log = request_log if request_log is not None else RequestLog()
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._handlers: list[threading.Thread] = []
        self._conn_lock = threading.Lock()
        self._started = False
        self._stopped = False
        super().__init__((host, port), MirrorHandler)
        bound_host, bound_port = self.server_address[:2]
        if public_url is None:
            shown = "127.0.0.1" if bound_host in ("0.0.0.0", "") else str(bound_host)
            if shown == "::":
                shown = "::1"
            if ":" in shown:
                shown = f"[{shown}]"
            public_url = f"http://{shown}:{bound_port}"
        self.ctx = ServerContext.create(store, public_url, api_key,
                                        authoritative=authoritative, entity=entity)

    @property
    def url(self) -> str:
        return self.ctx.base_url

    @property
    def api_key(self) -> str:
        return self.ctx.api_key

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse-DNS lookup of the host (slow offline)."""
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        """One daemon thread per connection, tracked so :meth:`stop` can join it.

        (``ThreadingMixIn`` does not track daemon threads, so it cannot join them.)
        """
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address),
            name=f"mirror-conn-{self.server_port}", daemon=True,
        )
        with self._conn_lock:
            self._connections.add(request)
            self._handlers = [t for t in self._handlers if t.is_alive()]
            self._handlers.append(thread)
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connection errors are normal (clients hang up); log the rest, quietly."""
        log.debug("connection error from %s", client_address, exc_info=True)

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        self._started = True
        super().serve_forever(poll_interval)

    def start_background(self, name: str = "mirror-serve") -> threading.Thread:
        """Serve in a new daemon thread (returned); :meth:`stop` ends it."""
        self._started = True
        thread = threading.Thread(target=self.serve_forever, name=name, daemon=True)
        thread.start()
        return thread

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, close open connections and join the handler threads.

        A handler still busy after ``timeout`` seconds is left to finish on its own
        (its thread is a daemon, so it never blocks the interpreter's exit).
        """
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        if self._started:
            self.shutdown()
        with self._conn_lock:
            open_conns = list(self._connections)
        for conn in open_conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server_close()
        deadline = time.monotonic() + timeout
        with self._conn_lock:
            handlers = list(self._handlers)
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))


def make_server(
    store: Store,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    authoritative: bool = False,
    faults: FaultPlan | None = None,
    request_log: RequestLog | None = None,
    entity: str = "mirror",
    public_url: str | None = None,
) -> MirrorServer:
    """A bound (not yet serving) server; ``port=0`` picks a free port (see ``.url``).

    Without ``api_key`` a random 48-character key is made (``.api_key``).
    """
    return MirrorServer(store, host=host, port=port, api_key=api_key,
                        authoritative=authoritative, faults=faults, request_log=request_log,
                        entity=entity, public_url=public_url)


def serve(
    store: Store,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    authoritative: bool = False,
    faults: FaultPlan | None = None,
    request_log: RequestLog | None = None,
    entity: str = "mirror",
    ready: Callable[[MirrorServer], None] | None = None,
) -> None:
    """Serve until interrupted (Ctrl-C); ``ready(server)`` runs once it accepts requests.

    ``ready`` is where the CLI prints the URL and the key to use.
    """
    server = make_server(store, host=host, port=port, api_key=api_key,
                         authoritative=authoritative, faults=faults, request_log=request_log,
                         entity=entity)
    thread = server.start_background()
    try:
        if ready is not None:
            ready(server)
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        thread.join(5.0)


__all__ = [
    "HttpError",
    "MirrorHandler",
    "MirrorServer",
    "apply_file_stream",
    "make_server",
    "merge_history_keys",
    "serve",
    "store_uploaded_file",
]
