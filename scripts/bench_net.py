"""Benchmarks over the network (loopback): `serve` and `sync`.

Loaded by ``scripts/bench.py`` as a plugin. Both build their upstream deterministically
with :func:`mirror.server.seed.generate`, serve it with the project's own W&B-compatible
server on 127.0.0.1, and time the mirror against a baseline in the same run:

* ``serve``: the official ``wandb`` client's ``scan_history()`` of one long run (rows/s),
  against a plain GraphQL pager over ``requests`` on the same server (the floor a client
  could reach; the ratio shows how much of the time is the official client itself).
* ``sync``: an initial ``mirror sync`` of a project (runs x steps x keys + files per run)
  into a fresh store, against the official client pulling the same data the way a user
  script does (runs, config, summary, ``scan_history``, file downloads). Target: >= 5x.
  Also prints the requests each mirror sync made, by route (the batched ``RunParts``
  documents carry many runs each; every file is one storage GET on both sides).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import CaseResult, alternate, benchmark

FILES_PER_RUN = 5


@contextmanager
def _served(runs: int, steps: int, keys: int, files: int) -> Iterator[tuple[Any, Any, Path]]:
    """A generated upstream behind `mirror serve` on loopback, and a scratch folder."""
    from mirror.records import FileRecord
    from mirror.server.seed import generate
    from mirror.store import blobs, open_store
    from mirror.store import runs as store_runs

    with tempfile.TemporaryDirectory(prefix="mirror-bench-net-") as tmp:
        root = Path(tmp)
        up = open_store(root / "upstream" / "mirror.db")
        gen = generate(up, runs=runs, steps=steps, keys=keys, seed=1, entity="bench",
                       project="net")
        if files:
            with up.transaction() as s:
                for i, run_id in enumerate(gen.run_ids):
                    pk = store_runs.run_pk(s, "bench", "net", run_id)
                    assert pk is not None
                    for j in range(files):
                        data = (f"{run_id}:{j}:".encode() * 2000)[: 20_000 + 997 * j]
                        info = blobs.put_bytes(up, data, session=s, durable=False)
                        store_runs.save_file(s, pk, FileRecord(
                            name=f"files/{j}.bin", size_bytes=info.size, md5=info.md5_b64,
                            updated_at="2024-01-01T00:00:00Z", blob_hash=info.hash))
                    store_runs.update_run(s, pk, file_count=files)
                    del i
        up.close()
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ["WANDB_CONFIG_DIR"] = str(root / "wandb-config")
        os.environ["WANDB_CACHE_DIR"] = str(root / "wandb-cache")
        with server_process(root / "upstream" / "mirror.db", root) as srv:
            yield srv, gen, root


class _Remote:
    """The parts of ``RunningServer`` the benchmarks use, for a server in another process.

    The server must not share the benchmark's interpreter: its threads would compete for
    the GIL with the mirror's client (the official client works in its own Go process).
    """

    def __init__(self, url: str, api_key: str, log: Path) -> None:
        self.url = url
        self.api_key = api_key
        self.log_path = log

    @property
    def request_log(self) -> list[str]:
        if not self.log_path.exists():
            return []
        return self.log_path.read_text(encoding="utf-8").splitlines()


@contextmanager
def server_process(db: Path, root: Path) -> Iterator[_Remote]:
    """``mirror serve --authoritative`` over ``db`` in its own process, its requests
    logged to ``root/requests.jsonl`` (also used by ``bench_push``)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    key = "bench" * 9
    log = root / "requests.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirror.cli", "serve", "--store", str(db), "--authoritative",
         "--api-key", key, "--port", str(port), "--request-log", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the benchmark server did not start") from None
                time.sleep(0.1)
        yield _Remote(url, key, log)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _net_arguments(runs: int, steps: int, keys: int) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--runs", type=int, default=runs, help=f"runs ({runs})")
        parser.add_argument("--steps", type=int, default=steps, help=f"steps per run ({steps})")
        parser.add_argument("--keys", type=int, default=keys, help=f"metrics per row ({keys})")

    return add


@benchmark("serve", help="official client scan_history from `mirror serve`, rows/s",
           arguments=_net_arguments(1, 100_000, 10))
def bench_serve(args: argparse.Namespace) -> list[CaseResult]:
    import requests
    import wandb

    from mirror.store.codec import loads_wire

    with _served(args.runs, args.steps, args.keys, 0) as (srv, gen, _root):
        path = f"bench/net/{gen.run_ids[0]}"
        api = wandb.Api(overrides={"base_url": srv.url}, api_key=srv.api_key, timeout=120)
        total = gen.history_rows // max(1, args.runs)

        def official() -> Callable[[], None]:
            run = api.run(path)

            def go() -> None:
                n = sum(1 for _ in run.scan_history(page_size=1000))
                assert n == total, (n, total)

            return go

        doc = ("query H($e:String!,$p:String!,$r:String!,$a:Int64,$b:Int64,$s:Int)"
               "{project(name:$p,entityName:$e){run(name:$r){history(minStep:$a,"
               "maxStep:$b,samples:$s)}}}")

        def plain() -> Callable[[], None]:
            session = requests.Session()
            session.auth = ("api", srv.api_key)

            def go() -> None:
                n, lo = 0, 0
                while lo < args.steps:
                    body = {"query": doc, "variables": {"e": "bench", "p": "net",
                                                        "r": gen.run_ids[0], "a": lo,
                                                        "b": lo + 1000, "s": 1000}}
                    resp = session.post(f"{srv.url}/graphql", json=body, timeout=60)
                    rows = resp.json()["data"]["project"]["run"]["history"]
                    n += sum(1 for r in rows if loads_wire(r) is not None)
                    lo += 1000
                assert n == total, (n, total)

            return go

        case = CaseResult("scan_history", total, "rows", target=0.0)
        return [alternate(case, args.repeat, official, plain)]


@benchmark("sync", help="initial mirror sync vs the official client pulling the same data",
           arguments=_net_arguments(1000, 1000, 20))
def bench_sync(args: argparse.Namespace) -> list[CaseResult]:
    import wandb

    from mirror.settings import Settings
    from mirror.store import open_store
    from mirror.sync.engine import SyncOptions
    from mirror.sync.runner import sync

    with _served(args.runs, args.steps, args.keys, FILES_PER_RUN) as (srv, gen, root):
        counter = [0]
        requests_used: list[str] = []

        def mirror() -> Callable[[], None]:
            counter[0] += 1
            db = root / f"local-{counter[0]}" / "mirror.db"
            store = open_store(db)
            settings = Settings(home=db.parent, db_url=store.url, base_url=srv.url,
                                api_key=srv.api_key)

            def go() -> None:
                before = len(srv.request_log)
                report = sync(store, settings, ["bench/net"], SyncOptions(workers=4))
                assert report.ok and report.projects[0].rows == gen.history_rows
                requests_used.append(_request_summary(srv.request_log[before:]))
                store.close()

            return go

        def official() -> Callable[[], None]:
            api = wandb.Api(overrides={"base_url": srv.url}, api_key=srv.api_key, timeout=120)
            counter[0] += 1
            dest = root / f"official-{counter[0]}"

            def go() -> None:
                rows = 0
                for run in api.runs("bench/net", per_page=100):
                    _ = (run.config, dict(run.summary))
                    rows += sum(1 for _ in run.scan_history(page_size=1000))
                    for f in run.files():
                        f.download(root=str(dest / run.id), replace=True)
                assert rows == gen.history_rows, (rows, gen.history_rows)

            return go

        case = CaseResult("initial sync", gen.history_rows, "rows", target=5.0)
        alternate(case, args.repeat, mirror, official)
        print(f"requests of each mirror sync: {'; '.join(requests_used)}")
        return [case]


def _request_summary(lines: list[str]) -> str:
    """``"5114 (graphql 114, storage_get 5000)"``: what one sync cost on the wire."""
    import json
    from collections import Counter

    routes = Counter(json.loads(line)["route"] for line in lines)
    parts = ", ".join(f"{route} {n}" for route, n in sorted(routes.items()))
    return f"{sum(routes.values())} ({parts})"
