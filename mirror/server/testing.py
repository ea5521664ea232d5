"""Run ``mirror serve`` inside the current process, for tests, benchmarks and the demo.

``serve_in_thread`` binds a free port on 127.0.0.1, serves in a background thread, waits
until the server answers, and returns a :class:`RunningServer`; leaving its ``with``
block (or ``stop()``) shuts it down and joins every thread it started, so a test suite can
start hundreds of servers without leaking threads or ports::

    with serve_in_thread(store, faults=FaultPlan([Fault(route="graphql", kind="429",
                                                        calls=[1])])) as srv:
        api = wandb.Api(overrides={"base_url": srv.url}, api_key=srv.api_key)
        ...
        assert srv.request_log.count("graphql", status=429) == 1
"""

from __future__ import annotations

import http.client
import threading
import time
from types import TracebackType

from mirror.errors import MirrorError
from mirror.server.context import ServerContext
from mirror.server.faults import FaultPlan
from mirror.server.http import MirrorServer, make_server
from mirror.server.requestlog import RequestLog
from mirror.store import Store

DEFAULT_TEST_API_KEY = "mirror_test_key_0123456789abcdefghijklmnopqrstuv"
"""A fixed 48-character key the official client accepts (40+ of ``[A-Za-z0-9_]``)."""


class RunningServer:
    """A server serving in a background thread. Use as a context manager or ``stop()``."""

    def __init__(self, server: MirrorServer, thread: threading.Thread) -> None:
        self.server = server
        self._thread = thread

    @property
    def url(self) -> str:
        """Base URL for ``WANDB_BASE_URL`` / ``Api(overrides={"base_url": ...})``."""
        return self.server.url

    @property
    def api_key(self) -> str:
        return self.server.api_key

    @property
    def ctx(self) -> ServerContext:
        return self.server.ctx

    @property
    def store(self) -> Store:
        return self.server.ctx.store

    @property
    def request_log(self) -> RequestLog:
        return self.server.request_log

    @property
    def faults(self) -> FaultPlan:
        """The live fault plan: change it (``set``/``add``/``clear``) while serving."""
        return self.server.faults

    @faults.setter
    def faults(self, plan: FaultPlan) -> None:
        self.server.faults = plan

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and join the server's threads (idempotent)."""
        self.server.stop(timeout)
        self._thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningServer({self.url!r})"


def serve_in_thread(
    store: Store,
    *,
    api_key: str | None = None,
    authoritative: bool = True,
    faults: FaultPlan | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    request_log: RequestLog | None = None,
    entity: str = "mirror",
    ready_timeout: float = 10.0,
) -> RunningServer:
    """Start a server over ``store`` in a thread and wait until it answers.

    ``api_key`` defaults to :data:`DEFAULT_TEST_API_KEY`; ``authoritative`` defaults to
    True because in tests the server plays the upstream W&B.
    """
    server = make_server(
        store, host=host, port=port,
        api_key=api_key if api_key is not None else DEFAULT_TEST_API_KEY,
        authoritative=authoritative, faults=faults, request_log=request_log, entity=entity,
    )
    thread = server.start_background(name=f"mirror-serve-{server.server_address[1]}")
    running = RunningServer(server, thread)
    try:
        _wait_ready(server, ready_timeout)
    except BaseException:
        running.stop()
        raise
    return running


def _wait_ready(server: MirrorServer, timeout: float) -> None:
    """Poll ``GET /healthz`` (not logged) until the server answers or ``timeout`` passes."""
    host, port = server.server_address[:2]
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(str(connect_host), int(port), timeout=2.0)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError as exc:
            last = exc
        finally:
            conn.close()
        time.sleep(0.01)
    raise MirrorError(f"the server at {server.url} did not answer within {timeout}s: {last}")


__all__ = ["DEFAULT_TEST_API_KEY", "RunningServer", "serve_in_thread"]
