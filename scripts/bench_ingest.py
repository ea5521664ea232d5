"""Benchmark ``ingest``: ``mirror ingest wandb`` of an offline run folder (records/s, steps/s).

Loaded by ``scripts/bench.py`` as a plugin::

    python scripts/bench.py ingest [--steps 10000] [--keys 20] [--repeat 5]

The folder is written once, untimed, by the real SDK (``WANDB_MODE=offline``, ``--steps`` x
``wandb.log`` of ``--keys`` float metrics, then ``finish()``), in its own process. Each round
ingests it into a fresh store. Cases (ratio = mirror throughput / baseline throughput):

1. ``ingest vs parse floor`` (records/s): the baseline only frames the transaction log and
   parses every record with the SDK's protobuf classes: no JSON decoding, no store. It is
   the floor of any reader of this format in Python, so the ratio is the share of that
   speed the whole ingest keeps (decoding values exactly, folding summary/config, writing
   rows, files, cursor and upload op in one transaction). Target 0.05: a guard against
   regressions (most of the gap is reading protobuf fields through upb's wrappers, ~2 us
   per history/summary item, two items per metric per step).
2. ``ingest vs wandb sync`` (steps/s): the baseline is today's way to make an offline run
   queryable: ``wandb sync FOLDER`` (the SDK's own uploader, in its process) into a fresh
   ``mirror serve`` on 127.0.0.1 (local mode, in this process), until the command returns.
   Same outcome (the run in a store, queryable, queued for upload), different path; the
   SDK's side is compiled Go (wandb-core), ours is Python, so the target is 0.75: about
   as fast, while adding what sync does not (exact values, one crash-safe transaction,
   incremental re-reads).
3. ``grown log: tail only`` (records/s of the tail): re-ingesting a log that grew by its
   last 10% (the cursor's prefix digest checked, only new records read) against ingesting
   the whole grown log into a fresh store.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import CaseResult, alternate, benchmark

_SCRIPT = textwrap.dedent("""
    import sys
    import wandb

    steps, keys = int(sys.argv[1]), int(sys.argv[2])
    run = wandb.init(project="bench-ingest", entity="bench", config={"keys": keys})
    for i in range(steps):
        wandb.log({f"metric_{k}": (i * 31 + k) % 1000 / 7.0 for k in range(keys)})
    run.finish()
""")


def _sdk_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIRROR_"))}
    env.update(WANDB_DIR=str(root), WANDB_CONFIG_DIR=str(root / "wandb-config"),
               WANDB_CACHE_DIR=str(root / "wandb-cache"), WANDB_DATA_DIR=str(root / "data"),
               WANDB_SILENT="true", WANDB_DISABLE_GIT="true", NO_PROXY="127.0.0.1,localhost",
               **extra)
    return env


def _offline_run(root: Path, steps: int, keys: int) -> Path:
    """Log the run offline with the real SDK; returns its ``offline-run-*`` folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "script.py").write_text(_SCRIPT)
    subprocess.run([sys.executable, "script.py", str(steps), str(keys)], cwd=root, check=True,
                   env=_sdk_env(root, WANDB_MODE="offline"), stdout=subprocess.DEVNULL)
    [folder] = glob.glob(str(root / "wandb" / "offline-run-*"))
    return Path(folder)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=10_000, help="logged steps (10000)")
    parser.add_argument("--keys", type=int, default=20, help="metrics per step (20)")
    parser.add_argument("--no-sync", action="store_true",
                        help="skip the `wandb sync` baseline (it needs the SDK's wandb-core)")


@benchmark("ingest", help="mirror ingest wandb of an offline run folder, records/s and steps/s",
           arguments=_arguments)
def bench_ingest(args: argparse.Namespace) -> list[CaseResult]:
    from mirror.ingest import OfflineIngester, txlog
    from mirror.ingest.folders import find_runs
    from mirror.ingest.records import parser
    from mirror.server.testing import serve_in_thread
    from mirror.store import Store, open_store

    with tempfile.TemporaryDirectory(prefix="mirror-bench-ingest-") as tmp:
        root = Path(tmp)
        folder = _offline_run(root / "sdk", args.steps, args.keys)
        [run] = find_runs(folder)
        n_records = len(_record_ends(run.log))
        rounds = iter(range(1_000_000))
        stores: list[Store] = []

        def fresh_store() -> Store:
            for s in stores:
                s.close()
            stores.clear()
            s = open_store(root / "db" / f"{next(rounds)}" / "mirror.db")
            stores.append(s)
            return s

        def ingest_whole() -> Callable[[], Any]:
            store = fresh_store()
            return lambda: _check(OfflineIngester(store).ingest_run(run), args.steps)

        def parse_floor() -> Callable[[], Any]:
            parse = parser()

            def go() -> None:
                _, frames = txlog.scan(run.log)
                for frame in frames:
                    parse(frame.data)

            return go

        whole = alternate(CaseResult("ingest vs parse floor", n_records, "records",
                                     target=0.05), args.repeat, ingest_whole, parse_floor)
        cases = [whole]

        if not args.no_sync:
            servers: list[Any] = []

            def wandb_sync() -> Callable[[], Any]:
                for srv in servers:
                    srv.stop()
                servers.clear()
                srv = serve_in_thread(fresh_store(), authoritative=False, entity="bench")
                servers.append(srv)
                (root / "sync").mkdir(exist_ok=True)
                env = _sdk_env(root / "sync", WANDB_BASE_URL=srv.url,
                               WANDB_API_KEY=srv.api_key)
                wandb_cli = [sys.executable, "-m", "wandb", "sync", str(run.folder)]
                return lambda: subprocess.run(wandb_cli, env=env, check=True,
                                              stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)

            try:
                sync = alternate(CaseResult("ingest vs wandb sync", args.steps, "steps",
                                            target=0.75), args.repeat, ingest_whole,
                                 wandb_sync)
            finally:
                for srv in servers:
                    srv.stop()
            cases.append(sync)

        # the grown log: the first 90% ingested (untimed), then the whole log
        full = run.log.read_bytes()
        grown = root / "grown"
        spans = _record_ends(run.log)
        cut = spans[int(len(spans) * 0.9)]

        def grown_tail() -> Callable[[], Any]:
            store = fresh_store()
            if grown.exists():
                shutil.rmtree(grown)
            shutil.copytree(run.folder, grown)
            [copy] = find_runs(grown)
            copy.log.write_bytes(full[:cut])
            ingester = OfflineIngester(store)
            ingester.ingest_run(copy)
            copy.log.write_bytes(full)
            return lambda: _expect(ingester.ingest_run(copy), "grew")

        def grown_whole() -> Callable[[], Any]:
            store = fresh_store()
            if grown.exists():
                shutil.rmtree(grown)
            shutil.copytree(run.folder, grown)
            [copy] = find_runs(grown)
            return lambda: _expect(OfflineIngester(store).ingest_run(copy), "new")

        tail = len(spans) - int(len(spans) * 0.9)
        cases.append(alternate(CaseResult("grown log: tail only", tail, "records", target=3.0),
                               args.repeat, grown_tail, grown_whole))
        for s in stores:
            s.close()
        steps = CaseResult("ingest (steps/s)", args.steps, "steps", list(whole.mirror),
                           list(whole.baseline), target=whole.target)
        return [*cases[:1], steps, *cases[1:]]


def _record_ends(log: Path) -> list[int]:
    from mirror.ingest import txlog

    _, frames = txlog.scan(log)
    return [f.end for f in frames]


def _check(outcome: Any, steps: int) -> None:
    if outcome.status != "new" or outcome.rows != steps:
        raise RuntimeError(f"the ingest went wrong: {outcome}")


def _expect(outcome: Any, status: str) -> None:
    if outcome.status != status:
        raise RuntimeError(f"expected {status}: {outcome}")
