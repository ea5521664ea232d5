"""The HTTP layer of `mirror serve`, against a real server on 127.0.0.1 (no mocks).

Covers: Basic auth and that the key is never logged; signed storage URLs (round trip,
403 for bad signatures, 400 for hostile names with nothing written); file_stream
semantics (offsets, resends overwrite, NaN/Infinity/unicode exact, state from
`complete`/`exitcode`, a 10 MB summary); fault injection (exact, reproducible counts);
the request log; gzip GraphQL bodies; clean shutdown. Also the blob cache and the
deterministic seeder the server's users rely on.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import json
import math
import random
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from mirror.errors import ConfigError, StoreError, UnsafePathError
from mirror.paths import run_storage_id, validate_run_file_name
from mirror.records import FileRecord, RunRecord
from mirror.server.faults import Fault, FaultPlan
from mirror.server.http import make_server
from mirror.server.requestlog import RequestLog
from mirror.server.seed import IMAGE_NAME, generate, seed_demo
from mirror.server.testing import DEFAULT_TEST_API_KEY, RunningServer, serve_in_thread
from mirror.store import Store, blobs, history, open_store, runs
from mirror.store.blobs import BlobVerifyError

try:
    import mirror.server.graphql_api  # noqa: F401

    HAS_GRAPHQL = True
except ImportError:
    HAS_GRAPHQL = False

needs_graphql = pytest.mark.skipif(not HAS_GRAPHQL, reason="mirror.server.graphql_api missing")

E, P = "alice", "proj"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def srv(store: Store, tmp_path: Path) -> Iterator[RunningServer]:
    log = RequestLog(tmp_path / "requests.jsonl")
    with serve_in_thread(store, request_log=log) as running:
        yield running
    log.close()


@pytest.fixture
def client(srv: RunningServer) -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.auth = ("api", srv.api_key)
        yield s


def make_run(store: Store, run_id: str = "run1") -> int:
    with store.transaction() as s:
        return runs.save_run(s, RunRecord(entity=E, project=P, run_id=run_id, state="finished"))


def stream(client: requests.Session, srv: RunningServer, body: Any, run_id: str = "run1",
           **kw: Any) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(f"{srv.url}/files/{E}/{P}/{run_id}/file_stream", data=data,
                       timeout=30, **kw)


def get_run(store: Store, run_id: str = "run1") -> RunRecord | None:
    with store.session() as s:
        return runs.get_run(s, E, P, run_id)


def all_history(store: Store, run_id: str = "run1") -> list[dict[str, Any]]:
    rec = get_run(store, run_id)
    assert rec is not None and rec.pk is not None
    with store.session() as s:
        return list(history.iter_history(s, rec.pk))


def tree(root: Path) -> set[str]:
    """Every file under ``root`` except the database's own files."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not p.name.startswith("mirror.db")}


def raw_request(srv: RunningServer, method: str, target: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A request with the target sent verbatim (no client-side path normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def path_and_query(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


# --- auth --------------------------------------------------------------------------------


def test_graphql_and_file_stream_require_the_key(srv: RunningServer, store: Store) -> None:
    url = f"{srv.url}/graphql"
    body = {"query": "{ viewer { id } }"}
    cases = {
        "missing": None,
        "wrong": ("api", "w" * 40),
        "short": ("api", srv.api_key[:39]),
    }
    for label, auth in cases.items():
        r = requests.post(url, json=body, auth=auth, timeout=10)
        assert r.status_code == 401, label
        assert r.headers["WWW-Authenticate"].startswith("Basic")
        assert r.headers["Content-Type"] == "application/json"
        assert r.json()["errors"][0]["message"]
    r = requests.post(url, json=body, headers={"Authorization": "Bearer " + srv.api_key},
                      timeout=10)
    assert r.status_code == 401
    r = requests.post(f"{srv.url}/files/{E}/{P}/run1/file_stream", json={}, timeout=10)
    assert r.status_code == 401
    big = b"{" + b" " * (2 * 1024 * 1024) + b"}"  # not drained: the connection is closed
    try:
        r = requests.post(url, data=big, auth=("api", "w" * 40), timeout=10)
        assert r.status_code == 401 and r.headers["Connection"] == "close"
    except requests.ConnectionError:
        pass  # the client may see the reset before it reads the 401; both are fine
    last = srv.request_log.entries("graphql")[-1]
    assert (last.status, last.request_bytes) == (401, 0)
    assert get_run(store) is None  # nothing was written


def test_api_key_never_logged(srv: RunningServer, client: requests.Session,
                              tmp_path: Path) -> None:
    make_run(srv.store)
    stream(client, srv, {})
    requests.post(f"{srv.url}/graphql", json={}, auth=("api", "x" * 44), timeout=10)
    requests.put(srv.ctx.signer.upload_url(E, P, "run1", "a.txt"), data=b"a", timeout=10)
    srv.request_log.close()
    text = (tmp_path / "requests.jsonl").read_text(encoding="utf-8")
    assert len(text.splitlines()) == 3
    b64 = base64.b64encode(f"api:{srv.api_key}".encode()).decode()
    for secret in (srv.api_key, b64, "x" * 44, "sig=", "Authorization"):
        assert secret not in text
        assert secret not in repr(srv.request_log.entries())


def test_server_refuses_a_short_key(store: Store) -> None:
    with pytest.raises(ConfigError):
        make_server(store, api_key="short")
    server = make_server(store)  # a random key of 40+ chars
    try:
        assert len(server.api_key) >= 40 and server.url.startswith("http://127.0.0.1:")
    finally:
        server.server_close()


def test_keep_alive_survives_errors(srv: RunningServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        for _ in range(3):  # 401 with an unread-by-handler body must not desync the stream
            conn.request("POST", "/graphql", body=b'{"query": "{ viewer { id } }"}')
            resp = conn.getresponse()
            assert resp.status == 401
            assert json.loads(resp.read())["errors"]
        conn.request("GET", "/nope")
        resp = conn.getresponse()
        assert resp.status == 404 and resp.getheader("Content-Type") == "application/json"
        resp.read()
    finally:
        conn.close()


def test_unread_bodies_close_the_connection(srv: RunningServer, store: Store) -> None:
    make_run(store)
    target = path_and_query(srv.ctx.signer.url("PUT", E, P, "run1", "../x"))
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("PUT", target, body=b"GET /nope HTTP/1.1\r\n\r\n")  # smuggling bait
        resp = conn.getresponse()
        assert resp.status == 400 and resp.getheader("Connection") == "close"
        resp.read()
    finally:
        conn.close()
    assert srv.request_log.count("other") == 0  # the body was never parsed as a request
    chunks = iter([b"abc", b"def"])  # no Content-Length: uploads need one
    url = srv.ctx.signer.upload_url(E, P, "run1", "c.txt")
    assert requests.put(url, data=chunks, timeout=10).status_code == 411


def test_chunked_request_bodies(srv: RunningServer, client: requests.Session,
                                store: Store) -> None:
    body = json.dumps({"files": {"wandb-history.jsonl": {"offset": 0,
                                                         "content": [hist_line(0)]}}})
    parts = iter([body[:10].encode(), body[10:].encode()])
    r = client.post(f"{srv.url}/files/{E}/{P}/run1/file_stream", data=parts, timeout=10)
    assert r.status_code == 200
    assert [row["_step"] for row in all_history(store)] == [0]
    assert srv.request_log.entries("file_stream")[0].request_bytes == len(body)


def test_unknown_routes_are_json_404(srv: RunningServer, client: requests.Session) -> None:
    for method, path in [("POST", "/sdk/otel/v1/metrics"), ("GET", "/graphql"),
                         ("GET", "/nope"), ("DELETE", "/files/a/b/c/file_stream")]:
        r = client.request(method, srv.url + path, timeout=10)
        assert r.status_code == 404, path
        assert r.json()["errors"]
    assert srv.request_log.count("otel", status=404) == 1


# --- signed storage URLs -------------------------------------------------------------------


def test_signed_put_then_get_round_trip(srv: RunningServer, store: Store) -> None:
    pk = make_run(store)
    data = random.Random(1).randbytes(300_000)
    name = "media/images/x.png"
    r = requests.put(srv.ctx.signer.upload_url(E, P, "run1", name), data=data, timeout=10)
    assert r.status_code == 200
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    with store.session() as s:
        rec = runs.get_file(s, pk, name)
        run = runs.get_run_by_pk(s, pk)
    assert rec is not None and run is not None
    assert (rec.size_bytes, rec.md5, rec.mimetype) == (len(data), md5, "image/png")
    assert rec.updated_at and ISO.match(rec.updated_at)
    assert rec.blob_hash == hashlib.sha256(data).hexdigest()
    assert blobs.blob_path(store, rec.blob_hash).read_bytes() == data
    assert run.file_count == 1
    r = requests.get(srv.ctx.signer.download_url(E, P, "run1", name), timeout=10)
    assert r.status_code == 200 and r.content == data
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["Content-Type"] == "image/png"
    assert base64.b64encode(hashlib.md5(r.content).digest()).decode() == md5

    # A second PUT replaces the content; the old row's identity is kept.
    r = requests.put(srv.ctx.signer.upload_url(E, P, "run1", name), data=b"new", timeout=10)
    assert r.status_code == 200
    r = requests.get(srv.ctx.signer.download_url(E, P, "run1", name), timeout=10)
    assert r.content == b"new"
    with store.session() as s:
        assert len(runs.list_files(s, pk)) == 1


def test_put_of_an_empty_file_and_content_md5(srv: RunningServer, store: Store) -> None:
    make_run(store)
    url = srv.ctx.signer.upload_url(E, P, "run1", "empty.txt")
    assert requests.put(url, data=b"", timeout=10).status_code == 200
    good = base64.b64encode(hashlib.md5(b"abc").digest()).decode()
    url = srv.ctx.signer.upload_url(E, P, "run1", "abc.txt")
    bad = requests.put(url, data=b"abc", headers={"Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="},
                       timeout=10)
    assert bad.status_code == 400
    assert not list(store.blobs_dir.glob(".incoming-*"))
    assert requests.put(url, data=b"abc", headers={"Content-MD5": good},
                        timeout=10).status_code == 200
    r = requests.get(srv.ctx.signer.download_url(E, P, "run1", "empty.txt"), timeout=10)
    assert r.status_code == 200 and r.content == b""


def test_put_to_a_missing_run_is_404(srv: RunningServer) -> None:
    url = srv.ctx.signer.upload_url(E, P, "nope", "a.txt")
    assert requests.put(url, data=b"x", timeout=10).status_code == 404


def test_get_without_content_is_404(srv: RunningServer, store: Store) -> None:
    pk = make_run(store)
    with store.transaction() as s:
        runs.save_file(s, pk, FileRecord(name="listed-only.txt", size_bytes=3))
    for name in ("listed-only.txt", "unknown.txt"):
        r = requests.get(srv.ctx.signer.download_url(E, P, "run1", name), timeout=10)
        assert r.status_code == 404


def test_authoritative_get_serves_live_files_of_exactly_that_run(store: Store) -> None:
    """The upstream's download path (one indexed lookup) serves the bytes of the named
    run's live file, with its mimetype; a tombstoned file, a file listed without content,
    or the same name under another run or project is a 404."""
    pk = make_run(store)
    other = make_run(store, "run2")
    data = b"the real bytes"
    with store.transaction() as s:
        info = blobs.put_bytes(store, data, session=s)
        for name, tomb in (("a.json", False), ("gone.json", True)):
            runs.save_file(s, pk, FileRecord(name=name, size_bytes=info.size, md5=info.md5_b64,
                                             mimetype="application/json",
                                             blob_hash=info.hash, tombstoned=tomb))
        runs.save_file(s, pk, FileRecord(name="listed-only.txt", size_bytes=3))
        runs.save_file(s, other, FileRecord(name="b.json", size_bytes=info.size,
                                            blob_hash=info.hash))
    with serve_in_thread(store, authoritative=True) as up:
        def get(run_id: str, name: str, project: str = P) -> requests.Response:
            url = up.ctx.signer.download_url(E, project, run_id, name)
            return requests.get(url, timeout=10)

        r = get("run1", "a.json")
        assert r.status_code == 200 and r.content == data
        assert r.headers["Content-Type"] == "application/json"
        for run_id, name, project in [("run1", "gone.json", P), ("run1", "listed-only.txt", P),
                                      ("run1", "b.json", P), ("run2", "a.json", P),
                                      ("run1", "a.json", "other-project")]:
            assert get(run_id, name, project).status_code == 404, (run_id, name, project)
        assert get("run2", "b.json").status_code == 200


@pytest.mark.parametrize("case", ["expired", "tampered", "wrong-file", "wrong-method-put",
                                  "wrong-method-get", "no-signature", "wrong-run"])
def test_bad_signatures_are_403(srv: RunningServer, store: Store, case: str) -> None:
    pk = make_run(store)
    signer = srv.ctx.signer
    method, target = "PUT", signer.upload_url(E, P, "run1", "a.txt")
    if case == "expired":
        target = signer.url("PUT", E, P, "run1", "a.txt", now=time.time() - 2 * signer.ttl)
    elif case == "tampered":
        sig = target.rsplit("sig=", 1)[1]
        target = target[: -len(sig)] + ("0" if sig[0] != "0" else "1") + sig[1:]
    elif case == "wrong-file":
        target = target.replace("/a.txt?", "/b.txt?")
    elif case == "wrong-run":
        target = target.replace("/run1/", "/run2/")
    elif case == "wrong-method-put":
        target = signer.download_url(E, P, "run1", "a.txt")
    elif case == "wrong-method-get":
        method = "GET"
    elif case == "no-signature":
        target = target.split("?", 1)[0]
    r = requests.request(method, target, data=b"payload" if method == "PUT" else None,
                         timeout=10)
    assert r.status_code == 403, case
    with store.session() as s:
        assert runs.list_files(s, pk) == []
    assert not store.blobs_dir.exists() or not list(store.blobs_dir.rglob("*"))


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "a\x00b", "a\\b",
                                  "a//b", "./x", "a/..", "C:/x"])
def test_hostile_names_are_400_and_nothing_is_written(
    srv: RunningServer, store: Store, tmp_path: Path, name: str
) -> None:
    pk = make_run(store)
    before = tree(tmp_path.parent)
    for method in ("PUT", "GET"):
        target = path_and_query(srv.ctx.signer.url(method, E, P, "run1", name))
        status, body = raw_request(srv, method, target, b"evil" if method == "PUT" else b"")
        assert status == 400, (method, name)
        assert json.loads(body)["errors"][0]["message"]
    assert tree(tmp_path.parent) == before
    with store.session() as s:
        assert runs.list_files(s, pk) == []


def test_file_stream_rejects_hostile_text_file_names(srv: RunningServer,
                                                     client: requests.Session) -> None:
    r = stream(client, srv, {"files": {"../evil.log": {"offset": 0, "content": ["x"]}}})
    assert r.status_code == 400
    assert get_run(srv.store) is None


# --- file_stream ---------------------------------------------------------------------------


def hist_line(step: int, **extra: Any) -> str:
    return json.dumps({"loss": 1.0 / (step + 1), "_step": step, "_runtime": step * 0.1,
                       "_timestamp": 1.7e9 + step, **extra})


def test_file_stream_lines_at_offsets_and_resends_overwrite(
    srv: RunningServer, client: requests.Session, store: Store
) -> None:
    first = {"files": {
        "wandb-history.jsonl": {"offset": 0, "content": [hist_line(i) for i in range(5)]},
        "wandb-events.jsonl": {"offset": 0, "content": ['{"system.cpu": 1, "_wandb": true}']},
        "wandb-summary.json": {"offset": 0, "content": ['{"loss": 0.2}']},
        "output.log": {"offset": 0, "content": ["line 0", "progress 10%", "line 2"]},
    }}
    second = {"files": {
        "wandb-history.jsonl": {"offset": 5, "content": [hist_line(i) for i in range(5, 10)]},
        "wandb-events.jsonl": {"offset": 1, "content": ['{"system.cpu": 2, "_wandb": true}']},
        "wandb-summary.json": {"offset": 0, "content": ['{"loss": 0.1, "acc": 0.9}']},
        "output.log": {"offset": 1, "content": ["progress 100%", "line 2", "line 3\n"]},
    }}
    for body in (first, second, second):  # the last one is a retry of the same chunk
        r = stream(client, srv, body)
        assert r.status_code == 200
        assert r.json() == {"exitcode": None, "limits": {}, "stopped": False}
    rows = all_history(store)
    assert [r["_step"] for r in rows] == list(range(10))
    rec = get_run(store)
    assert rec is not None and rec.pk is not None
    assert rec.history_line_count == 10 and rec.last_step == 9
    assert rec.events_line_count == 2
    assert rec.history_keys["lastStep"] == 9
    assert rec.history_keys["keys"]["loss"]["typeCounts"] == [{"type": "number", "count": 10}]
    assert rec.summary == {"loss": 0.1, "acc": 0.9}
    assert rec.system_metrics == {"system.cpu": 2}
    assert rec.state == "running" and rec.source == "local"
    assert rec.storage_id == run_storage_id(E, P, "run1")
    assert rec.heartbeat_at and ISO.match(rec.heartbeat_at)
    with store.session() as s:
        events = list(history.iter_events(s, rec.pk))
        log = runs.get_file(s, rec.pk, "output.log")
    assert [e["system.cpu"] for e in events] == [1, 2]
    assert log is not None and log.blob_hash
    assert blobs.read_blob(store, log.blob_hash) == b"line 0\nprogress 100%\nline 2\nline 3\n"
    assert rec.file_count == 1


def test_file_stream_python_sender_shapes(srv: RunningServer, client: requests.Session,
                                          store: Store) -> None:
    body = {"files": {"wandb-history.jsonl": [
        {"offset": 0, "content": [hist_line(0)]},
        {"offset": 1, "content": [hist_line(1), json.dumps({"loss": 3})]},  # no _step
    ]}, "dropped": 0, "uploaded": ["a.txt"], "complete": False, "failed": False}
    assert stream(client, srv, body).status_code == 200
    assert [r["_step"] for r in all_history(store)] == [0, 1, 2]


def test_file_stream_nan_infinity_wide_ints_and_unicode_exact(
    srv: RunningServer, client: requests.Session, store: Store
) -> None:
    line = ('{"loss": NaN, "up": Infinity, "down": -Infinity, "wide": 1180591620717411303424, '
            '"f": 0.30000000000000004, "精度": 0.5, "δ/loss": -0.0, "_step": 0, '
            '"nested": {"a": [NaN, 1e-300]}}')
    summary = '{"best": NaN, "Ω": "ü", "inf": Infinity}'
    body = ('{"files": {"wandb-history.jsonl": {"offset": 0, "content": ['
            + json.dumps(line) + ']}, "wandb-summary.json": {"offset": 0, "content": ['
            + json.dumps(summary) + "]}}}")
    assert stream(client, srv, body.encode("utf-8")).status_code == 200
    (row,) = all_history(store)
    assert math.isnan(row["loss"]) and math.isnan(row["nested"]["a"][0])
    assert row["up"] == math.inf and row["down"] == -math.inf
    assert row["wide"] == 2**70 and isinstance(row["wide"], int)
    assert repr(row["f"]) == "0.30000000000000004" and row["nested"]["a"][1] == 1e-300
    assert row["精度"] == 0.5 and math.copysign(1, row["δ/loss"]) == -1
    assert json.dumps(row, sort_keys=True) == json.dumps(json.loads(line), sort_keys=True)
    rec = get_run(store)
    assert rec is not None
    assert math.isnan(rec.summary["best"]) and rec.summary["Ω"] == "ü"
    assert rec.summary["inf"] == math.inf


def test_file_stream_complete_and_exitcode_set_state(
    srv: RunningServer, client: requests.Session, store: Store
) -> None:
    cases = {"ok": (0, "finished"), "crash": (1, "failed"), "ctrlc": (255, "failed")}
    for run_id, (code, state) in cases.items():
        assert stream(client, srv, {}, run_id=run_id).status_code == 200
        assert (r := get_run(store, run_id)) is not None and r.state == "running"
        assert stream(client, srv, {"complete": True, "exitcode": code},
                      run_id=run_id).status_code == 200
        assert (r := get_run(store, run_id)) is not None and r.state == state, run_id
    assert stream(client, srv, {"preempting": True}, run_id="pre").status_code == 200
    assert stream(client, srv, {}, run_id="pre").status_code == 200
    assert (r := get_run(store, "pre")) is not None and r.state == "preempting"


def test_file_stream_tells_a_killed_run_to_stop(srv: RunningServer, client: requests.Session,
                                                store: Store) -> None:
    pk = make_run(store)
    with store.transaction() as s:
        runs.update_run(s, pk, state="killed")
    r = stream(client, srv, {"complete": True, "exitcode": 255})
    assert r.json()["stopped"] is True
    assert (rec := get_run(store)) is not None and rec.state == "killed"


def test_file_stream_bad_line_writes_nothing(srv: RunningServer, client: requests.Session,
                                             store: Store) -> None:
    body = {"files": {"wandb-history.jsonl": {"offset": 0,
                                              "content": [hist_line(0), "{not json"]}}}
    r = stream(client, srv, body)
    assert r.status_code == 400 and "line 1" in r.json()["errors"][0]["message"]
    assert get_run(store) is None
    assert stream(client, srv, b"[1, 2]").status_code == 400


def test_file_stream_ten_megabyte_summary_round_trips(
    srv: RunningServer, client: requests.Session, store: Store
) -> None:
    summary = {"big": "x" * 10_000_000, "table": list(range(1000)), "nan": math.nan}
    body = {"files": {"wandb-summary.json": {"offset": 0, "content": [json.dumps(summary)]}}}
    compressed = gzip.compress(json.dumps(body).encode(), compresslevel=1)
    r = stream(client, srv, compressed, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200
    rec = get_run(store)
    assert rec is not None
    assert rec.summary["big"] == summary["big"] and rec.summary["table"] == summary["table"]
    assert math.isnan(rec.summary["nan"])


# --- faults --------------------------------------------------------------------------------


def test_fault_429_with_retry_after_by_call_number(srv: RunningServer,
                                                   client: requests.Session) -> None:
    srv.faults.set([Fault(route="file_stream", kind="429", calls=[2, 5], retry_after=3)])
    responses = [stream(client, srv, {}) for _ in range(6)]
    assert [r.status_code for r in responses] == [200, 429, 200, 200, 429, 200]
    assert responses[1].headers["Retry-After"] == "3"
    faulted = srv.request_log.faults()
    assert [(e.route, e.status, e.fault) for e in faulted] == [("file_stream", 429, "429")] * 2


def test_fault_500_by_probability_is_reproducible(store: Store) -> None:
    expected_rng = random.Random(42)
    expected = [500 if expected_rng.random() < 0.3 else 200 for _ in range(40)]
    plan = FaultPlan([Fault(route="file_stream", kind="500", probability=0.3)], seed=42)
    with serve_in_thread(store, faults=plan) as srv, requests.Session() as client:
        client.auth = ("api", srv.api_key)
        got = [stream(client, srv, {}, run_id="p").status_code for _ in range(40)]
        assert got == expected
        assert srv.request_log.count("file_stream", status=500) == expected.count(500) > 0
        # Other routes are untouched by a file_stream rule.
        assert client.get(srv.url + "/nope", timeout=10).status_code == 404


def test_fault_latency(srv: RunningServer, store: Store) -> None:
    make_run(store)
    srv.faults.set([Fault(route="storage_get", kind="latency", latency_ms=200)])
    t0 = time.perf_counter()
    r = requests.get(srv.ctx.signer.download_url(E, P, "run1", "x"), timeout=10)
    assert time.perf_counter() - t0 >= 0.2
    assert r.status_code == 404
    (entry,) = srv.request_log.entries("storage_get")
    assert entry.fault == "latency:200ms" and entry.duration_ms >= 200


def test_fault_drop_before_the_handler(srv: RunningServer, client: requests.Session,
                                       store: Store) -> None:
    srv.faults.set([Fault(route="file_stream", kind="drop_before", calls=[1])])
    body = {"files": {"wandb-history.jsonl": {"offset": 0, "content": [hist_line(0)]}}}
    with pytest.raises(requests.ConnectionError):
        stream(client, srv, body)
    assert get_run(store) is None  # the handler never ran
    assert stream(client, srv, body).status_code == 200
    entries = srv.request_log.entries("file_stream")
    assert [(e.status, e.fault) for e in entries] == [(None, "drop_before"), (200, None)]


def test_fault_drop_after_the_write_was_applied(srv: RunningServer, client: requests.Session,
                                                store: Store) -> None:
    srv.faults.set([Fault(route="file_stream", kind="drop_after", calls=[1]),
                    Fault(route="storage_put", kind="drop_after", calls=[1])])
    body = {"files": {"wandb-history.jsonl": {"offset": 0,
                                              "content": [hist_line(i) for i in range(3)]}}}
    with pytest.raises(requests.ConnectionError):
        stream(client, srv, body)
    assert len(all_history(store)) == 3  # applied although the client saw an error
    assert stream(client, srv, body).status_code == 200  # the client's retry
    assert len(all_history(store)) == 3  # ... duplicates nothing
    with pytest.raises(requests.ConnectionError):
        requests.put(srv.ctx.signer.upload_url(E, P, "run1", "m.bin"), data=b"m", timeout=10)
    rec = get_run(store)
    assert rec is not None and rec.pk is not None
    with store.session() as s:
        f = runs.get_file(s, rec.pk, "m.bin")
    assert f is not None and f.size_bytes == 1


def test_faults_from_json_and_changed_at_runtime(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"seed": 3, "faults": [
        {"route": "*", "kind": "503", "calls": [1], "retry_after": 2},
    ]}))
    plan = FaultPlan.from_json(path)
    assert plan.to_obj()["faults"][0]["kind"] == "503"
    with serve_in_thread(store, faults=plan) as srv, requests.Session() as client:
        client.auth = ("api", srv.api_key)
        r = stream(client, srv, {})
        assert r.status_code == 503 and r.headers["Retry-After"] == "2"
        assert stream(client, srv, {}).status_code == 200
        srv.faults.add(Fault(route="file_stream", kind="500"))  # every call from now on
        assert stream(client, srv, {}).status_code == 500
        srv.faults.clear()
        assert stream(client, srv, {}).status_code == 200
        srv.faults = FaultPlan([Fault(route="file_stream", kind="429", max_hits=1)])
        assert [stream(client, srv, {}).status_code for _ in range(2)] == [429, 200]


def test_fault_plan_validation() -> None:
    with pytest.raises(ConfigError):
        Fault(route="graphql", kind="418")
    with pytest.raises(ConfigError):
        Fault(route="nowhere", kind="500")
    with pytest.raises(ConfigError):
        Fault(kind="500", probability=0.5, calls=[1])
    with pytest.raises(ConfigError):
        FaultPlan.from_obj({"faults": [{"kind": "500", "bogus": 1}]})
    assert Fault(kind="429").retry_after == 1.0


@needs_graphql
def test_fault_per_graphql_operation(srv: RunningServer, client: requests.Session) -> None:
    srv.faults.set([Fault(route="graphql", operation="Viewer", kind="500")])
    viewer = {"query": "query Viewer { viewer { id } }", "operationName": "Viewer"}
    other = {"query": "query ServerFeaturesQuery { serverInfo { features { name } } }"}
    assert client.post(srv.url + "/graphql", json=viewer, timeout=10).status_code == 500
    assert client.post(srv.url + "/graphql", json=other, timeout=10).status_code == 200
    ops = [(e.operations, e.status) for e in srv.request_log.entries("graphql")]
    assert ops == [(("Viewer",), 500), (("ServerFeaturesQuery",), 200)]


# --- request log, graphql ---------------------------------------------------------------


def test_request_log_entries_and_file(srv: RunningServer, client: requests.Session,
                                      tmp_path: Path) -> None:
    make_run(srv.store)
    requests.put(srv.ctx.signer.upload_url(E, P, "run1", "d/a.txt"), data=b"12345", timeout=10)
    requests.get(srv.ctx.signer.download_url(E, P, "run1", "d/a.txt"), timeout=10)
    stream(client, srv, {"files": {}})
    entries = srv.request_log.entries()
    assert [(e.route, e.method, e.path, e.status) for e in entries] == [
        ("storage_put", "PUT", f"/storage/{E}/{P}/run1/d/a.txt", 200),
        ("storage_get", "GET", f"/storage/{E}/{P}/run1/d/a.txt", 200),
        ("file_stream", "POST", f"/files/{E}/{P}/run1/file_stream", 200),
    ]
    assert entries[0].request_bytes == 5 and entries[1].response_bytes == 5
    assert all(e.duration_ms >= 0 and e.fault is None for e in entries)
    lines = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert [x["route"] for x in lines] == ["storage_put", "storage_get", "file_stream"]
    assert set(lines[0]) == {"time", "route", "method", "path", "operations", "status",
                             "request_bytes", "response_bytes", "duration_ms", "fault"}


def test_graphql_bad_bodies(srv: RunningServer, client: requests.Session) -> None:
    r = client.post(srv.url + "/graphql", data=b"{nope", timeout=10)
    assert r.status_code == 400
    r = client.post(srv.url + "/graphql", data=b"not gzip",
                    headers={"Content-Encoding": "gzip"}, timeout=10)
    assert r.status_code == 400


@needs_graphql
def test_graphql_gzip_and_batched_bodies(srv: RunningServer, client: requests.Session) -> None:
    doc = {"query": "query Viewer { viewer { id entity } }", "variables": {},
           "operationName": ""}
    r = client.post(srv.url + "/graphql", data=gzip.compress(json.dumps(doc).encode()),
                    headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
                    timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json()["data"]["viewer"]["entity"] == srv.ctx.entity
    r = client.post(srv.url + "/graphql", json=[doc, doc], timeout=10)
    assert r.status_code == 200 and [x["data"]["viewer"]["id"] for x in r.json()] == [
        r.json()[0]["data"]["viewer"]["id"]] * 2
    entries = srv.request_log.entries("graphql")
    assert [e.operations for e in entries] == [("Viewer",), ("Viewer", "Viewer")]


def test_stop_leaks_no_threads_with_open_keep_alive_connections(store: Store) -> None:
    before = set(threading.enumerate())
    srv = serve_in_thread(store)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", "/nope")
    conn.getresponse().read()  # the connection stays open (keep-alive)
    assert srv.server._connections
    srv.stop()
    conn.close()
    leaked = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leaked == []
    assert srv.api_key == DEFAULT_TEST_API_KEY


# --- paths and blobs -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.txt", "media/images/x_1.png", "dir/sub/ü ñ.bin",
                                  "..hidden", "a..b", ".config"])
def test_safe_names_pass(name: str) -> None:
    assert validate_run_file_name(name) == name


@pytest.mark.parametrize("name", ["", "..", "../a", "a/../b", "/abs", "a//b", "a/", "a\\b",
                                  "a\x00", "a\nb", "C:x", ".", "a/./b"])
def test_unsafe_names_refused(name: str) -> None:
    with pytest.raises(UnsafePathError):
        validate_run_file_name(name)


def blob_rows(store: Store) -> list[tuple[Any, ...]]:
    with store.session() as s:
        return [tuple(r) for r in s.connection().exec_driver_sql(
            "SELECT hash, size, md5 FROM blob ORDER BY hash")]


def test_put_bytes_is_idempotent(store: Store) -> None:
    a = blobs.put_bytes(store, b"hello")
    b = blobs.put_bytes(store, b"hello")
    assert a == b and a.size == 5
    assert a.md5_b64 == base64.b64encode(hashlib.md5(b"hello").digest()).decode()
    assert blobs.read_blob(store, a.hash) == b"hello"
    assert blob_rows(store) == [(a.hash, 5, a.md5_b64)]
    files = [p for p in store.blobs_dir.rglob("*") if p.is_file()]
    assert files == [blobs.blob_path(store, a.hash)]
    assert files[0].parent.name == a.hash[:2]


def test_put_stream_verifies_and_leaves_no_temp(store: Store, tmp_path: Path) -> None:
    import io

    data = b"x" * 3_000_000
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    for kw in ({"expected_size": len(data) - 1}, {"expected_size": len(data) + 1},
               {"expected_md5_b64": "AAAAAAAAAAAAAAAAAAAAAA=="}):
        with pytest.raises(BlobVerifyError) as err:
            blobs.put_stream(store, io.BytesIO(data), **kw)
        assert err.value.transient
        assert [p for p in store.blobs_dir.rglob("*") if p.is_file()] == []
        assert blob_rows(store) == []
    info = blobs.put_stream(store, io.BytesIO(data), expected_size=len(data),
                            expected_md5_b64=md5)
    assert info.md5_b64 == md5 and blobs.has_blob(store, info.hash)
    # In the caller's transaction: a rollback drops the row, the file is a harmless orphan.
    with pytest.raises(RuntimeError), store.transaction() as s:
        other = blobs.put_stream(store, io.BytesIO(b"other"), session=s)
        raise RuntimeError
    assert blobs.has_blob(store, other.hash)
    assert [r[0] for r in blob_rows(store)] == [info.hash]
    with pytest.raises(StoreError):
        blobs.blob_path(store, "../../etc/passwd")


# --- seeder --------------------------------------------------------------------------------


def db_digest(store: Store) -> str:
    """A hash of every table's content (minus local bookkeeping times) and every blob."""
    assert store.path is not None
    h = hashlib.sha256()
    con = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite%' "
            "AND name != 'alembic_version' ORDER BY name")]
        for table in tables:
            cols = [f'"{r[1]}"' for r in con.execute(f'PRAGMA table_info("{table}")')
                    if r[1] != "synced_at"]
            rows = con.execute(f'SELECT {", ".join(cols)} FROM "{table}" ORDER BY 1, 2, 3')
            h.update(table.encode())
            for row in rows:
                h.update(repr(row).encode())
    finally:
        con.close()
    for p in sorted(store.blobs_dir.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(store.blobs_dir)).encode() + p.read_bytes())
    return h.hexdigest()


def test_seed_demo_is_deterministic(tmp_path: Path) -> None:
    digests = []
    for name in ("a", "b"):
        with open_store(tmp_path / name / "mirror.db") as st:
            seed_demo(st)
            digests.append(db_digest(st))
            if name == "b":
                seed_demo(st)  # idempotent
                assert db_digest(st) == digests[-1]
    assert digests[0] == digests[1]


def test_seed_demo_contents(store: Store) -> None:
    res = seed_demo(store)
    assert len(res.run_ids) == 20 and len(set(res.run_ids)) == 20
    assert all(re.fullmatch(r"[a-z0-9]{8}", r) for r in [*res.run_ids, res.sweep_id])
    with store.session() as s:
        recs = runs.query_runs(s, "mirror", "demo")
        sweep = runs.get_sweep(s, "mirror", "demo", res.sweep_id or "")
        per_run = {}
        for rec in recs:
            assert rec.pk is not None
            steps = history.history_steps(s, rec.pk)
            files = {f.name: f for f in runs.list_files(s, rec.pk)}
            n_events = len(list(history.iter_events(s, rec.pk)))
            val = sum(1 for r in history.iter_history(s, rec.pk) if "val_loss" in r)
            per_run[rec.run_id] = (steps, files, n_events, val)
    assert {r.state for r in recs} == {"finished", "failed", "crashed", "running"}
    assert sweep is not None and "name: val_loss" in (sweep.config or "")
    assert "goal: minimize" in (sweep.config or "") and sweep.method == "bayes"
    in_sweep = [r for r in recs if r.sweep_name == res.sweep_id]
    assert 3 <= len(in_sweep) < 20
    assert sweep.best_loss == min(r.summary["val_loss"] for r in in_sweep)
    assert {r.job_type for r in recs} == {"train", "eval"}
    assert {g for r in recs for g in [r.group_name] if g} == {"exp-a", "exp-b"}
    assert any(r.tags for r in recs) and any(math.isnan(r.summary.get("grad_norm", 0))
                                             for r in recs)
    starts = sorted(steps[0] for steps, *_ in per_run.values())
    assert starts.count(100) == 1 and starts.count(0) == 19
    png_head = b"\x89PNG\r\n\x1a\n"
    for rec in recs:
        steps, files, n_events, val = per_run[rec.run_id]
        assert len(steps) >= 1000 and rec.history_line_count == len(steps)
        assert rec.last_step == steps[-1] == rec.history_keys["lastStep"]
        assert val == math.ceil(len(steps) / 10)  # sparse: every 10th step
        assert n_events == rec.events_line_count > 10
        assert rec.file_count == len(files) == 5
        assert {"wandb-metadata.json", "config.yaml", "output.log", "model.pt",
                IMAGE_NAME} == set(files)
        assert "精度" in rec.summary and rec.config["optimizer"]["value"]["betas"]
        assert "_wandb" in rec.config and rec.config["lr"]["value"] > 0
        assert base64.b64decode(rec.storage_id or "").decode() == (
            f"Run:v1:{rec.run_id}:demo:mirror")
        assert ISO.match(rec.created_at or "") and ISO.match(rec.heartbeat_at or "")
        for f in files.values():
            data = blobs.read_blob(store, f.blob_hash or "")
            assert base64.b64encode(hashlib.md5(data).digest()).decode() == f.md5
            assert len(data) == f.size_bytes
        assert 100_000 < (files["model.pt"].size_bytes or 0) < 1_000_000
        assert blobs.read_blob(store, files[IMAGE_NAME].blob_hash or "").startswith(png_head)
        meta = json.loads(blobs.read_blob(store, files["wandb-metadata.json"].blob_hash or ""))
        assert {"os", "python", "host", "program", "args", "gpu"} <= set(meta)


def test_generate_benchmark_sizes(store: Store) -> None:
    res = generate(store, runs=2, steps=3000, keys=4, seed=1, project="bench")
    assert len(res.run_ids) == 2 and res.history_rows == 6000
    with store.session() as s:
        for run_id in res.run_ids:
            rec = runs.get_run(s, "mirror", "bench", run_id)
            assert rec is not None and rec.pk is not None
            assert history.history_bounds(s, rec.pk) == (3000, 0, 2999)
            assert rec.history_line_count == 3000 and rec.last_step == 2999
            assert set(rec.history_keys["keys"]) == {"m0", "m1", "m2", "m3", "_step",
                                                     "_runtime", "_timestamp"}
            assert rec.summary["_step"] == 2999
