"""Benchmark ``mlflow``: the MLflow importer (phase 1) against the old official read path.

Loaded by ``scripts/bench.py`` as a plugin (``python scripts/bench.py mlflow``). Data:
``--runs`` runs x ``--metrics`` keys x ``--steps`` steps (default 200 x 10 x 1,000 = 2M
points) in one MLflow sqlite store, read directly (``sqlite:///``) and through ``mlflow
server`` on 127.0.0.1 over the same database file.

* mirror: ``MlflowImporter.import_runs(upload=False)`` into a fresh store: read AND write
  (every point lands in the store, rows merged by step, points file, import map);
* baseline: what wandb 0.27's ``MlflowImporter`` read path did: list the runs, then one
  ``get_metric_history`` per key, sequentially, merging rows by step (and writing nothing).

Both are timed alternately in the same process on the same data (see ``bench.alternate``);
the table gives points/s and the ratio, and a line per backend gives the MLflow API calls
per run of each. Targets: >= 3x over HTTP (where the old path pays a round trip per key);
>= 0.8x on ``sqlite:///`` (both are bound by MLflow's own query there, and the mirror
also writes).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import CaseResult, _tempdir, alternate, benchmark

T0 = 1_700_000_000_000


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=200, help="MLflow runs (200)")
    parser.add_argument("--metrics", type=int, default=10, help="metric keys per run (10)")
    parser.add_argument("--steps", type=int, default=1000, help="steps per key (1000)")
    parser.add_argument("--backends", default="sqlite,http",
                        help="comma list of sqlite,http (sqlite,http)")
    parser.add_argument("--server-workers", type=int, default=2,
                        help="uvicorn workers of `mlflow server` (2, as in the reference)")


def _build(path: Path, runs: int, keys: int, steps: int) -> list[str]:
    """An MLflow store with runs x keys x steps points. Runs and experiments go through
    ``MlflowClient``; the points are bulk-inserted into MLflow's own tables (what
    ``log_batch`` writes, row for row) because ``log_batch`` would take minutes for 2M
    points (reference section 9: ~8.5 s per 100,000)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{path}")
    exp = client.create_experiment("bench", artifact_location=str(path.parent / "art"))
    ids = []
    for i in range(runs):
        run = client.create_run(exp, start_time=T0, run_name=f"run-{i:04d}")
        client.set_terminated(run.info.run_id, "FINISHED", end_time=T0 + steps * 1000)
        ids.append(run.info.run_id)
    rng = random.Random(7)
    conn = sqlite3.connect(path)
    with conn:
        for rid in ids:
            rows = [(f"m{k}", rng.random(), T0 + s * 1000, rid, s, 0)
                    for k in range(keys) for s in range(steps)]
            conn.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, "
                             "is_nan) VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.executemany(
                "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(f"m{k}", rows[k * steps + steps - 1][1], T0 + (steps - 1) * 1000, steps - 1,
                  0, rid) for k in range(keys)])
    conn.close()
    return ids


@contextmanager
def _server(db: Path, workers: int) -> Iterator[str]:
    """`mlflow server` over ``db`` on a free loopback port (its process group is killed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    proc = subprocess.Popen(
        [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri",
         f"sqlite:///{db}", "--workers", str(workers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _official_read(uri: str) -> tuple[int, int, int]:
    """wandb 0.27's ``MlflowImporter`` read path: (points, runs, API calls)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    calls = 1
    points = n_runs = 0
    for exp in client.search_experiments():
        calls += 1
        for run in client.search_runs(exp.experiment_id):
            n_runs += 1
            by_step: dict[int, dict[str, float]] = {}
            for key in run.data.metrics:
                calls += 1
                for m in client.get_metric_history(run.info.run_id, key):
                    by_step.setdefault(m.step, {})[key] = m.value
                    points += 1
            rows = [{"_step": step, **values} for step, values in by_step.items()]
            assert rows or not run.data.metrics
    return points, n_runs, calls


def _warm_up(uri: str) -> None:
    """One small read of each kind, untimed: a cold server would tax whoever goes first."""
    from mlflow import MlflowClient

    from mirror.importers.mlflow_read import MlflowSource

    client = MlflowClient(uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "bench"]
    run = client.search_runs(exp.experiment_id, max_results=1)[0]
    for key in run.data.metrics:
        client.get_metric_history(run.info.run_id, key)
    source = MlflowSource(uri)
    source.prefetch([(run.info.run_id, dict.fromkeys(run.data.metrics, 1000))])
    source.close()


def _case(backend: str, uri: str, tmp: Path, args: argparse.Namespace
          ) -> tuple[CaseResult, float, float]:
    """One backend: alternate mirror and baseline; (case, calls/run mirror, baseline)."""
    from mirror.importers.mlflow import MlflowImporter
    from mirror.settings import Settings, sqlite_url

    points = args.runs * args.metrics * args.steps
    mirror_calls: list[float] = []
    base_calls: list[float] = []

    def mirror() -> Callable[[], None]:
        path = tmp / f"mirror-{backend}-{len(mirror_calls)}.db"
        for old in tmp.glob(f"mirror-{backend}-*"):  # the previous round's store
            if old.is_file():
                old.unlink()
        settings = Settings(home=tmp, db_url=sqlite_url(path), entity="bench")

        def go() -> None:
            with MlflowImporter(mlflow_tracking_uri=uri, store=path, settings=settings) as imp:
                report = imp.import_runs(imp.collect_runs(), artifacts=False, upload=False)
                assert report.counts() == {"imported": args.runs}, report.counts()
                assert sum(r.points for r in report) == points
                mirror_calls.append(imp.source.total_calls / args.runs)

        return go

    def baseline() -> Callable[[], None]:
        def go() -> None:
            got, n_runs, n_calls = _official_read(uri)
            assert got == points and n_runs == args.runs
            base_calls.append(n_calls / args.runs)

        return go

    _warm_up(uri)
    case = alternate(CaseResult(f"{backend} points", points, "points",
                                target=3.0 if backend == "http" else 0.8),
                     args.repeat, mirror, baseline)
    return case, statistics.median(mirror_calls), statistics.median(base_calls)


@benchmark("mlflow", help="MLflow import (phase 1) vs the old official read path",
           arguments=_arguments)
def bench_mlflow(args: argparse.Namespace) -> list[CaseResult]:
    """Points/s of our importer's phase 1 (read + store) against the old read path."""
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "http"}
    if unknown:
        raise SystemExit(f"--backends: unknown {sorted(unknown)} (use sqlite,http)")
    cases: list[CaseResult] = []
    calls: dict[str, tuple[float, float]] = {}
    with _tempdir() as tmp:
        db = tmp / "mlflow.db"
        start = time.perf_counter()
        _build(db, args.runs, args.metrics, args.steps)
        print(f"mlflow: built {args.runs} runs x {args.metrics} keys x {args.steps} steps "
              f"in {time.perf_counter() - start:.1f} s", flush=True)
        for backend in backends:
            if backend == "http":
                with _server(db, args.server_workers) as url:
                    case, ours, theirs = _case(backend, url, tmp, args)
            else:
                case, ours, theirs = _case(backend, f"sqlite:///{db}", tmp, args)
            cases.append(case)
            calls[backend] = (ours, theirs)
            print(f"mlflow {backend}: mirror {case.items / case.mirror_median:,.0f} points/s, "
                  f"baseline {case.items / case.baseline_median:,.0f} points/s, "
                  f"ratio {case.ratio:.2f}; MLflow API calls per run: mirror {ours:.2f}, "
                  f"baseline {theirs:.2f}", flush=True)
    return cases
