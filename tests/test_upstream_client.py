"""mirror/upstream over real HTTP on 127.0.0.1: retries, errors, limits, and the real server.

Two kinds of server, both real sockets, nothing patched:

* a tiny stdlib ``http.server`` stub (``Stub``) that answers from a script: exact
  statuses, broken bodies, dropped connections, stalls. It pins down the transport rules
  (which failures are retried, after how long, what errors say).
* ``mirror serve`` itself (``serve_in_thread`` over a store filled by ``seed_demo``): the
  client pages through what the server holds and must get exactly what the store has,
  also under the server's own fault injection.

Retry delays go through an injected sleep that only records (and advances a fake clock),
so no test sleeps for real.
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import hashlib
import io
import json
import random
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mirror.errors import (
    AuthError,
    EditRejected,
    NotFoundError,
    ProtocolError,
    RateLimited,
    UpstreamError,
    UpstreamUnavailable,
)
from mirror.server import faults as faults_mod
from mirror.server import seed
from mirror.server import testing as server_testing
from mirror.store import codec
from mirror.upstream.client import WandbClient
from mirror.upstream.http import (
    USER_AGENT,
    RateLimiter,
    RetryPolicy,
    make_session,
    maybe_applied,
    parse_retry_after,
)

KEY = "sekrit_" + "k" * 40
BASIC = "Basic " + base64.b64encode(f"api:{KEY}".encode()).decode()


# --- fake time -----------------------------------------------------------------------------


class FakeTime:
    """A clock that moves only when someone sleeps; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_policy(ft: FakeTime, seed: int = 7, **kw: Any) -> RetryPolicy:
    return RetryPolicy(rng=random.Random(seed), sleep=ft.sleep, clock=ft.clock, **kw)


def make_client(
    url: str,
    ft: FakeTime | None = None,
    *,
    key: str | None = KEY,
    policy: RetryPolicy | None = None,
    limiter: RateLimiter | None = None,
    timeout: tuple[float, float] = (2.0, 5.0),
) -> WandbClient:
    ft = ft or FakeTime()
    return WandbClient(
        make_session(base_url=url, api_key=key, timeout=timeout),
        policy=policy or make_policy(ft),
        limiter=limiter or RateLimiter(1000.0, burst=1000, sleep=lambda s: None),
    )


# --- the stub server -----------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | dict[str, Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    action: str | None = None  # "drop": read the request, close without answering
    delay: float = 0.0


def gql(data: Any = None, errors: list[Any] | None = None) -> Reply:
    body: dict[str, Any] = {"data": data}
    if errors is not None:
        body["errors"] = errors
    return Reply(body=body)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Stub:
    """A scripted HTTP server: each request takes the next Reply (then ``default``)."""

    def __init__(self) -> None:
        self.script: list[Reply | Callable[[Seen], Reply]] = []
        self.default: Reply | Callable[[Seen], Reply] = gql({"ok": True})
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, dict(self.headers.items()), body)
                with stub._lock:
                    stub.seen.append(seen)
                    item = stub.script.pop(0) if stub.script else stub.default
                reply = item(seen) if callable(item) else item
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                payload = reply.body
                if isinstance(payload, dict):
                    payload = json.dumps(payload).encode()
                elif isinstance(payload, str):
                    payload = payload.encode()
                self.send_response(reply.status)
                headers = {"Content-Type": "application/json", **reply.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def graphql_calls(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/graphql"]


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    try:
        yield s
    finally:
        s.close()


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


# === transport: retries and backoff ========================================================


def test_retries_with_full_jitter_exact_delays(stub: Stub) -> None:
    stub.script = [Reply(503), Reply(408), Reply(500, body="<html>oops</html>")]
    stub.default = gql({"viewer": {"id": "u1", "entity": "alice"}})
    ft = FakeTime()
    client = make_client(stub.url, ft, policy=make_policy(ft, seed=7))

    viewer = client.viewer()

    assert viewer.entity == "alice"
    assert len(stub.graphql_calls()) == 4
    rng = random.Random(7)
    expected = [rng.uniform(0, min(30.0, 0.5 * 2 ** (n - 1))) for n in (1, 2, 3)]
    assert ft.sleeps == expected
    for n, delay in enumerate(ft.sleeps, start=1):
        assert 0.0 <= delay <= 0.5 * 2 ** (n - 1)


def test_backoff_is_capped() -> None:
    ft = FakeTime()
    policy = make_policy(ft, base_delay=1.0, max_delay=4.0)
    assert all(0 <= policy.backoff(n) <= 4.0 for n in range(1, 50))


def test_retry_after_seconds_is_honoured_exactly(stub: Stub) -> None:
    stub.script = [
        Reply(429, headers={"Retry-After": "3"}),
        Reply(503, headers={"Retry-After": "1.5"}),
    ]
    stub.default = gql({"viewer": {"id": "u1"}})
    ft = FakeTime()
    make_client(stub.url, ft).viewer()
    assert ft.sleeps == [3.0, 1.5]


def test_retry_after_http_date(stub: Stub) -> None:
    when = email.utils.formatdate(time.time() + 8, usegmt=True)
    stub.script = [Reply(429, headers={"Retry-After": when})]
    stub.default = gql({"viewer": {"id": "u1"}})
    ft = FakeTime()
    make_client(stub.url, ft).viewer()
    assert len(ft.sleeps) == 1 and 6.0 <= ft.sleeps[0] <= 8.0


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.25 ") == 0.25
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == 30.0
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


def test_attempt_budget_exhaustion_raises_the_transient_error(stub: Stub) -> None:
    stub.default = Reply(503, body={"errors": [{"message": "down for maintenance"}]})
    ft = FakeTime()
    client = make_client(stub.url, ft, policy=make_policy(ft, max_attempts=4))
    with pytest.raises(UpstreamUnavailable) as info:
        client.viewer()
    err = info.value
    assert err.transient and err.status == 503
    assert "down for maintenance" in err.message and "Viewer" in err.message
    assert len(stub.graphql_calls()) == 4
    assert len(ft.sleeps) == 3


def test_time_budget_stops_before_overrunning(stub: Stub) -> None:
    stub.default = Reply(500)
    ft = FakeTime()
    policy = make_policy(ft, max_attempts=100, base_delay=1.0, max_delay=1.0, max_elapsed=5.0)
    with pytest.raises(UpstreamUnavailable):
        make_client(stub.url, ft, policy=policy).viewer()
    assert sum(ft.sleeps) <= 5.0
    assert len(stub.graphql_calls()) == len(ft.sleeps) + 1


def test_retry_after_beyond_the_budget_is_not_slept(stub: Stub) -> None:
    stub.default = Reply(429, headers={"Retry-After": "3600"})
    ft = FakeTime()
    with pytest.raises(RateLimited) as info:
        make_client(stub.url, ft).viewer()
    assert info.value.retry_after == 3600.0
    assert ft.sleeps == []
    assert len(stub.graphql_calls()) == 1


def test_401_is_an_auth_error_at_once(stub: Stub) -> None:
    stub.default = Reply(401, body={"errors": [{"message": "invalid api key"}]})
    ft = FakeTime()
    with pytest.raises(AuthError) as info:
        make_client(stub.url, ft).viewer()
    assert info.value.terminal and info.value.status == 401
    assert "invalid api key" in info.value.message
    assert len(stub.graphql_calls()) == 1 and ft.sleeps == []


def test_null_viewer_is_an_auth_error(stub: Stub) -> None:
    stub.default = gql({"viewer": None})
    with pytest.raises(AuthError):
        make_client(stub.url).viewer()


@pytest.mark.parametrize(
    ("status", "query_error", "mutation_error"),
    [
        (400, ProtocolError, EditRejected),
        (403, NotFoundError, EditRejected),
        (404, NotFoundError, EditRejected),
        (409, ProtocolError, EditRejected),
        (410, NotFoundError, EditRejected),
        (413, ProtocolError, EditRejected),
        (422, ProtocolError, EditRejected),
        (501, ProtocolError, ProtocolError),  # not implemented: we spoke wrongly
    ],
)
def test_terminal_statuses(
    stub: Stub, status: int, query_error: type[UpstreamError], mutation_error: type[UpstreamError]
) -> None:
    stub.default = Reply(status, body={"errors": [{"message": f"nope {status}"}]})
    ft = FakeTime()
    client = make_client(stub.url, ft)
    with pytest.raises(query_error) as q:
        client.get_run("e", "p", "r")
    with pytest.raises(mutation_error) as m:
        client.delete_files(["RmlsZTox"], 1)
    for err in (q.value, m.value):
        assert err.terminal and err.status == status and f"nope {status}" in err.message
    assert len(stub.graphql_calls()) == 2 and ft.sleeps == []


def test_dead_network_fails_fast_and_was_not_sent() -> None:
    ft = FakeTime()
    url = f"http://127.0.0.1:{_closed_port()}"
    client = make_client(url, ft, policy=make_policy(ft, max_attempts=3))
    t0 = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as info:
        client.viewer()
    assert time.monotonic() - t0 < 2.0
    err = info.value
    assert err.transient and err.status is None and err.exc is not None
    assert not maybe_applied(err)
    assert "refused" in err.message.lower()
    assert len(ft.sleeps) == 2  # retried: nothing reached the server


def test_refused_mutation_is_retried_because_nothing_was_sent() -> None:
    ft = FakeTime()
    client = make_client(
        f"http://127.0.0.1:{_closed_port()}", ft, policy=make_policy(ft, max_attempts=3)
    )
    with pytest.raises(UpstreamUnavailable):
        client.upsert_buckets([{"id": "x", "notes": "n"}])
    assert len(ft.sleeps) == 2


def test_dropped_connection_after_a_write_is_ambiguous_and_not_resent(stub: Stub) -> None:
    stub.script = [Reply(action="drop")]
    stub.default = gql({"u0": {"bucket": {"id": "x"}, "inserted": False}})
    ft = FakeTime()
    client = make_client(stub.url, ft)
    with pytest.raises(UpstreamUnavailable) as info:
        client.upsert_buckets([{"id": "x", "notes": "n"}])
    assert maybe_applied(info.value)
    assert "after the request was sent" in info.value.message
    assert len(stub.graphql_calls()) == 1 and ft.sleeps == []


def test_dropped_connection_on_a_query_is_retried(stub: Stub) -> None:
    stub.script = [Reply(action="drop")]
    stub.default = gql({"viewer": {"id": "u1", "entity": "alice"}})
    ft = FakeTime()
    assert make_client(stub.url, ft).viewer().entity == "alice"
    assert len(stub.graphql_calls()) == 2 and len(ft.sleeps) == 1


def test_5xx_on_a_write_is_ambiguous(stub: Stub) -> None:
    stub.default = Reply(500)
    ft = FakeTime()
    with pytest.raises(UpstreamUnavailable) as info:
        make_client(stub.url, ft).upsert_buckets([{"id": "x", "notes": "n"}])
    assert maybe_applied(info.value) and info.value.status == 500
    assert len(stub.graphql_calls()) == 1


def test_429_on_a_write_is_retried(stub: Stub) -> None:
    stub.script = [Reply(429, headers={"Retry-After": "2"})]
    stub.default = gql({"u0": {"bucket": {"id": "x"}, "inserted": False}})
    ft = FakeTime()
    [out] = make_client(stub.url, ft).upsert_buckets([{"id": "x", "notes": "n"}])
    assert out.ok and ft.sleeps == [2.0]


def test_read_timeout_is_transient_and_ambiguous(stub: Stub) -> None:
    stub.default = Reply(delay=1.0, body={"data": {}})
    ft = FakeTime()
    client = make_client(stub.url, ft, timeout=(1.0, 0.2))
    t0 = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as info:
        client.upsert_buckets([{"id": "x"}])
    assert time.monotonic() - t0 < 0.9
    assert maybe_applied(info.value) and "timed out" in info.value.message


def test_session_applies_its_timeout_to_every_call(stub: Stub) -> None:
    import requests

    stub.default = Reply(delay=1.0)
    session = make_session(base_url=stub.url, api_key=KEY, timeout=(1.0, 0.2))
    t0 = time.monotonic()
    with pytest.raises(requests.Timeout):
        session.get(stub.url + "/anything")
    assert time.monotonic() - t0 < 0.9


# === transport: malformed answers ==========================================================


@pytest.mark.parametrize(
    ("reply", "needle"),
    [
        (Reply(body="<html><body>Welcome to nginx</body></html>",
               headers={"Content-Type": "text/html"}), "not JSON (text/html)"),
        (Reply(body={}), "neither 'data' nor 'errors'"),
        (Reply(body='{"data": {"viewer": {"id": "u'), "not valid JSON (truncated?)"),
        (Reply(body="[1, 2]"), "not an object"),
        (Reply(body={"data": None}), "'data' is null"),
        (Reply(body={"data": {"viewer": {"id": "u"}}, "errors": [{"message": "boom"}]}), "boom"),
        (Reply(body={"data": None, "errors": [{"message": "query too complex"}]}),
         "query too complex"),
    ],
)  # fmt: skip
def test_malformed_answers_are_protocol_errors(stub: Stub, reply: Reply, needle: str) -> None:
    stub.default = reply
    ft = FakeTime()
    with pytest.raises(ProtocolError) as info:
        make_client(stub.url, ft).viewer()
    assert needle in info.value.message
    assert info.value.operation == "Viewer" and info.value.terminal
    assert ft.sleeps == []  # a broken answer is not weather: no retry


def test_graphql_errors_on_a_mutation_are_rejected_edits(stub: Stub) -> None:
    stub.default = gql(None, errors=[{"message": "project permission denied"}])
    with pytest.raises(EditRejected) as info:
        make_client(stub.url).delete_files(["RmlsZTox"], 3)
    assert "project permission denied" in info.value.message


def _runs_page(nodes: list[dict[str, Any]], has_next: bool = False) -> Reply:
    edges = [{"node": n, "cursor": f"c{i}"} for i, n in enumerate(nodes)]
    return gql(
        {
            "project": {
                "internalId": "1",
                "runs": {"edges": edges, "pageInfo": {"endCursor": None, "hasNextPage": has_next}},
            }
        }
    )


@pytest.mark.parametrize(
    ("node", "path"),
    [
        ({"id": "x"}, "data.project.runs.edges[0].node.name: missing"),
        ({"name": 5.5}, "data.project.runs.edges[0].node.name: expected a string"),
        ({"name": "r", "config": "{not json"}, "data.project.runs.edges[0].node.config: not valid"),
        ({"name": "r", "config": "[1]"}, "node.config: expected a JSON object"),
        ({"name": "r", "tags": "a,b"}, "node.tags: expected a list of strings"),
        ({"name": "r", "historyLineCount": "many"}, "node.historyLineCount: expected an integer"),
    ],
)
def test_malformed_fields_are_named(stub: Stub, node: dict[str, Any], path: str) -> None:
    stub.default = _runs_page([node])
    with pytest.raises(ProtocolError) as info:
        next(make_client(stub.url).iter_runs("e", "p"))
    assert path in info.value.message


def test_odd_values_are_data_not_errors(stub: Stub) -> None:
    node = {
        "name": "r",
        "config": '{"lr": {"value": NaN, "desc": null}, '
        '"big": {"value": 123456789012345678901234}}',
        "summaryMetrics": '{"loss": Infinity, "neg": -Infinity, "\\u00fc": [NaN], '
        '"m": {"_type": "histogram"}}',
        "systemMetrics": None,
        "historyKeys": {"lastStep": 41, "keys": {"x": {"previousValue": float("nan")}}},
        "tags": None,
        "user": None,
    }
    stub.default = _runs_page([node])
    [run] = next(make_client(stub.url).iter_runs("e", "p"))
    assert run.config is not None and run.summary is not None
    assert run.config["lr"]["value"] != run.config["lr"]["value"]  # NaN, kept wrapped
    assert run.config["big"]["value"] == 123456789012345678901234
    assert run.summary["loss"] == float("inf") and run.summary["neg"] == float("-inf")
    assert run.summary["ü"][0] != run.summary["ü"][0]
    assert run.last_step == 41 and run.tags == [] and run.system_metrics is None


def test_parse_layer_is_pure_and_lenient_about_values() -> None:
    """The parsers take plain dicts: odd values pass, wrong shapes name their field."""
    from mirror.upstream import parse

    sweep = parse.parse_sweep(
        {"name": "sw", "bestLoss": float("nan"), "config": "method: grid\n", "runCount": 3.0},
        "e",
        "p",
    )
    assert sweep.best_loss != sweep.best_loss and sweep.run_count == 3
    f = parse.parse_file({"name": "a.bin", "sizeBytes": "18446744073709551616", "md5": None})
    assert f.size_bytes == 2**64 and f.md5 is None
    run = parse.parse_run({"name": "r", "historyKeys": {"lastStep": float("nan")}}, "e", "p")
    assert run.last_step is None and run.history_keys is not None
    assert parse.parse_upload_headers(["Content-Type:text/plain", "X-A: b:c"], path="h") == {
        "Content-Type": "text/plain",
        "X-A": "b:c",
    }
    with pytest.raises(ProtocolError, match=r"sweep\.runCount: expected an integer"):
        parse.parse_sweep({"name": "sw", "runCount": 2.5}, "e", "p")
    with pytest.raises(ProtocolError, match=r"history\[1\]: expected a JSON object"):
        parse.parse_history_rows(['{"_step": 0}', "[1]"])
    with pytest.raises(ProtocolError, match=r"h\[0\]: expected 'Name:value'"):
        parse.parse_upload_headers(["nocolon"], path="h")


def test_history_rows_parse_exactly(stub: Stub) -> None:
    rows = ['{"_step": 3, "x": NaN, "y": 1e400}', '{"_step": 4, "big": 18446744073709551617}']
    stub.default = gql({"project": {"run": {"history": rows}}})
    out = make_client(stub.url).history("e", "p", "r", min_step=3, max_step=5, samples=2)
    assert out[0]["x"] != out[0]["x"] and out[0]["y"] == float("inf")
    assert out[1]["big"] == 18446744073709551617
    sent = stub.graphql_calls()[0].json()
    assert sent["operationName"] == "HistoryPage"
    assert sent["variables"] == {
        "entity": "e", "project": "p", "run": "r", "minStep": 3, "maxStep": 5, "pageSize": 2,
    }  # fmt: skip


def test_a_cursor_that_does_not_advance_stops_paging(stub: Stub) -> None:
    stub.default = _runs_page([{"name": "r"}], has_next=True)
    pages = make_client(stub.url).iter_runs("e", "p")
    next(pages)
    next(pages)
    with pytest.raises(ProtocolError, match="cursor did not advance"):
        next(pages)


def test_missing_project_is_not_found(stub: Stub) -> None:
    stub.default = gql({"project": None})
    client = make_client(stub.url)
    with pytest.raises(NotFoundError):
        next(client.iter_runs("e", "nope"))
    with pytest.raises(NotFoundError):
        client.history("e", "nope", "r", min_step=0, max_step=1, samples=1)
    assert client.get_run("e", "nope", "r") is None


# === credentials ===========================================================================


def _echo_credentials(seen: Seen) -> str:
    auth = seen.headers.get("Authorization", "")
    decoded = base64.b64decode(auth.split()[-1]).decode() if auth else ""
    return f"you sent {auth!r} i.e. {decoded!r}"


def _texts(err: BaseException) -> list[str]:
    out = [str(err), repr(err), "".join(traceback.format_exception(err))]
    exc = getattr(err, "exc", None)
    for inner in (exc, err.__cause__, err.__context__):
        if inner is not None:
            out += [str(inner), repr(inner), repr(getattr(inner, "request", None))]
    return out


def test_the_key_never_appears_in_errors(stub: Stub) -> None:
    errors: list[BaseException] = []
    replies: list[Callable[[Seen], Reply]] = [
        lambda s: Reply(401, body={"errors": [{"message": _echo_credentials(s)}]}),
        lambda s: Reply(500, body=_echo_credentials(s), headers={"Content-Type": "text/plain"}),
        lambda s: Reply(body="<p>" + _echo_credentials(s), headers={"Content-Type": "text/html"}),
        lambda s: gql(None, errors=[{"message": _echo_credentials(s)}]),
        lambda s: Reply(400, body={"errors": [{"message": _echo_credentials(s)}]}),
    ]  # fmt: skip
    ft = FakeTime()
    client = make_client(stub.url, ft, policy=make_policy(ft, max_attempts=1))
    for reply in replies:
        stub.default = reply
        for call in (client.viewer, lambda: client.delete_files(["a"], 1)):
            with pytest.raises(UpstreamError) as info:
                call()
            errors.append(info.value)
    stub.default = Reply(action="drop")
    with pytest.raises(UpstreamError) as info:
        client.viewer()
    errors.append(info.value)
    dead = make_client(
        f"http://127.0.0.1:{_closed_port()}", ft, policy=make_policy(ft, max_attempts=1)
    )
    with pytest.raises(UpstreamError) as info:
        dead.viewer()
    errors.append(info.value)

    assert any("you sent" in str(e) for e in errors)  # the echo did reach the messages
    for err in errors:
        for text in _texts(err):
            assert KEY not in text, text
            assert BASIC.split()[-1] not in text, text
        exc = getattr(err, "exc", None)
        assert getattr(exc, "request", None) is None
    assert KEY not in repr(client.session) and KEY not in repr(client)
    assert KEY not in repr(client.session.auth)


def test_auth_and_user_agent_are_sent_only_to_the_w_and_b_host(stub: Stub) -> None:
    other = Stub()
    try:
        other.default = Reply(body=b"bytes", headers={"Content-Type": "application/octet-stream"})
        stub.default = Reply(body=b"bytes", headers={"Content-Type": "application/octet-stream"})
        client = make_client(stub.url)
        client.download(stub.url + "/files/a?sig=1", io.BytesIO())
        client.download(other.url + "/bucket/a?sig=1", io.BytesIO())
        client.download("/files/relative", io.BytesIO())
        mine, theirs, relative = stub.seen[0], other.seen[0], stub.seen[1]
        assert mine.headers["Authorization"] == BASIC
        assert relative.headers["Authorization"] == BASIC and relative.path == "/files/relative"
        assert "Authorization" not in theirs.headers
        assert mine.headers["User-Agent"] == USER_AGENT == theirs.headers["User-Agent"]
        assert USER_AGENT.startswith("wandb-mirror/")
    finally:
        other.close()


# === the limiter ===========================================================================


def test_limiter_paces_and_halves_on_429() -> None:
    ft = FakeTime()
    limiter = RateLimiter(10.0, burst=1, clock=ft.clock, sleep=ft.sleep, cooldown=1.0)
    waits = [limiter.reserve() for _ in range(3)]
    assert waits == pytest.approx([0.0, 0.1, 0.2])
    limiter.on_rate_limited()
    assert limiter.rate == 5.0
    limiter.on_rate_limited()  # same burst of 429s (within the cooldown): one signal
    assert limiter.rate == 5.0
    ft.now += 10  # the bucket refills
    waits = [limiter.reserve() for _ in range(3)]
    assert waits == pytest.approx([0.0, 0.2, 0.4])  # twice as slow
    ft.now += 2
    limiter.on_rate_limited()
    assert limiter.rate == 2.5


def test_limiter_recovers_gradually() -> None:
    ft = FakeTime()
    limiter = RateLimiter(8.0, burst=1, min_rate=1.0, increase=1.0, clock=ft.clock, sleep=ft.sleep)
    for _ in range(5):
        limiter.on_rate_limited()
        ft.now += 2
    assert limiter.rate == 1.0  # floored at min_rate
    seen = []
    for _ in range(10):
        limiter.on_success()
        seen.append(limiter.rate)
    assert seen == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 8.0, 8.0, 8.0]


def test_limiter_holds_everyone_for_retry_after() -> None:
    ft = FakeTime()
    limiter = RateLimiter(100.0, burst=10, clock=ft.clock, sleep=ft.sleep)
    limiter.on_rate_limited(retry_after=4.0)
    assert limiter.reserve() == pytest.approx(4.0)
    ft.now += 4.0
    assert limiter.reserve() < 0.1


def test_limiter_is_thread_safe() -> None:
    """400 reservations from 8 threads with a frozen clock: none lost, none shared."""
    ft = FakeTime()
    limiter = RateLimiter(100.0, burst=20, clock=ft.clock, sleep=lambda s: None)
    waits: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [limiter.reserve() for _ in range(50)]
        with lock:
            waits.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(waits) == 400
    assert sorted(waits)[-1] == pytest.approx((400 - 20) / 100)
    assert len({round(w, 9) for w in waits if w > 0}) == 380


def test_the_client_limiter_slows_down_on_429(stub: Stub) -> None:
    stub.script = [Reply(429, headers={"Retry-After": "1"}), Reply(429)]
    stub.default = gql({"viewer": {"id": "u"}})
    ft = FakeTime()
    limiter = RateLimiter(20.0, burst=5, clock=ft.clock, sleep=lambda s: None, cooldown=0.0)
    client = make_client(stub.url, ft, limiter=limiter)
    client.viewer()
    assert ft.sleeps[0] == 1.0  # Retry-After
    assert limiter.rate == pytest.approx(20.0 * 0.5 * 0.5 + 1.0)  # two halvings, one success


def test_file_transfers_are_paced_by_the_storage_limiter_not_the_api_one(stub: Stub) -> None:
    """Signed URLs lead to object storage, outside the API's per-project limits: a sync
    of many small files must not queue them behind the API's rate (5,000 files at 100/s
    were 50 s of waiting). A 429 from storage still slows storage transfers down."""
    ft = FakeTime()
    api = RateLimiter(1.0, burst=1, clock=ft.clock, sleep=ft.sleep)
    storage = RateLimiter(50.0, burst=1, clock=ft.clock, sleep=ft.sleep, cooldown=0.0)
    client = WandbClient(make_session(base_url=stub.url, api_key=KEY), policy=make_policy(ft),
                         limiter=api, storage_limiter=storage)
    stub.script = [Reply(429), Reply(200)]
    stub.default = Reply(body=b"data")
    client.download("/files/a", io.BytesIO())
    client.upload(stub.url + "/upload/b", io.BytesIO(b"x"))
    assert api._tokens == 1.0  # never drawn from
    assert storage.rate == pytest.approx(50.0 * 0.5 + 2.0)  # halved once, two successes
    stub.default = gql({"viewer": {"id": "u"}})
    client.viewer()
    assert api._tokens == pytest.approx(0.0)


def test_session_reads_proxy_settings_once_per_host(
    stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests re-reads proxy variables on every request; the session keeps the answer
    per scheme and host (a third of a small download's CPU), and still honours them."""
    import requests.sessions

    calls: list[str] = []
    real = requests.sessions.get_environ_proxies

    def counting(url: str, no_proxy: str | None = None) -> dict[str, str]:
        calls.append(url)
        return real(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", counting)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    stub.default = Reply(body=b"data")
    client = make_client(stub.url)
    for name in ("a", "b", "c"):
        client.download(f"/files/{name}", io.BytesIO())
    assert len(calls) == 1
    settings = client.session.merge_environment_settings(stub.url + "/x", {}, None, None, None)
    settings["proxies"]["http"] = "http://changed"  # a caller's edit stays its own
    again = client.session.merge_environment_settings(stub.url + "/y", {}, None, None, None)
    assert "http" not in again["proxies"]


# === writes (stub) ========================================================================


def test_upsert_buckets_sends_one_aliased_document_and_reports_per_input(stub: Stub) -> None:
    stub.default = gql(
        {"u0": {"bucket": {"id": "a", "name": "ra"}, "inserted": False}, "u1": None,
         "u2": {"bucket": {"id": "c", "name": "rc"}, "inserted": True}},
        errors=[{"message": "run is read-only", "path": ["u1"]}],
    )  # fmt: skip
    inputs = [
        {"id": "a", "summaryMetrics": {"loss": float("nan"), "x": 1}},
        {"id": "b", "tags": ["t"]},
        {"name": "rc", "modelName": "p", "entityName": "e", "config": '{"k": {"value": 1}}'},
    ]
    out = make_client(stub.url).upsert_buckets(inputs)
    assert [o.ok for o in out] == [True, False, True]
    assert out[1].error is not None and "read-only" in out[1].error.message
    assert out[2].inserted is True
    [call] = stub.graphql_calls()
    body = call.json()
    assert body["operationName"] == "UpsertBuckets"
    assert "u2: upsertBucket(input: $i2)" in body["query"]
    assert body["variables"]["i0"] == {"id": "a", "summaryMetrics": '{"loss":NaN,"x":1}'}
    assert body["variables"]["i2"]["config"] == '{"k": {"value": 1}}'


def test_upsert_buckets_refused_as_a_whole(stub: Stub) -> None:
    stub.default = gql(None, errors=[{"message": "Variable '$i0' got invalid value"}])
    with pytest.raises(EditRejected, match="refused the batch"):
        make_client(stub.url).upsert_buckets([{"id": "a", "bogus": 1}])


def test_variables_with_bare_nan_are_refused_before_sending(stub: Stub) -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        make_client(stub.url).execute("query Q { viewer { id } }", {"x": float("nan")})
    assert stub.seen == []


def test_download_retries_from_the_start_after_a_broken_transfer(stub: Stub) -> None:
    data = bytes(range(256)) * 100
    stub.script = [Reply(503)]
    stub.default = Reply(body=data, headers={"Content-Type": "application/octet-stream"})
    ft = FakeTime()
    dest = io.BytesIO(b"stale-prefix")
    dest.seek(0, io.SEEK_END)
    size, md5 = make_client(stub.url, ft).download("/files/x", dest, chunk_size=1000)
    assert size == len(data)
    assert md5 == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert dest.getvalue() == b"stale-prefix" + data
    assert len(ft.sleeps) == 1


def test_upload_puts_the_bytes_with_headers_and_rewinds_on_retry(stub: Stub) -> None:
    stub.script = [Reply(502)]
    stub.default = Reply(200)
    ft = FakeTime()
    src = io.BytesIO(b"hello world")
    make_client(stub.url, ft).upload(stub.url + "/upload/x?sig=abc", src, {"X-Up": "1"})
    first, second = stub.seen
    assert first.method == second.method == "PUT"
    assert second.body == b"hello world" and second.headers["X-Up"] == "1"
    assert second.headers["Content-Length"] == "11"


def test_upload_of_an_empty_file_sends_content_length_zero(stub: Stub) -> None:
    stub.default = Reply(200)
    src = io.BytesIO(b"prefix")
    src.seek(6)
    make_client(stub.url).upload(stub.url + "/upload/empty", src)
    [seen] = stub.seen
    assert seen.headers["Content-Length"] == "0" and "Transfer-Encoding" not in seen.headers


# === against the real server ==============================================================


@dataclass
class Demo:
    srv: Any
    store: Any
    seed: Any

    def client(self, ft: FakeTime | None = None, **kw: Any) -> WandbClient:
        ft = ft or FakeTime()
        kw.setdefault("policy", make_policy(ft, max_attempts=25, max_elapsed=1e9))
        return make_client(self.srv.url, ft, key=self.srv.api_key, **kw)


def _start_demo(tmp: Path) -> Iterator[Demo]:
    from mirror.store import open_store

    store = open_store(tmp / "upstream.db")
    result = seed.seed_demo(store)
    try:
        with server_testing.serve_in_thread(store) as srv:
            yield Demo(srv, store, result)
    finally:
        store.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """A seeded server shared by the read-only tests of this module."""
    yield from _start_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def writable_demo(tmp_path: Path) -> Iterator[Demo]:
    """A seeded server of its own, for tests that change it."""
    yield from _start_demo(tmp_path)


def _store_run(demo: Demo, run_id: str) -> Any:
    from mirror.store import runs as store_runs

    with demo.store.session() as s:
        return store_runs.get_run(s, demo.seed.entity, demo.seed.project, run_id)


def _store_history(demo: Demo, run_id: str) -> list[dict[str, Any]]:
    from mirror.store import history

    rec = _store_run(demo, run_id)
    with demo.store.session() as s:
        return list(history.iter_history(s, rec.pk))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN (the codec's exact text)."""
    return bool(codec.dumps(_plain(a)) == codec.dumps(_plain(b)))


RUN_FIELDS = [
    "run_id", "storage_id", "display_name", "state", "config", "summary", "system_metrics",
    "tags", "notes", "description", "group_name", "job_type", "commit", "host", "username",
    "user_name", "created_at", "heartbeat_at", "updated_at", "history_line_count",
    "events_line_count", "file_count", "last_step", "sweep_name",
]  # fmt: skip


def test_e2e_iter_runs_pages_through_every_run_once(demo: Demo) -> None:
    demo.srv.request_log.clear()
    client = demo.client()
    pages = list(client.iter_runs(demo.seed.entity, demo.seed.project, per_page=7))
    ids = [r.run_id for page in pages for r in page]
    assert [len(p) for p in pages] == [7, 7, 6]
    assert len(ids) == len(set(ids)) == 20
    assert set(ids) == set(demo.seed.run_ids)
    assert ids == demo.seed.run_ids  # +created_at, the order they were created in
    assert client.run_count(demo.seed.entity, demo.seed.project) == 20
    assert demo.srv.request_log.count("graphql", operation="Runs") == 3


def test_e2e_filters_pass_through(demo: Demo) -> None:
    client = demo.client()
    e, p = demo.seed.entity, demo.seed.project
    finished = [
        r for page in client.iter_runs(e, p, filters={"state": "finished"}, per_page=4)
        for r in page
    ]  # fmt: skip
    every = [r for page in client.iter_runs(e, p) for r in page]
    assert finished and all(r.state == "finished" for r in finished)
    assert {r.run_id for r in finished} == {r.run_id for r in every if r.state == "finished"}
    assert client.run_count(e, p, {"state": "finished"}) == len(finished)
    newest_first = [r.run_id for page in client.iter_runs(e, p, order="-created_at") for r in page]
    assert newest_first == list(reversed(demo.seed.run_ids))


def test_e2e_lightweight_listing(demo: Demo) -> None:
    client = demo.client()
    light = [
        r
        for page in client.iter_runs(demo.seed.entity, demo.seed.project, lightweight=True)
        for r in page
    ]
    assert len(light) == 20
    for rec in light:
        assert rec.config is None and rec.summary is None and rec.history_keys is None
        stored = _store_run(demo, rec.run_id)
        for name in (
            "storage_id",
            "state",
            "created_at",
            "heartbeat_at",
            "updated_at",
            "history_line_count",
            "events_line_count",
            "file_count",
            "tags",
        ):
            assert getattr(rec, name) == getattr(stored, name), name  # fmt: skip


def test_e2e_get_run_equals_the_store(demo: Demo) -> None:
    client = demo.client()
    listed = {
        r.run_id: r for page in client.iter_runs(demo.seed.entity, demo.seed.project) for r in page
    }
    for run_id in demo.seed.run_ids:
        got = client.get_run(demo.seed.entity, demo.seed.project, run_id)
        stored = _store_run(demo, run_id)
        assert got is not None
        for name in RUN_FIELDS:
            assert _same(getattr(got, name), getattr(stored, name)), (run_id, name)
        assert _same(got.history_keys, stored.history_keys)
        assert _same(got, listed[run_id])  # the full listing carries the same record
    assert client.get_run(demo.seed.entity, demo.seed.project, "nosuchrun") is None
    assert client.get_run(demo.seed.entity, "nosuchproject", "x") is None


def test_e2e_history_windows_have_no_gaps_or_duplicates(demo: Demo) -> None:
    client = demo.client()
    e, p = demo.seed.entity, demo.seed.project
    checked_offset_run = False
    for run_id in (demo.seed.run_ids[0], demo.seed.run_ids[5]):
        run = client.get_run(e, p, run_id)
        assert run is not None and run.last_step is not None
        stored = _store_history(demo, run_id)
        window = 97
        rows: list[dict[str, Any]] = []
        for lo in range(0, run.last_step + 1, window):
            rows += client.history(e, p, run_id, min_step=lo, max_step=lo + window, samples=window)
        steps = [r["_step"] for r in rows]
        assert steps == sorted(set(steps)), "duplicate or unordered steps"
        assert steps == [r["_step"] for r in stored]
        assert _same(rows, stored)
        assert len(rows) == run.history_line_count
        checked_offset_run |= steps[0] > 0
    assert checked_offset_run, "the demo has a run whose first step is not 0"


def test_e2e_events(demo: Demo) -> None:
    from mirror.store import history

    client = demo.client()
    run_id = demo.seed.run_ids[0]
    run = client.get_run(demo.seed.entity, demo.seed.project, run_id)
    assert run is not None and run.events_line_count
    events = client.events(demo.seed.entity, demo.seed.project, run_id, run.events_line_count)
    with demo.store.session() as s:
        stored = list(history.iter_events(s, _store_run(demo, run_id).pk))
    assert len(events) == run.events_line_count
    assert _same(events, stored)


def test_e2e_files_and_verified_download(demo: Demo) -> None:
    from mirror.store import blobs
    from mirror.store import runs as store_runs

    client = demo.client()
    e, p = demo.seed.entity, demo.seed.project
    run_id = demo.seed.run_ids[0]
    pages = list(client.iter_files(e, p, run_id, per_page=2))
    files = [f for page in pages for f in page]
    assert len(pages) >= 2 and all(len(page) <= 2 for page in pages)
    stored_run = _store_run(demo, run_id)
    with demo.store.session() as s:
        stored = {f.name: f for f in store_runs.list_files(s, stored_run.pk)}
    assert sorted(f.name for f in files) == sorted(stored)
    for f in files:
        assert f.url and f.md5 and f.upstream_id
        buf = io.BytesIO()
        size, md5 = client.download(f.url, buf)
        assert (
            (size, md5) == (f.size_bytes, f.md5) == (stored[f.name].size_bytes, stored[f.name].md5)
        )
        assert buf.getvalue() == blobs.read_blob(demo.store, stored[f.name].blob_hash)
    [only] = [f for page in client.iter_files(e, p, run_id, names=["config.yaml"]) for f in page]
    assert only.name == "config.yaml"
    with pytest.raises(NotFoundError):
        next(client.iter_files(e, p, "nosuchrun"))


def test_e2e_projects_and_sweeps(demo: Demo) -> None:
    client = demo.client()
    e, p = demo.seed.entity, demo.seed.project
    projects = [x for page in client.iter_projects(e) for x in page]
    assert [x.name for x in projects] == [p]
    project = client.get_project(e, p)
    assert project is not None and project.internal_id and project.run_count == 20
    assert client.get_project(e, "nosuchproject") is None
    sweeps = [s for page in client.iter_sweeps(e, p) for s in page]
    assert [s.sweep_id for s in sweeps] == [demo.seed.sweep_id]
    sweep = client.get_sweep(e, p, demo.seed.sweep_id)
    assert sweep is not None and sweep.method == "bayes" and "metric" in (sweep.config or "")
    members = client.sweep_run_ids(e, p, demo.seed.sweep_id)
    assert len(members) == sweep.run_count
    assert all(_store_run(demo, rid).sweep_name == demo.seed.sweep_id for rid in members)
    assert client.get_sweep(e, p, "nosuchsweep") is None
    viewer = client.viewer()
    assert viewer.entity == e


def test_e2e_wrong_key_is_an_auth_error(demo: Demo) -> None:
    ft = FakeTime()
    client = make_client(demo.srv.url, ft, key="wrong_" + "x" * 40)
    with pytest.raises(AuthError):
        client.viewer()
    assert ft.sleeps == []


def test_e2e_everything_arrives_under_30_percent_faults(demo: Demo) -> None:
    Fault = faults_mod.Fault
    e, p = demo.seed.entity, demo.seed.project
    clean = demo.client()
    want_runs = [r for page in clean.iter_runs(e, p, per_page=7) for r in page]
    run_id = demo.seed.run_ids[5]
    want_rows = clean.history(e, p, run_id, min_step=0, max_step=2000, samples=2000)
    want_files = [f for page in clean.iter_files(e, p, run_id) for f in page]

    demo.srv.request_log.clear()
    demo.srv.faults.set(
        [
            Fault(route="graphql", kind="429", probability=0.15, retry_after=0.25),
            Fault(route="graphql", kind="500", probability=0.18),
            Fault(route="graphql", kind="drop_after", probability=0.05),
            Fault(route="storage_get", kind="503", probability=0.3),
        ],
        seed=11,
    )
    ft = FakeTime()
    client = demo.client(ft)
    try:
        got_runs = [r for page in client.iter_runs(e, p, per_page=7) for r in page]
        rows: list[dict[str, Any]] = []
        for lo in range(0, 2000, 250):
            rows += client.history(e, p, run_id, min_step=lo, max_step=lo + 250, samples=250)
        files = [f for page in client.iter_files(e, p, run_id, per_page=2) for f in page]
        for f in files:
            assert f.url is not None
            assert client.download(f.url, io.BytesIO())[1] == f.md5
    finally:
        demo.srv.faults.clear()

    assert _same(got_runs, want_runs)
    assert _same(rows, want_rows)
    assert sorted(f.name for f in files) == sorted(f.name for f in want_files)
    log = demo.srv.request_log
    assert log.count("graphql", status=429) > 0 and log.count("graphql", status=500) > 0
    assert log.count("storage_get", status=503) > 0
    injected = log.faults()
    dropped = [x for x in injected if x.fault == "drop_after"]
    assert dropped and all(x.status is None for x in dropped)
    answered = log.count(status=429) + log.count(status=500) + log.count(status=503)
    assert len(injected) == answered + len(dropped)
    assert 0.25 in ft.sleeps  # Retry-After honoured
    assert len(ft.sleeps) == len(injected)  # one wait per failure, no real sleeping


def test_e2e_upsert_buckets_batch_and_read_back(writable_demo: Demo) -> None:
    demo = writable_demo
    e, p = demo.seed.entity, demo.seed.project
    client = demo.client()
    targets = demo.seed.run_ids[:3]
    before = client.get_runs([(e, p, rid) for rid in targets])
    assert all(r is not None for r in before)
    inputs = []
    for k, run in enumerate(before):
        assert run is not None and run.summary is not None
        summary = {**run.summary, "edited": k, "nan": float("nan")}
        inputs.append({"id": run.storage_id, "summaryMetrics": summary, "notes": f"note {k}",
                       "tags": [*run.tags, "edited"]})  # fmt: skip
    demo.srv.request_log.clear()
    outcomes = client.upsert_buckets(inputs)
    assert [o.ok for o in outcomes] == [True, True, True]
    assert demo.srv.request_log.count("graphql", operation="UpsertBuckets") == 1
    after = client.get_runs([(e, p, rid) for rid in targets] + [(e, p, "nosuchrun")])
    assert after[-1] is None
    for k, run in enumerate(after[:3]):
        assert run is not None and run.summary is not None
        assert run.notes == f"note {k}" and run.tags[-1] == "edited"
        assert run.summary["edited"] == k and run.summary["nan"] != run.summary["nan"]
        stored = _store_run(demo, run.run_id)  # authoritative server: applied to its store
        for name in RUN_FIELDS:
            assert _same(getattr(run, name), getattr(stored, name)), name


def test_e2e_dropped_connection_after_the_write_was_applied(writable_demo: Demo) -> None:
    demo = writable_demo
    Fault = faults_mod.Fault
    e, p = demo.seed.entity, demo.seed.project
    client = demo.client()
    run = client.get_run(e, p, demo.seed.run_ids[1])
    assert run is not None
    demo.srv.request_log.clear()
    demo.srv.faults.set([Fault(route="graphql", kind="drop_after", operation="UpsertBuckets")])
    try:
        with pytest.raises(UpstreamUnavailable) as info:
            client.upsert_buckets([{"id": run.storage_id, "notes": "applied?"}])
    finally:
        demo.srv.faults.clear()
    assert maybe_applied(info.value)
    assert demo.srv.request_log.count("graphql", operation="UpsertBuckets") == 1  # not resent
    again = client.get_run(e, p, run.run_id)
    assert again is not None and again.notes == "applied?"  # the read-back tells


def test_e2e_file_upload_roundtrip_and_delete(writable_demo: Demo) -> None:
    demo = writable_demo
    e, p = demo.seed.entity, demo.seed.project
    run_id = demo.seed.run_ids[2]
    client = demo.client()
    data = b"uploaded by the outbox\n" * 100
    urls, headers = client.create_run_files(e, p, run_id, ["notes/new.txt"])
    assert set(urls) == {"notes/new.txt"}
    client.upload(urls["notes/new.txt"], io.BytesIO(data), headers)
    client.mark_run_files_uploaded(e, p, run_id, ["notes/new.txt"])
    [f] = [f for page in client.iter_files(e, p, run_id, names=["notes/new.txt"]) for f in page]
    assert f.size_bytes == len(data)
    assert f.md5 == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert f.url is not None
    buf = io.BytesIO()
    client.download(f.url, buf)
    assert buf.getvalue() == data
    project = client.get_project(e, p)
    assert project is not None and f.upstream_id is not None
    client.delete_files([f.upstream_id], project.internal_id)
    assert [
        x for page in client.iter_files(e, p, run_id, names=["notes/new.txt"]) for x in page
    ] == []
    with pytest.raises(NotFoundError):
        client.create_run_files(e, p, "nosuchrun", ["x.txt"])


def test_e2e_one_client_serves_many_threads(demo: Demo) -> None:
    """Workers share one client (session pool, limiter): every answer is still exact."""
    from concurrent.futures import ThreadPoolExecutor

    client = demo.client()
    e, p = demo.seed.entity, demo.seed.project
    run_ids = demo.seed.run_ids[:8]

    def fetch(run_id: str) -> list[dict[str, Any]]:
        return client.history(e, p, run_id, min_step=0, max_step=5000, samples=5000)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(fetch, run_ids))
    for run_id, rows in zip(run_ids, results, strict=True):
        assert _same(rows, _store_history(demo, run_id))


def test_e2e_run_parts_fetches_many_runs_in_one_request(demo: Demo) -> None:
    """RunParts: history, events and files of several runs in ONE request, each exact."""
    from mirror.store import history
    from mirror.store import runs as store_runs
    from mirror.upstream.client import RunAsk

    client = demo.client()
    e, p = demo.seed.entity, demo.seed.project
    run_ids = demo.seed.run_ids[:4]
    asks = [
        RunAsk(run_ids[0], history=(0, 10_000, 10_000), events=10_000, files=100),
        RunAsk(run_ids[1], history=(3, 9, 10_000)),
        RunAsk(run_ids[2], files=2),
        RunAsk(run_ids[3], events=10_000),
    ]
    before = demo.srv.request_log.count("graphql", operation="RunParts")
    parts = client.run_parts(e, p, asks)
    assert demo.srv.request_log.count("graphql", operation="RunParts") == before + 1
    assert [x.run_id for x in parts] == run_ids and all(x.error is None for x in parts)

    assert _same(parts[0].history, _store_history(demo, run_ids[0]))
    rec0 = _store_run(demo, run_ids[0])
    with demo.store.session() as s:
        assert _same(parts[0].events, list(history.iter_events(s, rec0.pk)))
        stored_files = sorted(f.name for f in store_runs.list_files(s, rec0.pk))
    assert sorted(f.name for f in parts[0].files or []) == stored_files
    assert parts[0].files_more is False

    assert [r["_step"] for r in parts[1].history or []] == [
        r["_step"] for r in _store_history(demo, run_ids[1]) if 3 <= r["_step"] < 9
    ]
    assert parts[1].events is None and parts[1].files is None

    rec2 = _store_run(demo, run_ids[2])
    assert len(parts[2].files or []) == 2 and parts[2].files_more == (rec2.file_count > 2)
    assert parts[2].history is None
    assert parts[3].events is not None and len(parts[3].events) == _store_run(
        demo, run_ids[3]).events_line_count


def test_e2e_run_parts_isolates_a_failing_run(writable_demo: Demo) -> None:
    """A missing run and a run with a corrupt row fail alone; the others are answered."""
    import sqlite3

    from mirror.upstream.client import RunAsk

    demo = writable_demo
    e, p = demo.seed.entity, demo.seed.project
    good, bad = demo.seed.run_ids[0], demo.seed.run_ids[1]
    bad_pk = _store_run(demo, bad).pk
    assert demo.store.path is not None
    conn = sqlite3.connect(demo.store.path)
    conn.execute("UPDATE history SET row = 'not json' WHERE run_pk = ? AND step = "
                 "(SELECT min(step) FROM history WHERE run_pk = ?)", (bad_pk, bad_pk))
    conn.commit()
    conn.close()
    window = (0, 10_000, 10_000)
    parts = demo.client().run_parts(e, p, [
        RunAsk(good, history=window), RunAsk("nosuchrun", history=window),
        RunAsk(bad, history=window, files=10),
    ])
    assert parts[0].error is None and _same(parts[0].history, _store_history(demo, good))
    assert isinstance(parts[1].error, NotFoundError) and "nosuchrun" in parts[1].error.message
    assert isinstance(parts[2].error, ProtocolError) and "history[0]" in parts[2].error.message
    with pytest.raises(NotFoundError):
        demo.client().run_parts(e, "nosuchproject", [RunAsk(good, history=window)])




def test_history_texts_kept_only_where_the_codec_reads_them_back_exactly() -> None:
    """A row's text is handed on for storing as is only when codec.loads gives back the
    same value; NaN/Infinity rows and wide-integer rows are re-encoded (text None)."""
    from mirror.upstream.parse import parse_history_texts

    lines = ['{"_step":0,"a":0.00012345678901234567,"b":null}',
             '{"_step":1,"a":NaN,"b":-Infinity}',
             '{"_step":2,"big":123456789012345678901234}',
             '{"_step":3,"m":{"_type":"image-file","path":"x.png"},"u":"\\u00e9"}']
    rows, texts = parse_history_texts(lines)
    assert [t is not None for t in texts] == [True, False, False, True]
    for line, row, text in zip(lines, rows, texts, strict=True):
        assert codec.dumps(row) == codec.dumps(codec.loads_wire(line))
        if text is not None:
            assert codec.dumps(codec.loads(text)) == codec.dumps(row)
    with pytest.raises(ProtocolError, match=r"history\[1\]"):
        parse_history_texts(['{"_step":0}', "not json"])
