"""Benchmark `export`: `mirror history -o FILE` against the pandas one-liner users write.

Loaded by ``scripts/bench.py`` as a plugin (``python scripts/bench.py export``). One run of
``--steps`` x ``--keys`` history is written through the store's own write path
(:func:`mirror.server.seed.generate`) into a real alembic-migrated store. For CSV and
Parquet, the mirror's streaming writer (:mod:`mirror.api.export`, what ``mirror history``
and ``mirror export`` run) is timed against what the guide suggests a user do:
``pd.DataFrame(list(run.scan_history())).to_csv(...)`` / ``.to_parquet(...)`` on the same
``mirror.Api`` run, which holds every row in memory at once. Target: ratio >= 0.8 (not
much slower than pandas' C writers while using constant memory).

The peak RSS (``VmHWM``) of a fresh interpreter running the real command (``mirror history
RUN -o FILE``), of one that only imports what the command imports (pyarrow imports pandas
on its first conversion) and of one running the pandas baseline is printed for each format;
what the export adds over the imports must stay under 100 MB for a 200,000-step run and
not grow with ``--steps`` (it streams).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import CaseResult, alternate, benchmark

ENTITY = "bench"
RSS_LIMIT_MB = 100.0
FORMATS = ("csv", "parquet")


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=200_000, help="history rows (200000)")
    parser.add_argument("--keys", type=int, default=20, help="metrics per row (20)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="csv,parquet (both)")
    parser.add_argument("--no-rss", action="store_true", help="skip the RSS subprocesses")


_RSS_CHILD = """
import resource, sys
mode, home, db, path, target = sys.argv[1:6]
if mode == "imports":  # the command's interpreter and libraries alone: its floor
    import mirror.api.export, mirror.cli  # noqa: F401
    if target.endswith(".parquet"):  # pyarrow imports pandas on its first pa.array()
        import pandas, pyarrow.parquet  # noqa: F401
elif mode == "mirror":
    from mirror.cli import app
    app(["history", path, "-o", target, "--store", db], standalone_mode=False)
else:
    import pandas as pd
    from mirror import Api
    from mirror.settings import Settings, sqlite_url
    api = Api(settings=Settings(home=home, db_url=sqlite_url(db), entity="bench"))
    frame = pd.DataFrame(list(api.run(path).scan_history()))
    frame.to_csv(target) if target.endswith(".csv") else frame.to_parquet(target)
try:  # VmHWM: this process's own peak (ru_maxrss can carry the parent's over exec)
    with open("/proc/self/status") as fh:
        peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(peak / 1024)
"""


def _peak_rss(mode: str, home: Path, db: Path, path: str, target: Path) -> float:
    """Peak RSS (MB) of a fresh interpreter writing ``target`` the ``mode`` way."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, mode, str(home), str(db), path, str(target)],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    return float(out[-1])


def _build(db: Path, steps: int, keys: int) -> str:
    from mirror.server.seed import generate
    from mirror.store import open_store

    store = open_store(db)
    try:
        gen = generate(store, runs=1, steps=steps, keys=keys, seed=5, entity=ENTITY,
                       project="export")
    finally:
        store.close()
    return f"{ENTITY}/export/{gen.run_ids[0]}"


@benchmark("export", help="mirror history -o FILE (streamed CSV/Parquet) vs pandas "
           "DataFrame(list(scan_history())).to_csv/to_parquet", arguments=_arguments)
def bench_export(args: argparse.Namespace) -> list[CaseResult]:
    import pandas as pd

    from mirror import Api
    from mirror.api.export import history_source, write_history
    from mirror.settings import Settings, sqlite_url

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise SystemExit(f"unknown --formats {sorted(unknown)}; choose from csv, parquet")
    cases: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="mirror-bench-export-") as tmp_name:
        tmp = Path(tmp_name)
        db = tmp / "mirror.db"
        path = _build(db, args.steps, args.keys)
        api = Api(settings=Settings(home=tmp, db_url=sqlite_url(db), entity=ENTITY))
        try:
            run = api.run(path)
            for fmt in formats:
                target = tmp / f"mirror.{fmt}"
                base_target = tmp / f"pandas.{fmt}"

                def mirror(fmt: str = fmt, target: Path = target) -> None:
                    n = write_history(history_source(run), fmt, target)
                    assert n == args.steps, n

                def baseline(fmt: str = fmt, target: Path = base_target) -> None:
                    frame: Any = pd.DataFrame(list(run.scan_history()))
                    if fmt == "csv":
                        frame.to_csv(target, index=False)
                    else:
                        frame.to_parquet(target, index=False)
                    assert len(frame) == args.steps

                cases.append(alternate(
                    CaseResult(f"history -o .{fmt}", args.steps, "rows", target=0.8),
                    args.repeat, lambda m=mirror: m, lambda b=baseline: b))  # type: ignore[misc]
                if not args.no_rss:
                    floor = _peak_rss("imports", tmp, db, path, target)
                    ours = _peak_rss("mirror", tmp, db, path, target)
                    theirs = _peak_rss("pandas", tmp, db, path, base_target)
                    verdict = "ok" if ours - floor < RSS_LIMIT_MB else "OVER"
                    print(f"export .{fmt}: peak RSS `mirror history -o` {ours:.0f} MB = "
                          f"{floor:.0f} MB interpreter + imports + {ours - floor:.0f} MB for "
                          f"the export (limit {RSS_LIMIT_MB:.0f} MB: {verdict}); "
                          f"pandas one-liner {theirs:.0f} MB")
        finally:
            api.close()
    return cases
