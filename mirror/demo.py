"""`mirror demo`: the whole data path on a laptop with no account and no network.

A seeded W&B-compatible server (``mirror serve --authoritative`` over a temporary store)
plays W&B; the mirror syncs it into the user's local store, syncs again to show that an
unchanged project costs one request, then answers questions through ``mirror.Api``
exactly as a ``wandb.Api`` script would.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mirror.progress import SyncProgress
from mirror.server.http import make_server
from mirror.server.seed import seed_demo
from mirror.settings import Settings
from mirror.store import open_store
from mirror.sync.engine import SyncOptions
from mirror.sync.runner import sync


def run_demo(settings: Settings, *, console: Console, quiet: bool = False) -> dict[str, Any]:
    """Seed, serve, sync, sync again, query; returns figures for ``--json``."""
    say = (lambda *a, **k: None) if quiet else console.print
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mirror-demo-") as tmp:
        upstream = open_store(Path(tmp) / "upstream.db")
        seeded = seed_demo(upstream)
        server = make_server(upstream, authoritative=True, port=0)
        server.start_background("mirror-demo-server")
        try:
            say(f"[bold]1.[/] a seeded W&B-compatible server at {server.url} plays W&B: "
                f"{len(seeded.run_ids)} runs, {seeded.history_rows:,} history rows")
            local_settings = Settings(
                home=settings.home, db_url=settings.db_url, base_url=server.url,
                api_key=server.api_key, entity=seeded.entity, project=seeded.project,
            )
            local = open_store(local_settings)
            try:
                target = f"{seeded.entity}/{seeded.project}"
                say(f"[bold]2.[/] sync {target} into {local.where}")
                with SyncProgress(console, enabled=not quiet) as progress:
                    first = sync(local, local_settings, [target], SyncOptions(), progress)
                before = len(server.request_log)
                second = sync(local, local_settings, [target], SyncOptions())
                requests_again = len(server.request_log) - before
                say(f"[bold]3.[/] sync again: nothing changed upstream, "
                    f"{requests_again} request(s), {second.projects[0].rows} rows fetched")
                answers = _query(local, seeded.entity, seeded.project, say, quiet)
            finally:
                local.close()
        finally:
            server.stop()
            upstream.close()
    p = first.projects[0] if first.projects else None
    result = {
        "ok": first.ok and second.ok,
        "store": settings.db_url,
        "runs": p.listed if p else 0,
        "history_rows": p.rows if p else 0,
        "bytes": p.bytes if p else 0,
        "requests_on_resync": requests_again,
        "seconds": round(time.monotonic() - started, 2),
        **answers,
    }
    say(f"done in {result['seconds']:.1f}s. Next: `mirror status`, or in Python "
        "`from mirror import Api; Api().runs(\"mirror/demo\")`.")
    return result


def _query(store: Any, entity: str, project: str, say: Any, quiet: bool) -> dict[str, Any]:
    """A few wandb.Api-style questions, answered offline from the local store."""
    from mirror.api import Api

    api = Api(store=store, overrides={"entity": entity, "project": project})
    path = f"{entity}/{project}"
    finished = api.runs(path, filters={"state": "finished"}, order="-summary_metrics.acc")
    table = Table(title=f"4. api.runs('{path}', filters={{'state': 'finished'}}, "
                  "order='-summary_metrics.acc')")
    for col in ("id", "name", "acc", "loss", "steps"):
        table.add_column(col)
    for run in list(finished[:5]):
        table.add_row(run.id, str(run.name), _fmt(run.summary.get("acc")),
                      _fmt(run.summary.get("loss")), str(run.lastHistoryStep))
    if not quiet:
        say(table)
    sweeps = list(api.project(project, entity).sweeps())
    best = sweeps[0].best_run() if sweeps else None
    if best is not None:
        say(f"5. sweep {sweeps[0].id}: best run {best.id} ({best.name})")
    return {"finished_runs": len(finished), "best_run": best.id if best else None}


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
