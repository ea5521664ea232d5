"""Benchmark ``log``: the standard wandb SDK logging into ``mirror serve`` (local runs).

Loaded by ``scripts/bench.py`` as a plugin::

    python scripts/bench.py log [--steps 5000] [--keys 20] [--repeat 5]

Each round runs the same SDK script (``wandb.init``, ``--steps`` x ``wandb.log`` of
``--keys`` float metrics, ``finish()``) three times, each in its own process as a user
would, and times it from inside the script:

* **online**: ``WANDB_MODE=online`` against ``mirror serve`` in its default local mode
  (the run becomes a local run with a queued upload);
* **offline**: ``WANDB_MODE=offline``, the SDK writing only its ``.wandb`` file. This is
  what an air-gapped user does today, and the SDK's own floor (no network, no server), so
  the ratio is the share of the SDK's speed the mirror keeps;
* **authoritative**: online against ``mirror serve --authoritative`` (no outbox): the ratio
  isolates what local mode's bookkeeping costs on top of the plain server.

Cases (ratio = mirror throughput / baseline throughput, as everywhere in bench.py):

1. ``log+finish vs offline``: steps/s from the first ``log`` until ``finish()`` returns.
   Target 0.4: most of the gap is the SDK's own online path (case 2 shows the plain
   server costs the same), the rest is the final flush the server stores.
2. ``log+finish vs authoritative``: the same, against the plain server. Target 0.8: local
   mode's bookkeeping (the queued upload) must not cost the logging script noticeably.
3. ``finish -> queryable``: seconds from the ``finish()`` call until ``mirror.Api`` shows
   the finished run with all its steps. The baseline is today's path: offline, then
   ``wandb sync`` of the folder into ``mirror serve``, then the same query. Target 1.0.

The server runs in the benchmark's process (serve_in_thread): the SDK does its work in its
own processes, so the server does not compete with it for the GIL. SDK start-up
(``wandb.init``) is reported but not part of any ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from bench import CaseResult, benchmark

ENTITY = "bench"
PROJECT = "log"
POLL = 0.01

SCRIPT = textwrap.dedent('''
    import json, os, sys, time
    import wandb

    steps, keys, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    names = [f"metric_{k:02d}" for k in range(keys)]
    t_start = time.time()
    run = wandb.init(project="%(project)s", entity="%(entity)s",
                     settings=wandb.Settings(x_disable_stats=True, console="off"))
    t0 = time.time()
    for i in range(steps):
        wandb.log({name: i * 0.001 + k for k, name in enumerate(names)})
    t1 = time.time()
    rid = run.id
    run.finish()
    t2 = time.time()
    with open(out + ".tmp", "w") as fh:  # renamed into place: the reader polls for it
        json.dump({"id": rid, "init": t0 - t_start, "log": t1 - t0, "finish": t2 - t1,
                   "finish_called": t1, "finish_returned": t2}, fh)
    os.replace(out + ".tmp", out)
''') % {"project": PROJECT, "entity": ENTITY}


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=5000, help="wandb.log calls (5000)")
    parser.add_argument("--keys", type=int, default=20, help="metrics per step (20)")
    parser.add_argument("--no-ingest", action="store_true",
                        help="skip the offline-folder ingest cases (`bench.py ingest` alone)")


class _Sdk:
    """Runs the script with the dev venv's wandb, each run in fresh wandb folders."""

    def __init__(self, root: Path, steps: int, keys: int) -> None:
        self.root = root
        self.steps = steps
        self.keys = keys
        self.script = root / "log_script.py"
        self.script.write_text(SCRIPT)
        self.n = 0

    def env(self, url: str | None, api_key: str | None, mode: str, workdir: Path
            ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
        env.update(WANDB_MODE=mode, WANDB_DIR=str(workdir), WANDB_SILENT="true",
                   WANDB_CONFIG_DIR=str(workdir / "config"),
                   WANDB_CACHE_DIR=str(workdir / "cache"), WANDB_DATA_DIR=str(workdir / "data"),
                   WANDB_DISABLE_GIT="true", NO_PROXY="127.0.0.1,localhost")
        if url and api_key:
            env.update(WANDB_BASE_URL=url, WANDB_API_KEY=api_key)
        return env

    def start(self, url: str | None, api_key: str | None, mode: str
              ) -> tuple[subprocess.Popen[bytes], Path, Path]:
        self.n += 1
        workdir = self.root / f"run-{self.n}"
        workdir.mkdir()
        out = workdir / "timings.json"
        proc = subprocess.Popen(
            [sys.executable, str(self.script), str(self.steps), str(self.keys), str(out)],
            env=self.env(url, api_key, mode, workdir), cwd=workdir,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return proc, out, workdir

    @staticmethod
    def finish(proc: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"the SDK script failed ({proc.returncode}): "
                               f"{err.decode(errors='replace')[-3000:]}")
        return dict(json.loads(out.read_text()))


def _queryable(api: Any, run_id: str, steps: int) -> bool:
    """Does ``mirror.Api`` show the run finished, with every step?"""
    from mirror.api.errors import RunNotFoundError

    try:
        run = api.run(f"{ENTITY}/{PROJECT}/{run_id}")
    except RunNotFoundError:
        return False
    return bool(run.state == "finished" and run.lastHistoryStep == steps - 1)


def _wait_queryable(api: Any, run_id: str, steps: int, timeout: float = 300.0) -> float:
    deadline = time.monotonic() + timeout
    while not _queryable(api, run_id, steps):
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} not queryable after {timeout}s")
        time.sleep(POLL)
    return time.time()


@benchmark("log", help="wandb SDK logging into `mirror serve`: steps/s and finish->queryable",
           arguments=_arguments)
def bench_log(args: argparse.Namespace) -> list[CaseResult]:
    from mirror.api import Api
    from mirror.server.testing import serve_in_thread
    from mirror.store import open_store

    if args.steps < 1 or args.keys < 1:
        raise SystemExit("--steps and --keys must be at least 1")
    steps = args.steps
    vs_offline = CaseResult(f"log+finish vs offline ({args.keys} keys)", steps, "steps",
                            target=0.4)
    vs_auth = CaseResult(f"log+finish vs authoritative ({args.keys} keys)", steps, "steps",
                         target=0.8)
    queryable = CaseResult("finish -> queryable vs offline+sync", 1, "runs", target=1.0)
    split: dict[str, list[tuple[float, float, float]]] = {
        "online": [], "offline": [], "authoritative": []}
    with tempfile.TemporaryDirectory(prefix="mirror-bench-log-") as tmp:
        root = Path(tmp)
        local_store = open_store(root / "local" / "mirror.db")
        auth_store = open_store(root / "auth" / "mirror.db")
        sdk = _Sdk(root, steps, args.keys)
        api = Api(store=local_store)
        with serve_in_thread(local_store, authoritative=False, entity=ENTITY) as local, \
                serve_in_thread(auth_store, authoritative=True, entity=ENTITY) as auth:
            for _ in range(args.repeat):
                # online into the local mirror: throughput, then finish -> queryable
                proc, out, _w = sdk.start(local.url, local.api_key, "online")
                # The script writes its timings right after finish() returns; the query
                # starts then, while the SDK process is still shutting down.
                while not out.exists() and proc.poll() is None:
                    time.sleep(POLL / 2)
                if not out.exists():
                    _Sdk.finish(proc, out)  # raises with the script's error output
                seen = _wait_queryable(api, json.loads(out.read_text())["id"], steps)
                timings = _Sdk.finish(proc, out)
                queryable.mirror.append(seen - timings["finish_called"])
                vs_offline.mirror.append(timings["log"] + timings["finish"])
                vs_auth.mirror.append(timings["log"] + timings["finish"])
                split["online"].append((timings["init"], timings["log"], timings["finish"]))

                # offline: the SDK's floor; then `wandb sync` to make it queryable
                proc, out, workdir = sdk.start(None, None, "offline")
                off = _Sdk.finish(proc, out)
                vs_offline.baseline.append(off["log"] + off["finish"])
                split["offline"].append((off["init"], off["log"], off["finish"]))
                folders = list((workdir / "wandb").glob(f"offline-run-*-{off['id']}"))
                sync = subprocess.run(
                    [sys.executable, "-m", "wandb", "sync", str(folders[0])],
                    env=sdk.env(local.url, local.api_key, "online", workdir), cwd=workdir,
                    capture_output=True, timeout=600, check=False)
                if sync.returncode != 0:
                    raise RuntimeError(f"wandb sync failed: {sync.stderr[-3000:]!r}")
                seen = _wait_queryable(api, off["id"], steps)
                queryable.baseline.append(seen - off["finish_called"])

                # online into the authoritative server: the plain server's cost
                proc, out, _w = sdk.start(auth.url, auth.api_key, "online")
                plain = _Sdk.finish(proc, out)
                vs_auth.baseline.append(plain["log"] + plain["finish"])
                split["authoritative"].append((plain["init"], plain["log"], plain["finish"]))
        local_store.close()
        auth_store.close()
    print("median seconds of the SDK script's phases (init is in no ratio):")
    for mode, rows in split.items():
        init, log, fin = (statistics.median(col) for col in zip(*rows, strict=True))
        print(f"  {mode:>13}: init {init:.2f}  log {log:.2f}  finish {fin:.2f}")
    cases = [vs_offline, vs_auth, queryable]
    if not args.no_ingest:  # the second half: offline folders, at the same size
        from bench_ingest import bench_ingest

        cases += bench_ingest(argparse.Namespace(**{**vars(args), "no_sync": False}))
    return cases
