"""Benchmarks: the mirror against the simplest thing that could do the same job.

A number alone says little, so every case times the mirror's path and a baseline written
with the bare libraries (plain ``sqlite3`` + ``orjson`` for the store) in the same process,
on the same deterministic data, alternating runs so that machine noise hits both. The table
shows medians and ``ratio = mirror throughput / baseline throughput``: ``1.0`` means as
fast as the baseline, and each case has a target ratio.

Usage::

    python scripts/bench.py store [--rows 200000] [--repeat 5] [--json bench-store.json]

Adding a benchmark: write ``def bench_x(args) -> list[CaseResult]`` and register it with
``@benchmark("x", help=..., arguments=...)``; it gets ``--repeat``/``--json``/``--strict``
for free.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

MIN_REPEAT = 5


# --- results -----------------------------------------------------------------------------


@dataclass
class CaseResult:
    """Timings of one case: the mirror and its baseline, seconds per run."""

    name: str
    items: int  # rows (or requests, files...) processed per run
    unit: str
    mirror: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    target: float = 1.0  # the ratio the mirror should reach

    @property
    def mirror_median(self) -> float:
        return statistics.median(self.mirror)

    @property
    def baseline_median(self) -> float:
        return statistics.median(self.baseline)

    @property
    def ratio(self) -> float:
        """Mirror throughput / baseline throughput (= baseline time / mirror time)."""
        return self.baseline_median / self.mirror_median

    @property
    def ok(self) -> bool:
        return self.ratio >= self.target

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            mirror_median_s=self.mirror_median,
            baseline_median_s=self.baseline_median,
            mirror_per_s=self.items / self.mirror_median,
            baseline_per_s=self.items / self.baseline_median,
            ratio=self.ratio,
            ok=self.ok,
        )
        return out


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(
    case: CaseResult,
    repeat: int,
    mirror: Callable[[], Callable[[], Any]],
    baseline: Callable[[], Callable[[], Any]],
) -> CaseResult:
    """Run ``repeat`` rounds of mirror then baseline, timing only the returned callables.

    ``mirror``/``baseline`` do their untimed setup (a fresh file, say) and return the
    callable to time, so setup cost never leaks into the figures.
    """
    for _ in range(repeat):
        case.mirror.append(timed(mirror()))
        case.baseline.append(timed(baseline()))
    return case


# --- registry ----------------------------------------------------------------------------

BenchFn = Callable[[argparse.Namespace], list[CaseResult]]


@dataclass(frozen=True)
class Benchmark:
    name: str
    run: BenchFn
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(
    name: str, *, help: str, arguments: Callable[[argparse.ArgumentParser], None] | None = None
) -> Callable[[BenchFn], BenchFn]:
    """Register ``fn`` as ``python scripts/bench.py NAME``."""

    def register(fn: BenchFn) -> BenchFn:
        BENCHMARKS[name] = Benchmark(name, fn, help, arguments)
        return fn

    return register


# --- store -------------------------------------------------------------------------------

HISTORY_KEYS = 20
PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")


def history_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` W&B-shaped history rows: 20 float metrics plus ``_step/_runtime/_timestamp``."""
    rng = random.Random(seed)
    keys = [f"metric_{i:02d}" for i in range(HISTORY_KEYS)]
    t0 = 1_760_000_000.0
    rows = []
    for step in range(n):
        row: dict[str, Any] = {k: rng.gauss(0.0, 1.0) * 10 ** rng.randint(-3, 3) for k in keys}
        row["_step"] = step
        row["_runtime"] = step * 0.05 + rng.random() * 0.01
        row["_timestamp"] = t0 + row["_runtime"]
        rows.append(row)
    return rows


@contextmanager
def _tempdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mirror-bench-") as tmp:
        yield Path(tmp)


def _baseline_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in PRAGMAS:
        conn.execute(pragma)
    conn.execute(
        "CREATE TABLE history (run_pk INTEGER, step INTEGER, row TEXT, "
        "PRIMARY KEY (run_pk, step)) WITHOUT ROWID"
    )
    return conn


def _baseline_insert(conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    import orjson

    # Decoded to str: the column is TEXT, as the mirror's (bytes would be stored as a BLOB).
    params = [(1, row["_step"], orjson.dumps(row).decode()) for row in rows]
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO history (run_pk, step, row) VALUES (?, ?, ?)", params)
    conn.execute("COMMIT")


def _baseline_read(conn: sqlite3.Connection) -> list[Any]:
    import orjson

    cur = conn.execute("SELECT row FROM history WHERE run_pk = ? ORDER BY step", (1,))
    return [orjson.loads(text) for (text,) in cur]


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=200_000, help="history rows (200000)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (0)")


@benchmark(
    "store",
    help="history insert/read: save_history/iter_history vs sqlite3+orjson",
    arguments=_store_arguments,
)
def bench_store(args: argparse.Namespace) -> list[CaseResult]:
    """The hot path of sync and of every history query: a run's rows in and out."""
    from mirror.store import Store, open_store
    from mirror.store.history import iter_history, save_history
    from mirror.store.models import Run

    rows = history_rows(args.rows, args.seed)
    n = len(rows)
    stores: list[tuple[Store, int]] = []
    conns: list[sqlite3.Connection] = []

    with _tempdir() as tmp:

        def mirror_insert() -> Callable[[], None]:
            store = open_store(tmp / f"store-{len(stores)}.db")  # migrated, as users' are
            with store.transaction() as s:
                run = Run(entity="bench", project="bench", run_id="run")
                s.add(run)
                s.flush()
                assert run.pk is not None
                pk = run.pk
            stores.append((store, pk))

            def go() -> None:
                with store.transaction() as s:
                    save_history(s, pk, rows)

            return go

        def baseline_insert() -> Callable[[], None]:
            conn = _baseline_db(tmp / f"baseline-{len(conns)}.db")
            conns.append(conn)
            return lambda: _baseline_insert(conn, rows)

        try:
            insert = alternate(
                CaseResult("insert", n, "rows", target=0.7),
                args.repeat,
                mirror_insert,
                baseline_insert,
            )
            # Reads use the last files written: same data, same warm page cache for both.
            (store, pk), conn = stores[-1], conns[-1]

            def mirror_read() -> None:
                with store.session() as s:
                    out = list(iter_history(s, pk))
                assert len(out) == n

            def baseline_read() -> None:
                assert len(_baseline_read(conn)) == n

            read = alternate(
                CaseResult("read", n, "rows", target=0.7),
                args.repeat,
                lambda: mirror_read,
                lambda: baseline_read,
            )
        finally:
            for store, _ in stores:
                store.close()
            for conn in conns:
                conn.close()
    return [insert, read]


# --- output ------------------------------------------------------------------------------

COLUMNS = ("case", "n", "mirror ms", "mirror/s", "base ms", "base/s", "ratio", "target")


def _rate(per_s: float) -> str:
    return f"{per_s / 1e6:.2f}M" if per_s >= 1e6 else f"{per_s / 1e3:.1f}k"


def _cells(c: CaseResult) -> list[str]:
    return [
        c.name,
        f"{c.items:,}",
        f"{c.mirror_median * 1000:,.1f}",
        _rate(c.items / c.mirror_median),
        f"{c.baseline_median * 1000:,.1f}",
        _rate(c.items / c.baseline_median),
        f"{c.ratio:.2f}",
        f">={c.target:.2f} {'ok' if c.ok else 'LOW'}",
    ]


def print_table(bench: str, cases: list[CaseResult], repeat: int) -> None:
    """Medians per case; rich when installed, aligned plain text otherwise."""
    unit = cases[0].unit if cases else "items"
    title = f"{bench}: median of {repeat} runs, {unit}/s; ratio = mirror/baseline throughput"
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        rows = [list(COLUMNS)] + [_cells(c) for c in cases]
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
        print(title)
        for r in rows:
            print("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)))
        return
    table = Table(title=title)
    for i, col in enumerate(COLUMNS):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    for c in cases:
        table.add_row(*_cells(c), style=None if c.ok else "red")
    Console(width=max(100, Console().width)).print(table)


def environment() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def load_plugins() -> None:
    """Import ``scripts/bench_*.py``: each registers more benchmarks with ``@benchmark``.

    They ``from bench import benchmark, CaseResult, ...``; when this file runs as a script
    it is ``__main__``, so it is also made importable as ``bench`` (one registry, not two).
    """
    import importlib

    sys.modules.setdefault("bench", sys.modules[__name__])
    here = Path(__file__).resolve().parent
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))
    for path in sorted(here.glob("bench_*.py")):
        importlib.import_module(path.stem)


def main(argv: list[str] | None = None) -> int:
    load_plugins()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for bench in BENCHMARKS.values():
        p = sub.add_parser(bench.name, help=bench.help, description=bench.help)
        p.add_argument(
            "--repeat",
            type=int,
            default=MIN_REPEAT,
            help=f"timed runs per case, at least {MIN_REPEAT} ({MIN_REPEAT})",
        )
        p.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
        p.add_argument(
            "--strict", action="store_true", help="exit 1 if a case misses its target ratio"
        )
        if bench.arguments:
            bench.arguments(p)
    args = parser.parse_args(argv)
    if args.repeat < MIN_REPEAT:
        parser.error(f"--repeat must be at least {MIN_REPEAT}: a median of fewer is noise")

    bench = BENCHMARKS[args.benchmark]
    cases = bench.run(args)
    print_table(bench.name, cases, args.repeat)
    if args.json:
        params = {k: v for k, v in vars(args).items() if k not in ("json", "benchmark")}
        doc = {
            "benchmark": bench.name,
            "params": {k: str(v) if isinstance(v, Path) else v for k, v in params.items()},
            "environment": environment(),
            "cases": [c.to_json() for c in cases],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 1 if args.strict and not all(c.ok for c in cases) else 0



# === mlflow: the MLflow importer (phase 1) vs the old official read path ==================
# One contiguous block (issue 7). Data: --runs runs x --metrics keys x --steps steps in one
# MLflow sqlite store, read directly (sqlite:///) and through `mlflow server` on 127.0.0.1
# (the same database file). Mirror = MlflowImporter.import_runs(upload=False) into a fresh
# store (read AND write); baseline = what wandb 0.27's MlflowImporter read path did: list
# runs, then one get_metric_history per key, sequentially, merging rows by step (no
# write). Points/s for both, and MLflow API calls per run.


def _mlflow_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=200, help="MLflow runs (200)")
    parser.add_argument("--metrics", type=int, default=10, help="metric keys per run (10)")
    parser.add_argument("--steps", type=int, default=1000, help="steps per key (1000)")
    parser.add_argument("--backends", default="sqlite,http",
                        help="comma list of sqlite,http (sqlite,http)")


def _mlflow_build(path: Path, runs: int, keys: int, steps: int) -> list[str]:
    """An MLflow store with runs x keys x steps points. Runs and experiments go through
    MlflowClient; the points are bulk-inserted into MLflow's own tables (what log_batch
    writes, row for row) because log_batch would take minutes for 2M points."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{path}")
    exp = client.create_experiment("bench", artifact_location=str(path.parent / "art"))
    t0 = 1_700_000_000_000
    ids = []
    for i in range(runs):
        run = client.create_run(exp, start_time=t0, run_name=f"run-{i:04d}")
        client.set_terminated(run.info.run_id, "FINISHED", end_time=t0 + steps * 1000)
        ids.append(run.info.run_id)
    rng = random.Random(7)
    conn = sqlite3.connect(path)
    with conn:
        for rid in ids:
            rows = [(f"m{k}", rng.random(), t0 + s * 1000, rid, s, 0)
                    for k in range(keys) for s in range(steps)]
            conn.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, "
                             "is_nan) VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.executemany(
                "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(f"m{k}", rows[k * steps + steps - 1][1], t0 + (steps - 1) * 1000, steps - 1,
                  0, rid) for k in range(keys)])
    conn.close()
    return ids


@contextmanager
def _mlflow_server(db: Path) -> Iterator[str]:
    """`mlflow server` over ``db`` on a free loopback port (its process group is killed)."""
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    proc = subprocess.Popen(
        [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri",
         f"sqlite:///{db}", "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as resp:
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


def _official_read(uri: str) -> tuple[int, int, int]:
    """wandb 0.27's MlflowImporter read path: (points, runs, API calls)."""
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


def _mlflow_warm_up(uri: str) -> None:
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


def _mlflow_case(backend: str, uri: str, tmp: Path, args: argparse.Namespace
                 ) -> tuple[CaseResult, float, float]:
    """One backend: alternate mirror and baseline; (case, calls/run mirror, baseline)."""
    from mirror.importers.mlflow import MlflowImporter
    from mirror.settings import Settings, sqlite_url

    points = args.runs * args.metrics * args.steps
    mirror_calls: list[float] = []
    base_calls: list[float] = []
    made: list[Path] = []

    def mirror() -> Callable[[], None]:
        path = tmp / f"mirror-{backend}-{len(made)}.db"
        made.append(path)
        settings = Settings(home=tmp, db_url=sqlite_url(path), entity="bench")

        def go() -> None:
            with MlflowImporter(mlflow_tracking_uri=uri, store=path, settings=settings) as imp:
                report = imp.import_runs(imp.collect_runs(), artifacts=False, upload=False)
                assert report.counts() == {"imported": args.runs}, report.counts()
                mirror_calls.append(imp.source.total_calls / args.runs)

        return go

    def baseline() -> Callable[[], None]:
        def go() -> None:
            got, n_runs, n_calls = _official_read(uri)
            assert got == points and n_runs == args.runs
            base_calls.append(n_calls / args.runs)

        return go

    _mlflow_warm_up(uri)
    case = alternate(CaseResult(f"{backend} points", points, "points",
                                target=3.0 if backend == "http" else 0.8),
                     args.repeat, mirror, baseline)
    return case, statistics.median(mirror_calls), statistics.median(base_calls)


@benchmark("mlflow", help="MLflow import (phase 1) vs the old official read path",
           arguments=_mlflow_arguments)
def bench_mlflow(args: argparse.Namespace) -> list[CaseResult]:
    """Points/s of our importer's phase 1 (read + store) against the old read path."""
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    cases: list[CaseResult] = []
    calls: dict[str, tuple[float, float]] = {}
    with _tempdir() as tmp:
        db = tmp / "mlflow.db"
        _mlflow_build(db, args.runs, args.metrics, args.steps)
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            if backend == "http":
                with _mlflow_server(db) as url:
                    case, ours, theirs = _mlflow_case(backend, url, tmp, args)
            else:
                case, ours, theirs = _mlflow_case(backend, f"sqlite:///{db}", tmp, args)
            cases.append(case)
            calls[backend] = (ours, theirs)
    for backend, (ours, theirs) in calls.items():
        print(f"mlflow {backend}: MLflow API calls per run: mirror {ours:.2f}, "
              f"baseline {theirs:.2f}")
    return cases

# === end of mlflow ===========================================================================


if __name__ == "__main__":
    sys.exit(main())
