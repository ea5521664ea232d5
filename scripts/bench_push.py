"""Benchmark `push`: 1,000 offline edits over 100 runs, replayed by the outbox.

Loaded by ``scripts/bench.py`` as a plugin (``python scripts/bench.py push``). Upstream is
generated deterministically and served by the project's own W&B-compatible server in a
separate process (its threads must not compete with the client for this interpreter's
GIL; the official client works in its own Go process too), with its request log on disk.

* mirror: the edits are made offline through ``mirror.Api`` (untimed: they are local
  writes), then ``push`` is timed: coalescing, the batched fresh read, the merge, aliased
  ``upsertBucket`` writes.
* baseline: the official ``wandb`` client makes the same edits one by one, each committed
  as a script would (``run.summary.update()`` for a summary key, ``run.update()`` for
  config, tags and notes), against the same server.

Each case reports wall time; the case names carry the HTTP requests each side sent (from
the server's request log), which is the figure the batching claim is about.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import CaseResult, alternate, benchmark

ENTITY, PROJECT = "bench", "push"


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=100, help="runs edited (100)")
    parser.add_argument("--edits", type=int, default=10, help="edits per run (10)")


def _edits(per_run: int) -> list[tuple[str, str]]:
    """The edit plan of one run: ``(kind, key)``; mostly summary keys, as in practice."""
    plan: list[tuple[str, str]] = [("tags", "t"), ("notes", "notes"), ("config", "lr"),
                                   ("config", "wd")]
    plan += [("summary", f"s{k}") for k in range(max(0, per_run - len(plan)))]
    return plan[:per_run]


def _apply(run: Any, kind: str, key: str, value: Any) -> None:
    """One edit, in the spelling both APIs share (mirror.Api is a drop-in)."""
    if kind == "summary":
        run.summary[key] = value
    elif kind == "config":
        run.config[key] = value
    elif kind == "tags":
        run.tags = [t for t in run.tags if not t.startswith("t-")] + [f"t-{value}"]
    else:
        run.notes = f"note {value}"


def _commit(run: Any, kind: str) -> None:
    if kind == "summary":
        run.summary.update()
    else:
        run.update()


@contextmanager
def _server(root: Path, runs: int) -> Iterator[tuple[str, str, Path, list[str]]]:
    """A generated upstream behind `mirror serve` in its own process."""
    from bench_net import server_process

    from mirror.server.seed import generate
    from mirror.store import open_store

    db = root / "upstream" / "mirror.db"
    up = open_store(db)
    gen = generate(up, runs=runs, steps=3, keys=5, seed=1, entity=ENTITY, project=PROJECT)
    up.close()
    with server_process(db, root) as srv:
        yield srv.url, srv.api_key, srv.log_path, gen.run_ids


def _requests(log: Path, start: int) -> tuple[int, dict[str, int]]:
    """Requests logged since line ``start``: total and per operation."""
    lines = log.read_text(encoding="utf-8").splitlines()[start:] if log.exists() else []
    ops: dict[str, int] = {}
    for line in lines:
        entry = json.loads(line)
        name = (entry.get("operations") or [entry.get("route")])[0] or entry.get("route")
        ops[name] = ops.get(name, 0) + 1
    return len(lines), ops


def _lines(log: Path) -> int:
    return len(log.read_text(encoding="utf-8").splitlines()) if log.exists() else 0


@benchmark("push", help="1,000-edit push (outbox) vs the official client editing one by one",
           arguments=_arguments)
def bench_push(args: argparse.Namespace) -> list[CaseResult]:
    import wandb

    import mirror.api as mapi
    from mirror.outbox.replay import PushOptions, push
    from mirror.settings import Settings
    from mirror.store import open_store
    from mirror.sync.engine import SyncOptions
    from mirror.sync.runner import sync
    from mirror.upstream.client import WandbClient

    plan = _edits(args.edits)
    n_edits = len(plan) * args.runs
    with tempfile.TemporaryDirectory(prefix="mirror-bench-push-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ["WANDB_CONFIG_DIR"] = str(root / "wandb-config")
        os.environ["WANDB_CACHE_DIR"] = str(root / "wandb-cache")
        with _server(root, args.runs) as (url, key, log, run_ids):
            generation = [0]
            seen: dict[str, tuple[int, dict[str, int]]] = {}

            def mirror() -> Callable[[], None]:
                generation[0] += 1
                g = generation[0]
                db = root / f"local-{g}" / "mirror.db"
                store = open_store(db)
                settings = Settings(home=db.parent, db_url=store.url, base_url=url,
                                    api_key=key)
                client = WandbClient(settings)
                report = sync(store, settings, [f"{ENTITY}/{PROJECT}"], SyncOptions(),
                              client=client)
                assert report.ok
                api = mapi.Api(store=store, settings=settings)
                for run_id in run_ids:
                    run = api.run(f"{ENTITY}/{PROJECT}/{run_id}")
                    for kind, name in plan:
                        _apply(run, kind, name, g * 1000)
                        _commit(run, kind)

                def go() -> None:
                    start = _lines(log)
                    out = push(store, client, PushOptions(), base_url=url)
                    assert out.ok and out.acked == len(plan) * args.runs - out.coalesced, \
                        out.as_dict()
                    seen["mirror"] = _requests(log, start)
                    client.close()
                    store.close()

                return go

            api = wandb.Api(overrides={"base_url": url}, api_key=key, timeout=60)

            def official() -> Callable[[], None]:
                generation[0] += 1
                g = generation[0]

                def go() -> None:
                    start = _lines(log)
                    for run_id in run_ids:
                        run = api.run(f"{ENTITY}/{PROJECT}/{run_id}")
                        for kind, name in plan:
                            _apply(run, kind, name, g * 1000)
                            _commit(run, kind)
                    seen["official"] = _requests(log, start)

                return go

            case = CaseResult(f"push {n_edits} edits / {args.runs} runs", n_edits, "edits",
                              target=10.0)
            alternate(case, args.repeat, mirror, official)
    mine, theirs = seen["mirror"], seen["official"]
    upserts = theirs[1].get("UpsertBucket", 0)
    case.name += (f" (requests: mirror {mine[0]} {dict(sorted(mine[1].items()))}; official "
                  f"{theirs[0]}, {upserts} upsertBucket; {theirs[0] / max(1, mine[0]):.0f}x"
                  " fewer)")
    print(f"push: mirror sent {mine[0]} requests {mine[1]}; the official client "
          f"{theirs[0]} ({upserts} upsertBucket)")
    return [case]
