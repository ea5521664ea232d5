"""The client side of W&B's file_stream: write history, events and summary of a run.

``POST {base}/files/{entity}/{project}/{run}/file_stream`` is how a run's rows reach W&B
(``wandb-logging-protocol.md`` section 3). Each request says "write these lines at these
line numbers"::

    {"files": {"wandb-history.jsonl": {"offset": 120, "content": ["{...}", ...]},
               "wandb-events.jsonl":  {"offset": 0,   "content": [...]},
               "wandb-summary.json":  {"offset": 0,   "content": ["{whole summary}"]}},
     "complete": true, "exitcode": 0}

Because lines are addressed by offset, re-sending a request is idempotent: the server
overwrites the same lines. That is what makes the writer safe to retry on any transient
failure (the body is re-sent byte for byte), and what lets a caller resume an interrupted
upload from the line count the server reports, without duplicates.

Lines are encoded as the SDK writes them (compact JSON, bare ``NaN``/``Infinity``), by the
caller or with :func:`encode_line`. Requests are bounded (``max_request_bytes``, 4 MiB by
default, under W&B's 10 MiB); a single line over W&B's per-line limit is refused before
anything is sent, because W&B would drop it silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from mirror.errors import EditRejected
from mirror.store.codec import dumps_wire, loads_wire
from mirror.upstream.client import WandbClient
from mirror.upstream.http import send

HISTORY = "wandb-history.jsonl"
EVENTS = "wandb-events.jsonl"
SUMMARY = "wandb-summary.json"

MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_LINE_BYTES = 10 * 1024 * 1024 - 100 * 1024  # W&B drops longer lines (MaxFileLineSize)

__all__ = [
    "EVENTS",
    "HISTORY",
    "MAX_LINE_BYTES",
    "MAX_REQUEST_BYTES",
    "SUMMARY",
    "FileStreamWriter",
    "StreamResult",
    "encode_line",
]


def encode_line(value: Any) -> str:
    """One history/events/summary line exactly as the SDK writes it (bare NaN/Infinity)."""
    return dumps_wire(value)


@dataclass
class StreamResult:
    """What a :meth:`FileStreamWriter.write` call sent."""

    requests: int = 0
    lines: dict[str, int] = field(default_factory=dict)  # lines sent per file
    offsets: dict[str, int] = field(default_factory=dict)  # next offset per file
    stopped: bool = False  # the server asked the run to stop


class FileStreamWriter:
    """Writes lines of one run through file_stream, in bounded, retried requests.

    Uses the :class:`~mirror.upstream.client.WandbClient`'s session, rate limiter and
    retry policy. Thread-compatible: one writer per run, used by one thread.
    """

    def __init__(
        self,
        client: WandbClient,
        entity: str,
        project: str,
        run_id: str,
        *,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self.client = client
        self.path = (
            f"/files/{quote(entity, safe='')}/{quote(project, safe='')}/"
            f"{quote(run_id, safe='')}/file_stream"
        )
        self.max_request_bytes = max(1024, max_request_bytes)
        self.requests = 0

    def post(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Send one request (retried: a resend at the same offsets is idempotent)."""
        payload = json.dumps(body, allow_nan=False, separators=(",", ":")).encode("utf-8")

        def attempt() -> dict[str, Any]:
            resp = send(
                self.client.session,
                "POST",
                self.path,
                operation="file_stream",
                limiter=self.client.limiter,
                write=True,
                data=payload,
                headers={"Content-Type": "application/json"},
            )
            try:
                doc = loads_wire(resp.content) if resp.content else {}
            except (ValueError, UnicodeDecodeError):
                doc = {}  # the SDK tolerates a non-JSON answer too
            finally:
                resp.close()
            return doc if isinstance(doc, dict) else {}

        answer = self.client.policy.call(attempt, idempotent=True)
        self.requests += 1
        return answer

    def write(
        self,
        streams: Mapping[str, tuple[int, Iterable[str]]],
        *,
        summary: str | None = None,
        complete: bool = False,
        exitcode: int | None = None,
        uploaded: Sequence[str] = (),
        on_ack: Callable[[dict[str, int]], None] | None = None,
    ) -> StreamResult:
        """Send every line of ``streams`` (``{file: (first offset, lines)}``), then finish.

        Lines are consumed lazily and packed into requests of at most
        ``max_request_bytes``; after each acknowledged request ``on_ack`` receives the
        next offset of every file (the caller persists it to resume after a crash). The
        summary line, ``uploaded`` names and ``complete``/``exitcode`` ride on the last
        request (one request is sent even when there are no lines, if any of those is
        set).
        """
        result = StreamResult()
        offsets = {name: start for name, (start, _lines) in streams.items()}
        body_files: dict[str, dict[str, Any]] = {}
        size = 0

        def flush(final: bool) -> None:
            nonlocal body_files, size
            body: dict[str, Any] = {"files": body_files} if body_files else {}
            if final:
                if summary is not None:
                    body.setdefault("files", {})[SUMMARY] = {"offset": 0, "content": [summary]}
                if uploaded:
                    body["uploaded"] = list(uploaded)
                if complete:
                    body["complete"] = True
                    body["exitcode"] = 0 if exitcode is None else int(exitcode)
            if not body:
                return
            answer = self.post(body)
            result.requests += 1
            result.stopped = result.stopped or bool(answer.get("stopped"))
            for name, chunk in body_files.items():
                offsets[name] = chunk["offset"] + len(chunk["content"])
            if on_ack is not None and body_files:
                on_ack(dict(offsets))
            body_files = {}
            size = 0

        for name, (start, lines) in streams.items():
            next_offset = start
            for index, line in enumerate(lines, start):
                encoded = len(json.dumps(line))
                if encoded > MAX_LINE_BYTES:
                    raise EditRejected(
                        f"file_stream: line {index} of {name} is {encoded:,} bytes, over "
                        f"W&B's limit of {MAX_LINE_BYTES:,}; W&B would drop it",
                        operation="file_stream",
                    )
                if body_files and size + encoded + 64 > self.max_request_bytes:
                    flush(final=False)
                chunk = body_files.get(name)
                if chunk is None:
                    chunk = body_files[name] = {"offset": next_offset, "content": []}
                chunk["content"].append(line)
                size += encoded + 1
                next_offset = index + 1
                result.lines[name] = result.lines.get(name, 0) + 1
        flush(final=True)
        result.offsets = dict(offsets)
        return result
