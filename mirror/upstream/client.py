"""The W&B client of wandb-mirror: GraphQL reads page by page, writes for the outbox.

:class:`WandbClient` speaks the documents of :mod:`mirror.upstream.documents` over the
session of :mod:`mirror.upstream.http` and turns answers into the records of
:mod:`mirror.records` through :mod:`mirror.upstream.parse`. It knows nothing of the store:
listing methods *yield* pages, and saving them is the caller's business, so a crash
between two pages loses at most the page in flight.

Reads are retried by the :class:`~mirror.upstream.http.RetryPolicy`; writes are not,
unless the failure proves the server never saw them (see ``execute``). All errors are the
typed ones of :mod:`mirror.errors`.

Example::

    client = WandbClient(Settings.from_env())
    for page in client.iter_runs("alice", "proj", filters={"state": "finished"}):
        save_runs(page)
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from mirror.errors import (
    AuthError,
    EditRejected,
    NotFoundError,
    ProtocolError,
    UpstreamError,
)
from mirror.records import FileRecord, ProjectRecord, RunRecord, SweepRecord
from mirror.settings import Settings
from mirror.store.codec import dumps_wire, loads_wire
from mirror.upstream import documents as docs
from mirror.upstream.http import (
    RateLimiter,
    RetryPolicy,
    UpstreamSession,
    make_session,
    send,
    stream_body,
)
from mirror.upstream.parse import (
    Page,
    Viewer,
    dig,
    parse_connection,
    parse_file,
    parse_history_rows,
    parse_history_texts,
    parse_project,
    parse_run,
    parse_sweep,
    parse_upload_headers,
    parse_viewer,
)

__all__ = ["GraphQLResult", "RunAsk", "RunParts", "UpsertOutcome", "WandbClient"]

Filters = Mapping[str, Any] | str | None

_OPERATION_RE = re.compile(r"^\s*(?:#[^\n]*\n\s*)*(query|mutation)\b\s*([_A-Za-z]\w*)?")
# JSON-string fields of UpsertBucketInput: callers may pass dicts, we encode them as W&B's
# SDK does (compact, bare NaN/Infinity inside the string).
_JSON_STRING_INPUTS = ("config", "summaryMetrics")

# Storage transfers (signed URLs) are paced by their own bucket: object stores take
# thousands of requests per second, the W&B API far fewer (see WandbClient).
STORAGE_RATE = 1000.0  # requests per second
STORAGE_BURST = 100.0


@dataclass(frozen=True)
class GraphQLResult:
    """A GraphQL answer as sent: ``data`` (possibly partial) and the ``errors`` list."""

    data: dict[str, Any] | None
    errors: list[dict[str, Any]]


@dataclass(frozen=True)
class UpsertOutcome:
    """The result of one input of :meth:`WandbClient.upsert_buckets`.

    ``error`` is set when the server refused this input (the others of the batch may
    still have been applied); otherwise ``bucket`` holds the run as written.
    """

    index: int
    bucket: dict[str, Any] | None
    inserted: bool | None
    error: UpstreamError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.bucket is not None


@dataclass(frozen=True)
class RunAsk:
    """What :meth:`WandbClient.run_parts` should fetch of one run (None: not that part).

    ``history`` is ``(min_step, max_step, samples)`` as for :meth:`WandbClient.history`,
    ``events`` the events ``samples``, ``files`` the size of the first page of files.
    """

    run_id: str
    history: tuple[int, int, int] | None = None
    events: int | None = None
    files: int | None = None


@dataclass
class RunParts:
    """One run's answer in a :meth:`WandbClient.run_parts` batch.

    ``error`` is set when this run failed (missing, a resolver error, a malformed part);
    the other runs of the batch are unaffected. ``files_more`` says the first page of
    files was not all of them (the caller lists the rest with :meth:`iter_files`).
    """

    run_id: str
    history: list[dict[str, Any]] | None = None
    history_texts: list[str | None] | None = None  # as received, where storable as is
    events: list[dict[str, Any]] | None = None
    files: list[FileRecord] | None = None
    files_more: bool = False
    error: UpstreamError | None = None


def _operation_of(document: str) -> tuple[str, str | None]:
    """``("query"|"mutation", name)`` of the first operation in ``document``."""
    match = _OPERATION_RE.match(document)
    if not match:
        return "query", None
    return match.group(1), match.group(2)


def _filters_json(filters: Filters) -> str:
    """W&B takes filters as a JSON *string* (``json.dumps`` of a Mongo-style dict)."""
    if filters is None:
        return "{}"
    if isinstance(filters, str):
        return filters
    return json.dumps(filters, allow_nan=False)


def _error_message(errors: Sequence[Any]) -> str:
    parts = []
    for err in errors[:3]:
        msg = err.get("message") if isinstance(err, dict) else None
        parts.append(str(msg if msg is not None else err))
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts)[:500] + more


class WandbClient:
    """GraphQL client for W&B and W&B-compatible servers (``mirror serve``).

    Args:
        session_or_settings: a session from :func:`~mirror.upstream.http.make_session`
            (shared by threads), or :class:`~mirror.settings.Settings` to build one.
        policy: retry policy for every call (default: :class:`RetryPolicy()`).
        limiter: the rate limiter of API requests (GraphQL, file stream); share one
            instance between all clients that talk to the same server (default: a
            private one).
        storage_limiter: the rate limiter of file transfers to and from signed storage
            URLs (default: a private one at :data:`STORAGE_RATE`). It is separate because
            those requests go to object storage, not to the W&B API: they are not under
            the API's per-project limits, and a sync downloads many small files, so
            pacing them at the API rate made the transfers, not the data, the bottleneck
            (5,000 files took at least 50 s at 100 requests/s). It still halves its rate
            on a 429 from the storage side.

    Thread-safe: one client may serve a pool of workers.
    """

    def __init__(
        self,
        session_or_settings: UpstreamSession | Settings,
        *,
        policy: RetryPolicy | None = None,
        limiter: RateLimiter | None = None,
        storage_limiter: RateLimiter | None = None,
    ) -> None:
        if isinstance(session_or_settings, Settings):
            self.session = make_session(session_or_settings)
        else:
            self.session = session_or_settings
        self.policy = policy if policy is not None else RetryPolicy()
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.storage_limiter = (storage_limiter if storage_limiter is not None
                                else RateLimiter(STORAGE_RATE, burst=STORAGE_BURST))

    @property
    def base_url(self) -> str:
        return self.session.base_url

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> WandbClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WandbClient({self.base_url!r})"

    # --- GraphQL ---------------------------------------------------------------------------

    def graphql(
        self,
        document: str,
        variables: Mapping[str, Any] | None = None,
        *,
        operation_name: str | None = None,
        idempotent: bool | None = None,
    ) -> GraphQLResult:
        """POST one document; return ``data`` and ``errors`` without judging ``errors``.

        Transport failures, HTTP errors and non-GraphQL bodies raise; a well-formed answer
        with ``errors`` is returned, for callers that handle partial success (batches).
        """
        kind, name = _operation_of(document)
        operation = operation_name or name or kind
        if idempotent is None:
            idempotent = kind == "query"
        write = kind == "mutation"
        body: dict[str, Any] = {"query": document, "variables": dict(variables or {})}
        if operation_name or name:
            body["operationName"] = operation_name or name
        try:
            payload = json.dumps(body, allow_nan=False).encode("utf-8")
        except ValueError as exc:
            # A float NaN in a variable would produce invalid JSON; JSON-string fields
            # (config, summary) carry NaN inside the string instead.
            raise ValueError(f"{operation}: variables are not valid JSON: {exc}") from None

        def attempt() -> GraphQLResult:
            resp = send(
                self.session,
                "POST",
                "/graphql",
                operation=operation,
                limiter=self.limiter,
                write=write,
                data=payload,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
            )
            return self._read_graphql(resp.content, resp.headers.get("Content-Type"), operation)

        return self.policy.call(attempt, idempotent=idempotent)

    def _read_graphql(
        self, content: bytes, content_type: str | None, operation: str
    ) -> GraphQLResult:
        def bad(problem: str) -> ProtocolError:
            return ProtocolError(f"{operation}: {problem}", status=200, operation=operation)

        try:
            body = loads_wire(content)
        except (ValueError, UnicodeDecodeError) as exc:
            snippet = self.session.redact(content[:120].decode("utf-8", "replace"))
            kind = content_type or "no content type"
            if content.lstrip()[:1] in (b"{", b"["):
                raise bad(f"the answer is not valid JSON (truncated?): {exc}") from None
            raise bad(f"the answer is not JSON ({kind}): {snippet!r}") from None
        if not isinstance(body, dict):
            raise bad(f"the answer is JSON but not an object: {type(body).__name__}")
        errors = body.get("errors") or []
        if not isinstance(errors, list):
            raise bad("'errors' is not a list")
        if "data" not in body and not errors:
            raise bad("the answer has neither 'data' nor 'errors'")
        data = body.get("data")
        if data is not None and not isinstance(data, dict):
            raise bad(f"'data' is {type(data).__name__}, not an object")
        return GraphQLResult(data=data, errors=errors)

    def execute(
        self,
        document: str,
        variables: Mapping[str, Any] | None = None,
        *,
        operation_name: str | None = None,
        idempotent: bool | None = None,
    ) -> dict[str, Any]:
        """Send ``document`` and return its ``data``.

        ``idempotent`` says whether a failed attempt may be re-sent; by default queries
        are and mutations are not. A mutation is still retried when the failure shows it
        never reached the server (connection refused, 429, 408); when it may have been
        applied (connection dropped after sending, 5xx) the error is raised with
        ``maybe_applied`` set, so the caller can read back before sending again.

        Raises:
            EditRejected: a mutation answered with GraphQL ``errors`` or a terminal 4xx.
            ProtocolError: a query answered with ``errors``; a body that is not GraphQL.
            AuthError, NotFoundError, UpstreamUnavailable, RateLimited: see http.send.
        """
        result = self.graphql(
            document, variables, operation_name=operation_name, idempotent=idempotent
        )
        kind, name = _operation_of(document)
        operation = operation_name or name or kind
        if result.errors:
            msg = f"{operation}: the server answered with errors: {_error_message(result.errors)}"
            msg = self.session.redact(msg)
            if kind == "mutation":
                raise EditRejected(msg, status=200, operation=operation)
            raise ProtocolError(msg, status=200, operation=operation)
        if result.data is None:
            raise ProtocolError(
                f"{operation}: the answer's 'data' is null", status=200, operation=operation
            )
        return result.data

    # --- account -------------------------------------------------------------------------

    def viewer(self) -> Viewer:
        """Who the API key belongs to; the cheapest way to check credentials."""
        data = self.execute(docs.VIEWER)
        value = dig(data, "viewer", operation="Viewer")
        if value is None:
            raise AuthError(
                f"the server at {self.base_url} does not recognise the API key",
                operation="Viewer",
            )
        return parse_viewer(value, path="data.viewer", operation="Viewer")

    def server_features(self) -> dict[str, bool]:
        """``serverInfo.features`` as ``{name: enabled}`` (e.g. MARK_RUN_FILES_UPLOADED)."""
        data = self.execute(docs.SERVER_FEATURES)
        features = dig(data, "serverInfo", "features", operation="ServerFeaturesQuery")
        out: dict[str, bool] = {}
        for item in features or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                out[item["name"]] = bool(item.get("isEnabled"))
        return out

    # --- projects ------------------------------------------------------------------------

    def iter_projects(self, entity: str, *, per_page: int = 100) -> Iterator[list[ProjectRecord]]:
        """The projects of ``entity``, page by page."""
        variables: dict[str, Any] = {"entity": entity, "perPage": per_page}
        for page in self._pages(docs.PROJECTS, variables, ("models",), "cursor", missing=(entity,)):
            yield [
                parse_project(node, entity=entity, path=path, operation="GetProjects")
                for node, path in zip(page.nodes, page.paths, strict=True)
                if node is not None
            ]

    def get_project(self, entity: str, project: str) -> ProjectRecord | None:
        """One project (with ``internal_id``, which ``deleteFiles`` needs), or None."""
        data = self.execute(docs.PROJECT, {"entity": entity, "project": project})
        value = dig(data, "project", operation="Project")
        if value is None:
            return None
        return parse_project(value, entity=entity, path="data.project", operation="Project")

    # --- runs ----------------------------------------------------------------------------

    def iter_runs(
        self,
        entity: str,
        project: str,
        *,
        filters: Filters = None,
        order: str = "+created_at",
        per_page: int = 50,
        lightweight: bool = False,
    ) -> Iterator[list[RunRecord]]:
        """The runs of a project matching ``filters``, ``per_page`` at a time.

        ``filters`` are W&B's Mongo-style filters (a dict, or its JSON text), passed
        through untouched; ``order`` is ``"+field"``/``"-field"``. With ``lightweight``,
        records carry only what tells whether a run changed (ids, state, timestamps, line
        and file counts, name, tags, notes): ``config``, ``summary``, ``system_metrics``
        and ``history_keys`` are None, meaning "not fetched".

        Raises:
            NotFoundError: the project does not exist (or is not visible to this key).
        """
        document, operation = (docs.RUNS_LIGHT, "RunsLight") if lightweight else (docs.RUNS, "Runs")
        variables = {
            "entity": entity,
            "project": project,
            "perPage": per_page,
            "order": order or "+created_at",
            "filters": _filters_json(filters),
        }
        for page in self._pages(
            document, variables, ("project", "runs"), "cursor", missing=(entity, project)
        ):
            yield [
                parse_run(node, entity, project, path=path, operation=operation)
                for node, path in zip(page.nodes, page.paths, strict=True)
            ]

    def iter_run_ids(
        self, entity: str, project: str, *, filters: Filters = None, per_page: int = 500
    ) -> Iterator[list[str]]:
        """Only the run ids matching ``filters`` (a sweep's runs; finding deletions)."""
        variables = {
            "entity": entity,
            "project": project,
            "perPage": per_page,
            "order": "+created_at",
            "filters": _filters_json(filters),
        }
        for page in self._pages(
            docs.RUN_NAMES, variables, ("project", "runs"), "cursor", missing=(entity, project)
        ):
            ids = []
            for node, path in zip(page.nodes, page.paths, strict=True):
                name = dig(node, "name", path=path, operation="RunNames")
                if not isinstance(name, str):
                    raise ProtocolError(
                        f"RunNames: malformed answer from the server: {path}.name: "
                        "expected a string",
                        operation="RunNames",
                    )
                ids.append(name)
            yield ids

    def run_count(self, entity: str, project: str, filters: Filters = None) -> int:
        """How many runs match ``filters`` (W&B's ``runCount``)."""
        data = self.execute(
            docs.RUN_COUNT,
            {"entity": entity, "project": project, "filters": _filters_json(filters)},
        )
        proj = dig(data, "project", operation="RunCount")
        if proj is None:
            raise NotFoundError(f"project {entity}/{project} not found", operation="RunCount")
        count = dig(proj, "runCount", path="data.project", operation="RunCount")
        if isinstance(count, bool) or not isinstance(count, int):
            raise ProtocolError(
                "RunCount: malformed answer from the server: data.project.runCount: "
                "expected an integer",
                operation="RunCount",
            )
        return count

    def get_run(self, entity: str, project: str, run_id: str) -> RunRecord | None:
        """One run, in full, or None when it (or its project) does not exist."""
        data = self.execute(docs.RUN, {"entity": entity, "project": project, "name": run_id})
        value = dig(data, "project", "run", operation="Run")
        if value is None:
            return None
        return parse_run(value, entity, project, path="data.project.run", operation="Run")

    def get_runs(self, paths: Sequence[tuple[str, str, str]]) -> list[RunRecord | None]:
        """Several runs, across projects, in one request (None where one is missing).

        The outbox's fresh read before a merge: one round trip for a batch of runs.
        """
        if not paths:
            return []
        variables: dict[str, Any] = {}
        for k, (entity, project, run_id) in enumerate(paths):
            variables.update({f"e{k}": entity, f"p{k}": project, f"n{k}": run_id})
        data = self.execute(docs.runs_by_name(len(paths)), variables)
        out: list[RunRecord | None] = []
        for k, (entity, project, _run_id) in enumerate(paths):
            value = dig(data, f"r{k}", "run", operation="RunsByName")
            out.append(
                None
                if value is None
                else parse_run(
                    value, entity, project, path=f"data.r{k}.run", operation="RunsByName"
                )
            )
        return out

    def history(
        self,
        entity: str,
        project: str,
        run_id: str,
        *,
        min_step: int,
        max_step: int,
        samples: int,
    ) -> list[dict[str, Any]]:
        """History rows with ``min_step <= _step < max_step``, exactly as logged.

        The server returns at most ``samples`` rows; pass ``samples >= max_step -
        min_step`` to get every row of the window (W&B downsamples otherwise).

        Raises:
            NotFoundError: the run does not exist.
        """
        variables = {
            "entity": entity,
            "project": project,
            "run": run_id,
            "minStep": min_step,
            "maxStep": max_step,
            "pageSize": samples,
        }
        data = self.execute(docs.HISTORY_PAGE, variables)
        run = self._run_or_raise(data, entity, project, run_id, "HistoryPage")
        rows = dig(run, "history", path="data.project.run", operation="HistoryPage")
        return parse_history_rows(rows, path="data.project.run.history", operation="HistoryPage")

    def run_parts(self, entity: str, project: str, asks: Sequence[RunAsk]) -> list[RunParts]:
        """History windows, events and a first page of files of many runs, ONE request.

        The aliased document of :func:`~mirror.upstream.documents.run_parts`; one answer
        per ask, in order. A run that is missing or whose part failed on the server comes
        back with ``error`` set, and the others are still good: the caller retries just
        that run on its own. Raises (like :meth:`execute`) only when the whole request
        failed: transport, HTTP status, an answer that is not GraphQL, or errors that
        belong to no single run.
        """
        if not asks:
            return []
        op = "RunParts"
        variables: dict[str, Any] = {"entity": entity, "project": project}
        shapes: list[tuple[bool, bool, bool]] = []
        for k, ask in enumerate(asks):
            variables[f"n{k}"] = ask.run_id
            if ask.history is not None:
                lo, hi, samples = ask.history
                variables.update({f"a{k}": lo, f"b{k}": hi, f"s{k}": samples})
            if ask.events is not None:
                variables[f"e{k}"] = ask.events
            if ask.files is not None:
                variables[f"f{k}"] = ask.files
            shapes.append((ask.history is not None, ask.events is not None,
                           ask.files is not None))
        result = self.graphql(docs.run_parts(shapes), variables)
        by_alias: dict[str, list[dict[str, Any]]] = {}
        stray: list[Any] = []
        for err in result.errors:
            path = err.get("path") if isinstance(err, dict) else None
            alias = path[1] if isinstance(path, list) and len(path) > 1 else None
            if isinstance(alias, str) and alias[:1] == "r" and alias[1:].isdigit():
                by_alias.setdefault(alias, []).append(err)
            else:
                stray.append(err)
        if stray or result.data is None:
            why = _error_message(stray) if stray else "'data' is null"
            raise ProtocolError(self.session.redact(f"{op}: {why}"), status=200, operation=op)
        project_data = dig(result.data, "project", operation=op)
        if project_data is None:
            raise NotFoundError(f"{op}: {entity}/{project} not found", operation=op)
        out: list[RunParts] = []
        for k, ask in enumerate(asks):
            alias = f"r{k}"
            part = RunParts(ask.run_id)
            out.append(part)
            errs = by_alias.get(alias)
            node = project_data.get(alias) if isinstance(project_data, dict) else None
            path = f"data.project.{alias}"
            if errs or node is None:
                why = _error_message(errs) if errs else "run not found"
                cls = ProtocolError if errs else NotFoundError
                part.error = cls(self.session.redact(f"{op}[{ask.run_id}]: {why}"),
                                 operation=op)
                continue
            try:
                if ask.history is not None:
                    part.history, part.history_texts = parse_history_texts(
                        dig(node, "history", path=path, operation=op),
                        path=f"{path}.history", operation=op)
                if ask.events is not None:
                    part.events = parse_history_rows(
                        dig(node, "events", path=path, operation=op),
                        path=f"{path}.events", operation=op)
                if ask.files is not None:
                    conn = dig(node, "files", path=path, operation=op)
                    page = parse_connection(conn, f"{path}.files", op)
                    part.files = [parse_file(n, path=p, operation=op)
                                  for n, p in zip(page.nodes, page.paths, strict=True)
                                  if n is not None]
                    part.files_more = page.has_next
            except UpstreamError as exc:
                part.error = exc
        return out

    def events(self, entity: str, project: str, run_id: str, samples: int) -> list[dict[str, Any]]:
        """System-metrics rows (W&B's ``events``); at most ``samples`` of them."""
        variables = {"entity": entity, "project": project, "name": run_id, "samples": samples}
        data = self.execute(docs.EVENTS, variables)
        run = self._run_or_raise(data, entity, project, run_id, "RunEvents")
        rows = dig(run, "events", path="data.project.run", operation="RunEvents")
        return parse_history_rows(rows, path="data.project.run.events", operation="RunEvents")

    # --- files ---------------------------------------------------------------------------

    def iter_files(
        self,
        entity: str,
        project: str,
        run_id: str,
        *,
        names: Sequence[str] | None = None,
        per_page: int = 100,
    ) -> Iterator[list[FileRecord]]:
        """The files of a run (all, or those with exactly these ``names``), page by page.

        Raises:
            NotFoundError: the run does not exist.
        """
        variables: dict[str, Any] = {
            "entity": entity,
            "project": project,
            "name": run_id,
            "fileLimit": per_page,
            "fileNames": list(names or []),
        }
        for page in self._pages(
            docs.RUN_FILES,
            variables,
            ("project", "run", "files"),
            "fileCursor",
            missing=(entity, project, run_id),
        ):
            yield [
                parse_file(node, path=path, operation="RunFiles")
                for node, path in zip(page.nodes, page.paths, strict=True)
                if node is not None
            ]

    def download(self, url: str, dest: IO[bytes], *, chunk_size: int = 1 << 20) -> tuple[int, str]:
        """Stream ``url`` into ``dest``; return ``(size, md5)`` of what was written.

        ``md5`` is base64 of the raw digest, the form W&B reports in ``File.md5``, so the
        caller compares it directly. A transfer that breaks is retried from the start:
        ``dest`` is rewound to where it was and truncated first.

        ``dest`` must be seekable (a file): that is what makes the restart possible.

        Raises:
            NotFoundError: 403/404/410 (a missing file, or an expired signed URL).
        """
        if not dest.seekable():
            raise ValueError("download needs a seekable destination (a file, not a pipe)")
        start = dest.tell()
        operation = "download"

        def attempt() -> tuple[int, str]:
            dest.seek(start)
            dest.truncate()
            resp = send(
                self.session, "GET", url, operation=operation, limiter=self.storage_limiter,
                stream=True,
            )
            digest = hashlib.md5(usedforsecurity=False)
            size = 0
            for chunk in stream_body(
                resp,
                operation=operation,
                url=self.session.url(url),
                redact=self.session.redact,
                chunk_size=chunk_size,
            ):
                dest.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            return size, base64.b64encode(digest.digest()).decode("ascii")

        return self.policy.call(attempt, idempotent=True)

    # --- sweeps --------------------------------------------------------------------------

    def iter_sweeps(
        self, entity: str, project: str, *, per_page: int = 50
    ) -> Iterator[list[SweepRecord]]:
        """The sweeps of a project, page by page (``config`` is the YAML text)."""
        variables = {"entity": entity, "project": project, "perPage": per_page}
        for page in self._pages(
            docs.SWEEPS, variables, ("project", "sweeps"), "cursor", missing=(entity, project)
        ):
            yield [
                parse_sweep(node, entity, project, path=path, operation="GetSweeps")
                for node, path in zip(page.nodes, page.paths, strict=True)
            ]

    def get_sweep(self, entity: str, project: str, sweep_id: str) -> SweepRecord | None:
        """One sweep by its short id, or None."""
        data = self.execute(docs.SWEEP, {"entity": entity, "project": project, "name": sweep_id})
        value = dig(data, "project", "sweep", operation="GetSweep")
        if value is None:
            return None
        return parse_sweep(value, entity, project, path="data.project.sweep", operation="GetSweep")

    def sweep_run_ids(self, entity: str, project: str, sweep_id: str) -> list[str]:
        """The ids of the runs of a sweep, as the official client finds them (a filter)."""
        filters = {"$and": [{"sweep": sweep_id}]}
        return [rid for page in self.iter_run_ids(entity, project, filters=filters) for rid in page]

    # --- writes (the outbox) -------------------------------------------------------------

    def upsert_buckets(self, inputs: Sequence[Mapping[str, Any]]) -> list[UpsertOutcome]:
        """Write many runs in ONE request (aliased ``upsertBucket`` mutations).

        Each input is an ``UpsertBucketInput``: ``{"id": storage_id, ...}`` or ``{"name",
        "modelName", "entityName", ...}``, with only the fields to change; ``config`` and
        ``summaryMetrics`` may be dicts (encoded like the SDK) or JSON strings, and are
        whole documents that replace the stored ones. The server runs the aliases in
        order; one refused input does not undo the others, so the result is per input.

        Raises:
            UpstreamUnavailable: with ``maybe_applied`` when the outcome is unknown; read
                the runs back (:meth:`get_runs`) before sending again.
            EditRejected: the whole document was refused (nothing applied).
        """
        if not inputs:
            return []
        variables = {f"i{k}": _encode_input(item) for k, item in enumerate(inputs)}
        document = docs.upsert_buckets(len(inputs))
        result = self.graphql(document, variables, idempotent=False)
        by_alias: dict[str, list[dict[str, Any]]] = {}
        global_errors: list[dict[str, Any]] = []
        for err in result.errors:
            path = err.get("path") if isinstance(err, dict) else None
            if isinstance(path, list) and path and isinstance(path[0], str):
                by_alias.setdefault(path[0], []).append(err)
            else:
                global_errors.append(err if isinstance(err, dict) else {"message": str(err)})
        if global_errors or result.data is None:
            msg = _error_message(global_errors or result.errors) or "'data' is null"
            raise EditRejected(
                self.session.redact(f"UpsertBuckets: the server refused the batch: {msg}"),
                status=200,
                operation="UpsertBuckets",
            )
        outcomes = []
        for k in range(len(inputs)):
            alias = f"u{k}"
            errs = by_alias.get(alias)
            payload = result.data.get(alias)
            if errs or not isinstance(payload, dict) or not payload.get("bucket"):
                reason = _error_message(errs) if errs else "no run in the answer"
                error = EditRejected(
                    self.session.redact(f"UpsertBuckets[{k}]: {reason}"),
                    status=200,
                    operation="UpsertBuckets",
                )
                outcomes.append(UpsertOutcome(k, None, None, error))
            else:
                inserted = payload.get("inserted")
                outcomes.append(
                    UpsertOutcome(
                        k, payload["bucket"], inserted if isinstance(inserted, bool) else None
                    )
                )
        return outcomes

    def create_run_files(
        self, entity: str, project: str, run_id: str, names: Sequence[str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Ask for upload URLs: returns ``({name: url}, headers to send with each PUT)``.

        Server-relative URLs are made absolute under the base URL, as wandb-core does.

        Raises:
            NotFoundError: the run does not exist upstream.
        """
        variables = {"entity": entity, "project": project, "run": run_id, "files": list(names)}
        data = self.execute(docs.CREATE_RUN_FILES, variables, idempotent=True)
        op = "CreateRunFiles"
        payload = dig(data, "createRunFiles", operation=op)
        if payload is None or not dig(payload, "runID", path="data.createRunFiles", operation=op):
            raise NotFoundError(
                f"{op}: run {entity}/{project}/{run_id} does not exist upstream", operation=op
            )
        headers = parse_upload_headers(
            dig(payload, "uploadHeaders", path="data.createRunFiles", operation=op),
            path="data.createRunFiles.uploadHeaders",
            operation=op,
        )
        urls: dict[str, str] = {}
        files = dig(payload, "files", path="data.createRunFiles", operation=op)
        if not isinstance(files, list):
            raise ProtocolError(
                f"{op}: malformed answer from the server: data.createRunFiles.files: "
                "expected a list",
                operation=op,
            )
        for i, item in enumerate(files):
            path = f"data.createRunFiles.files[{i}]"
            name = dig(item, "name", path=path, operation=op)
            url = dig(item, "uploadUrl", path=path, operation=op)
            if not isinstance(name, str) or not isinstance(url, str) or not url:
                raise ProtocolError(
                    f"{op}: malformed answer from the server: {path}: no name/uploadUrl",
                    operation=op,
                )
            urls[name] = self.session.url(url)
        return urls, headers

    def upload(
        self, url: str, fileobj: IO[bytes], headers: Mapping[str, str] | None = None,
        *, resend: bool = True,
    ) -> None:
        """PUT the bytes of ``fileobj`` (from its current position) to an upload URL.

        Retried like a read: putting the same bytes twice leaves the same file. With
        ``resend=False`` a PUT that may have landed (connection lost after sending, 5xx)
        is not sent again: the outbox reads the file back first, because someone else may
        have replaced it in the meantime.
        """
        start = fileobj.tell()
        size = fileobj.seek(0, io.SEEK_END) - start

        def attempt() -> None:
            fileobj.seek(start)
            # An empty stream would make requests fall back to chunked encoding, which
            # object stores refuse for PUT; W&B sends ``Content-Length: 0`` instead.
            resp = send(
                self.session,
                "PUT",
                url,
                operation="upload",
                limiter=self.storage_limiter,
                write=True,
                data=fileobj if size > 0 else b"",
                headers={**(headers or {}), "Content-Length": str(size)},
            )
            resp.close()

        self.policy.call(attempt, idempotent=resend)

    def mark_run_files_uploaded(
        self, entity: str, project: str, run_id: str, names: Sequence[str]
    ) -> None:
        """Commit uploaded files (servers with MARK_RUN_FILES_UPLOADED need it)."""
        variables = {"entity": entity, "project": project, "run": run_id, "files": list(names)}
        data = self.execute(docs.MARK_RUN_FILES_UPLOADED, variables, idempotent=True)
        if not dig(data, "markRunFilesUploaded", "success", operation="MarkRunFilesUploaded"):
            raise EditRejected(
                f"MarkRunFilesUploaded: the server did not confirm {len(names)} file(s) of "
                f"{entity}/{project}/{run_id}",
                operation="MarkRunFilesUploaded",
            )

    def delete_files(self, file_ids: Sequence[str], project_id: int | str | None) -> None:
        """Delete run files by ``File.id`` (re-list by name first: ids change on upload)."""
        pid = int(project_id) if project_id is not None else None
        # Not idempotent in its answer: a repeat after an applied delete may be refused.
        data = self.execute(docs.DELETE_FILES, {"files": list(file_ids), "projectId": pid})
        if not dig(data, "deleteFiles", "success", operation="deleteFiles"):
            raise EditRejected(
                f"deleteFiles: the server did not confirm deleting {len(file_ids)} file(s)",
                operation="deleteFiles",
            )

    # --- helpers -------------------------------------------------------------------------

    def _run_or_raise(
        self, data: dict[str, Any], entity: str, project: str, run_id: str, operation: str
    ) -> Any:
        run = dig(data, "project", "run", operation=operation)
        if run is None:
            raise NotFoundError(
                f"{operation}: run {entity}/{project}/{run_id} not found", operation=operation
            )
        return run

    def _pages(
        self,
        document: str,
        variables: dict[str, Any],
        conn_path: tuple[str, ...],
        cursor_var: str,
        *,
        missing: tuple[str, ...] | None = None,
    ) -> Iterator[Page]:
        """Follow a connection: ``after`` = the last edge's cursor, until no next page.

        Stops with a ProtocolError if the server says there is a next page but the cursor
        does not move (a loop that would never end).
        """
        _, operation = _operation_of(document)
        op = operation or "query"
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            data = self.execute(document, {**variables, cursor_var: cursor})
            conn = dig(data, *conn_path, operation=op)
            if conn is None:
                if missing is not None:
                    raise NotFoundError(f"{op}: {'/'.join(missing)} not found", operation=op)
                raise ProtocolError(
                    f"{op}: malformed answer from the server: data.{'.'.join(conn_path)} is null",
                    operation=op,
                )
            page = parse_connection(conn, "data." + ".".join(conn_path), op)
            yield page
            if not page.has_next or not page.nodes:
                return
            if page.cursor is None or page.cursor in seen:
                raise ProtocolError(
                    f"{op}: the server reports more pages but its cursor did not advance",
                    operation=op,
                )
            seen.add(page.cursor)
            cursor = page.cursor


def _encode_input(item: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(item)
    for key in _JSON_STRING_INPUTS:
        value = out.get(key)
        if value is not None and not isinstance(value, str):
            out[key] = dumps_wire(value)
    return out
