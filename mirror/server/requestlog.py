"""The server's request log: what crossed the wire, so tests can count it exactly.

One :class:`RequestEntry` per request: route, method, path, GraphQL operation name(s),
status, bytes in and out, duration and the injected fault. Tests assert on it ("the sync
sent exactly 3 HistoryPage queries", "the retry after the dropped connection re-sent the
same chunk"); benchmarks sum it; ``mirror serve --request-log FILE`` appends it as JSON
lines for a human to read.

What is never recorded: headers (so never the ``Authorization`` header or the API key)
and query strings (so never the signature of a signed storage URL). Entries are built
from explicit fields only, so nothing else can slip in.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any


@dataclass(frozen=True)
class RequestEntry:
    """One request as the server saw it. ``status`` is None when no answer was sent."""

    time: float  # epoch seconds when the request arrived
    route: str  # graphql | file_stream | storage_get | storage_put | otel | healthz | other
    method: str
    path: str  # without the query string
    operations: tuple[str, ...]  # GraphQL operation names ("" if the client sent none)
    status: int | None
    request_bytes: int
    response_bytes: int
    duration_ms: float
    fault: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["operations"] = list(self.operations)
        return out


class RequestLog:
    """Thread-safe in-memory list of :class:`RequestEntry`, optionally mirrored to a file."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._entries: list[RequestEntry] = []
        self.path = Path(path) if path is not None else None
        self._fh: IO[str] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def append(self, entry: RequestEntry) -> None:
        line = json.dumps(entry.to_json(), ensure_ascii=False) if self._fh else None
        with self._lock:
            self._entries.append(entry)
            if self._fh is not None and line is not None:
                self._fh.write(line + "\n")
                self._fh.flush()

    def entries(
        self,
        route: str | None = None,
        *,
        operation: str | None = None,
        status: int | None = None,
        method: str | None = None,
    ) -> list[RequestEntry]:
        """A snapshot of the entries, optionally only those matching all given fields."""
        with self._lock:
            items = list(self._entries)
        return [
            e for e in items
            if (route is None or e.route == route)
            and (operation is None or operation in e.operations)
            and (status is None or e.status == status)
            and (method is None or e.method == method)
        ]

    def count(self, route: str | None = None, **kw: Any) -> int:
        return len(self.entries(route, **kw))

    def faults(self) -> list[RequestEntry]:
        """The entries that had a fault injected."""
        return [e for e in self.entries() if e.fault]

    def clear(self) -> None:
        """Forget the in-memory entries (the file, if any, keeps them)."""
        with self._lock:
            self._entries.clear()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __iter__(self) -> Iterator[RequestEntry]:
        return iter(self.entries())


__all__ = ["RequestEntry", "RequestLog"]
