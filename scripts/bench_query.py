"""Benchmark `query`: the offline ``mirror.Api`` against plain ``sqlite3`` + ``orjson``.

Loaded by ``scripts/bench.py`` as a plugin (``python scripts/bench.py query``). Data is
written through the store's own write path (:mod:`mirror.store.runs`,
:mod:`mirror.store.history`, :func:`mirror.server.seed.generate`) into a real
alembic-migrated store; each baseline reads the SAME file with the bare libraries.

1. ``scan``: ``run.scan_history()`` of one ``--steps`` x ``--keys`` run against
   ``SELECT row ... ORDER BY step`` + ``orjson.loads`` of every row (target >= 0.7).
   The peak RSS of a fresh interpreter doing the mirror's scan is measured in a
   subprocess (``ru_maxrss``) and printed; it must stay under 200 MB.
2. ``sampled``: ``run.history(keys=["m3"], samples=500)`` against reading every value of
   ``m3`` with plain sqlite3 (``json_extract`` in SQL, the cheapest way; target >= 20x).
3. ``runs``: ``api.runs(path, filters=<2 config + 1 summary predicates>,
   order="-summary_metrics.acc")`` fully iterated over ``--runs`` runs with
   ``--config-keys`` config and ``--summary-keys`` summary keys, reading each run's id
   and ``summary["acc"]``, against loading every run's config and summary JSON,
   filtering and sorting in Python (target: mirror time <= 0.3x, i.e. ratio >= 3.33).
4. ``histories``: ``Runs.histories(keys=["loss"], format="pandas")`` over
   ``--hist-runs`` x ``--hist-steps`` into a DataFrame (rows/s are the figure), against
   plain sqlite3 reading every run's ``loss`` values, sampling 500 the same way and
   building the DataFrame (reported; no target).

Each case runs one untimed round of both sides first, and collects garbage before every
timed call (see ``_measure``). ``--cases scan,sampled,runs,histories`` picks cases; sizes
scale by flags, e.g. ``--steps 20000 --runs 2000 --hist-runs 100`` for a quick look.
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import CaseResult, alternate, benchmark

ENTITY = "bench"
CASES = ("scan", "sampled", "runs", "histories")
RSS_LIMIT_MB = 200.0
# The three predicates of case 3 (2 config + 1 summary) and its order.
RUNS_FILTERS: dict[str, Any] = {
    "config.optimizer": "adam",
    "config.lr": {"$gte": 0.001},
    "summary_metrics.loss": {"$lt": 0.5},
}
RUNS_ORDER = "-summary_metrics.acc"


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma list of {','.join(CASES)} (all)")
    parser.add_argument("--steps", type=int, default=200_000,
                        help="history rows of the scanned run (200000)")
    parser.add_argument("--keys", type=int, default=20, help="metrics per history row (20)")
    parser.add_argument("--runs", type=int, default=10_000, help="runs of case 3 (10000)")
    parser.add_argument("--config-keys", type=int, default=50, help="config keys (50)")
    parser.add_argument("--summary-keys", type=int, default=50, help="summary keys (50)")
    parser.add_argument("--hist-runs", type=int, default=1000, help="runs of case 4 (1000)")
    parser.add_argument("--hist-steps", type=int, default=1000,
                        help="history rows per run of case 4 (1000)")
    parser.add_argument("--no-rss", action="store_true", help="skip the RSS subprocess")


def _measure(case: CaseResult, repeat: int, mirror: Callable[[], Callable[[], Any]],
             baseline: Callable[[], Callable[[], Any]]) -> CaseResult:
    """:func:`alternate` after one untimed round of each (caches, page cache, lazy
    imports), with a full garbage collection before every timed call, so that neither
    side pays for the other's leftovers."""
    mirror()()
    baseline()()

    def settled(setup: Callable[[], Callable[[], Any]]) -> Callable[[], Callable[[], Any]]:
        def prepare() -> Callable[[], Any]:
            fn = setup()
            gc.collect()
            return fn

        return prepare

    return alternate(case, repeat, settled(mirror), settled(baseline))


def _settings(home: Path, db: Path) -> Any:
    from mirror.settings import Settings, sqlite_url

    return Settings(home=home, db_url=sqlite_url(db), entity=ENTITY)


def _connect(db: Path) -> sqlite3.Connection:
    """The baseline's connection: plain sqlite3 on the same file, read-only use."""
    return sqlite3.connect(db, isolation_level=None, check_same_thread=False)


# --- 1 and 2: one long run ---------------------------------------------------------------


def _build_long_run(db: Path, steps: int, keys: int) -> str:
    from mirror.server.seed import generate
    from mirror.store import open_store

    store = open_store(db)
    try:
        gen = generate(store, runs=1, steps=steps, keys=keys, seed=3, entity=ENTITY,
                       project="scan")
    finally:
        store.close()
    return f"{ENTITY}/scan/{gen.run_ids[0]}"


def _run_pk(conn: sqlite3.Connection, path: str) -> int:
    entity, project, run_id = path.split("/")
    (pk,) = conn.execute(
        "SELECT pk FROM run WHERE entity = ? AND project = ? AND run_id = ?",
        (entity, project, run_id),
    ).fetchone()
    return int(pk)


_RSS_CHILD = """
import resource, sys
from mirror import Api
from mirror.settings import Settings, sqlite_url
home, db, path, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
api = Api(settings=Settings(home=home, db_url=sqlite_url(db), entity="bench"))
run = api.run(path)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n = 0
for row in run.scan_history():
    n += 1
assert n == steps, (n, steps)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before / 1024, after / 1024)
"""


def _scan_rss(home: Path, db: Path, path: str, steps: int) -> tuple[float, float]:
    """Peak RSS (MB) of a fresh interpreter before and after a full ``scan_history()``."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(home), str(db), path, str(steps)],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def _long_run_cases(args: argparse.Namespace, tmp: Path, wanted: set[str]) -> list[CaseResult]:
    import orjson

    from mirror import Api

    db = tmp / "scan" / "mirror.db"
    path = _build_long_run(db, args.steps, args.keys)
    api = Api(settings=_settings(tmp, db))
    conn = _connect(db)
    pk = _run_pk(conn, path)
    cases: list[CaseResult] = []
    try:
        run = api.run(path)
        if "scan" in wanted:

            def mirror_scan() -> None:
                n = 0
                for _row in run.scan_history():
                    n += 1
                assert n == args.steps

            def baseline_scan() -> None:
                loads = orjson.loads
                cur = conn.execute("SELECT row FROM history WHERE run_pk = ? ORDER BY step",
                                   (pk,))
                n = 0
                for (text,) in cur:
                    loads(text)
                    n += 1
                assert n == args.steps

            cases.append(_measure(CaseResult("1 scan_history", args.steps, "rows",
                                              target=0.7),
                                   args.repeat, lambda: mirror_scan, lambda: baseline_scan))
            if not args.no_rss:
                before, after = _scan_rss(tmp, db, path, args.steps)
                verdict = "ok" if after < RSS_LIMIT_MB else "OVER"
                print(f"query 1 scan_history: peak RSS {after:.0f} MB after the scan "
                      f"({before:.0f} MB before it; limit {RSS_LIMIT_MB:.0f} MB: {verdict})")
        if "sampled" in wanted:
            want = min(500, args.steps)

            def mirror_sampled() -> None:
                frame = run.history(keys=["m3"], samples=500)
                assert len(frame) == want, len(frame)

            def baseline_sampled() -> None:
                cur = conn.execute(
                    "SELECT step, json_extract(row, '$.m3') FROM history WHERE run_pk = ? "
                    "ORDER BY step", (pk,))
                values = cur.fetchall()
                assert len(values) == args.steps

            cases.append(_measure(CaseResult("2 history(m3, 500)", args.steps, "rows",
                                              target=20.0),
                                   args.repeat, lambda: mirror_sampled,
                                   lambda: baseline_sampled))
    finally:
        conn.close()
        api.close()
    return cases


# --- 3: filtered, ordered runs --------------------------------------------------------------


def _runs_values(i: int, config_keys: int, summary_keys: int) -> tuple[dict[str, Any],
                                                                        dict[str, Any]]:
    """Config and summary of run ``i``: deterministic, ~20% match :data:`RUNS_FILTERS`."""
    import random

    rng = random.Random(i)
    config: dict[str, Any] = {
        "optimizer": rng.choice(["adam", "sgd", "adamw"]),
        "lr": rng.choice([0.0001, 0.0003, 0.001, 0.003, 0.01]),
        "batch_size": rng.choice([16, 32, 64, 128]),
    }
    for k in range(len(config), config_keys):
        config[f"c{k:02d}"] = rng.choice([rng.random(), rng.randint(0, 1000), f"s{k}"])
    summary: dict[str, Any] = {"loss": rng.random(), "acc": rng.random(), "_step": 999}
    for k in range(len(summary), summary_keys):
        summary[f"s{k:02d}"] = rng.random()
    return config, summary


def _build_runs(db: Path, runs: int, config_keys: int, summary_keys: int) -> None:
    from mirror.records import ProjectRecord, RunRecord
    from mirror.store import open_store
    from mirror.store import runs as store_runs

    store = open_store(db)
    try:
        with store.transaction() as s:
            store_runs.save_project(s, ProjectRecord(entity=ENTITY, name="runs"))
            for i in range(runs):
                config, summary = _runs_values(i, config_keys, summary_keys)
                wrapped: dict[str, Any] = {k: {"desc": None, "value": v}
                                           for k, v in config.items()}
                wrapped["_wandb"] = {"desc": None, "value": {"cli_version": "0.22.3"}}
                minute = i % 60
                store_runs.save_run(s, RunRecord(
                    entity=ENTITY, project="runs", run_id=f"r{i:07d}",
                    display_name=f"run-{i}", state="finished", config=wrapped,
                    summary=summary, tags=["bench"], username=ENTITY,
                    created_at=f"2024-01-{1 + i // 1440 % 28:02d}T{i // 60 % 24:02d}:"
                               f"{minute:02d}:00Z",
                ))
    finally:
        store.close()


def _baseline_runs(conn: sqlite3.Connection) -> list[tuple[str, float]]:
    """Load every run's JSON, filter and sort in Python: what a script without SQL does."""
    import orjson

    def unwrap(text: str) -> dict[str, Any]:
        return {k: v.get("value") if isinstance(v, dict) else v
                for k, v in orjson.loads(text).items()}

    rows = conn.execute(
        "SELECT run_id, config, summary FROM run WHERE entity = ? AND project = ? "
        "AND NOT tombstoned", (ENTITY, "runs"),
    ).fetchall()
    matched = []
    for run_id, config_text, summary_text in rows:
        config = unwrap(config_text)
        summary = orjson.loads(summary_text)
        lr, loss, acc = config.get("lr"), summary.get("loss"), summary.get("acc")
        if (config.get("optimizer") == "adam" and isinstance(lr, (int, float))
                and lr >= 0.001 and isinstance(loss, (int, float)) and loss < 0.5):
            matched.append((run_id, acc))
    matched.sort(key=lambda r: -r[1])
    return matched


def _runs_case(args: argparse.Namespace, tmp: Path) -> CaseResult:
    from mirror import Api

    db = tmp / "runs" / "mirror.db"
    _build_runs(db, args.runs, args.config_keys, args.summary_keys)
    conn = _connect(db)
    expected = _baseline_runs(conn)
    print(f"query 3 runs: {len(expected):,} of {args.runs:,} runs match {json.dumps(RUNS_FILTERS)}")
    made: list[Any] = []

    def mirror() -> Callable[[], None]:
        for old in made:  # the previous round's objects must not weigh on this one's GC
            old.close()
        made.clear()
        api = Api(settings=_settings(tmp, db))  # a fresh Api: nothing cached from before
        api.store  # noqa: B018 - open the store untimed
        made.append(api)

        def go() -> None:
            got = [(run.id, run.summary["acc"])
                   for run in api.runs(f"{ENTITY}/runs", filters=RUNS_FILTERS,
                                       order=RUNS_ORDER)]
            assert got == expected, (len(got), len(expected))

        return go

    def baseline() -> Callable[[], None]:
        return lambda: _baseline_runs(conn)

    try:
        return _measure(CaseResult("3 runs(filter, order)", args.runs, "runs",
                                    target=1 / 0.3),
                         args.repeat, mirror, baseline)
    finally:
        conn.close()
        for api in made:
            api.close()


# --- 4: bulk histories ------------------------------------------------------------------------


def _build_histories(db: Path, runs: int, steps: int) -> None:
    import random

    from mirror.records import ProjectRecord, RunRecord
    from mirror.store import history, open_store
    from mirror.store import runs as store_runs

    names = ["loss", "acc", "lr", "_step", "_runtime", "_timestamp"]
    store = open_store(db)
    try:
        with store.transaction() as s:
            store_runs.save_project(s, ProjectRecord(entity=ENTITY, name="hist"))
            for i in range(runs):
                rng = random.Random(i)
                rows = [{"loss": rng.random(), "acc": rng.random(), "lr": 0.001,
                         "_step": step, "_runtime": step * 0.1,
                         "_timestamp": 1_700_000_000 + step * 0.1} for step in range(steps)]
                pk = store_runs.save_run(s, RunRecord(
                    entity=ENTITY, project="hist", run_id=f"h{i:07d}", state="finished",
                    summary=dict(rows[-1]) if rows else {}, tags=[],
                    created_at=f"2024-02-01T00:00:{i % 60:02d}Z",
                    history_line_count=steps, last_step=steps - 1 if steps else None,
                    history_keys={"lastStep": steps - 1, "keys": {
                        n: {"typeCounts": [{"type": "number", "count": steps}]}
                        for n in names}},
                ))
                history.save_history(s, pk, rows)
    finally:
        store.close()


def _histories_case(args: argparse.Namespace, tmp: Path) -> CaseResult:
    import orjson
    import pandas as pd

    from mirror import Api
    from mirror.sampling import sample_evenly

    db = tmp / "hist" / "mirror.db"
    _build_histories(db, args.hist_runs, args.hist_steps)
    per_run = min(500, args.hist_steps)
    total = per_run * args.hist_runs
    conn = _connect(db)

    def baseline_read() -> None:
        runs = conn.execute(
            "SELECT pk, run_id FROM run WHERE entity = ? AND project = ? ORDER BY created_at, "
            "pk", (ENTITY, "hist")).fetchall()
        rows: list[dict[str, Any]] = []
        for pk, run_id in runs:
            texts = conn.execute("SELECT row FROM history WHERE run_pk = ? ORDER BY step",
                                 (pk,)).fetchall()
            found = [(r["_step"], r["loss"]) for r in (orjson.loads(t) for (t,) in texts)
                     if "loss" in r]
            for i in sample_evenly(len(found), 500):
                step, loss = found[i]
                rows.append({"_step": step, "loss": loss, "run_id": run_id})
        frame = pd.DataFrame.from_records(rows)
        assert len(frame) == total

    made: list[Any] = []

    def mirror() -> Callable[[], None]:
        for old in made:
            old.close()
        made.clear()
        api = Api(settings=_settings(tmp, db))  # a fresh Api: nothing cached from before
        api.store  # noqa: B018 - open the store untimed
        made.append(api)

        def go() -> None:
            frame = api.runs(f"{ENTITY}/hist").histories(keys=["loss"], format="pandas")
            assert len(frame) == total, len(frame)

        return go

    try:
        return _measure(CaseResult("4 Runs.histories(loss)", total, "rows", target=0.0),
                         args.repeat, mirror, lambda: baseline_read)
    finally:
        conn.close()
        for api in made:
            api.close()


@benchmark("query", help="mirror.Api reads (scan, sampled history, filtered runs, bulk "
           "histories) vs sqlite3+orjson", arguments=_arguments)
def bench_query(args: argparse.Namespace) -> list[CaseResult]:
    wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
    unknown = wanted - set(CASES)
    if unknown:
        raise SystemExit(f"unknown --cases {sorted(unknown)}; choose from {', '.join(CASES)}")
    cases: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="mirror-bench-query-") as tmp_name:
        tmp = Path(tmp_name)
        if wanted & {"scan", "sampled"}:
            cases += _long_run_cases(args, tmp, wanted)
        if "runs" in wanted:
            cases.append(_runs_case(args, tmp))
        if "histories" in wanted:
            cases.append(_histories_case(args, tmp))
    return cases
