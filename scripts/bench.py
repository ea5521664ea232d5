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


if __name__ == "__main__":
    sys.exit(main())
