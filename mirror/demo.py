"""`mirror demo`: the whole data path on a laptop with no account and no network.

A seeded W&B-compatible server (``mirror serve --authoritative`` over a temporary store)
plays W&B; the mirror syncs it into the user's local store, syncs again to show that an
unchanged project costs one request, then answers questions through ``mirror.Api``
exactly as a ``wandb.Api`` script would. Last, it edits a run offline (summary, tags,
notes), shows the edit pending in the outbox, pushes it and shows the server's view.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mirror.paths import wandb_time
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
                edited = _edit_and_push(local, local_settings, say)
            finally:
                local.close()
        finally:
            server.stop()
            upstream.close()
    p = first.projects[0] if first.projects else None
    result = {
        "ok": first.ok and second.ok and bool(edited["server_shows_edit"]),
        "store": settings.db_url,
        "runs": p.listed if p else 0,
        "history_rows": p.rows if p else 0,
        "bytes": p.bytes if p else 0,
        "requests_on_resync": requests_again,
        "seconds": round(time.monotonic() - started, 2),
        **answers,
        **edited,
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
        rows = best.history(keys=["loss", "acc"], samples=5, pandas=False)
        hist = Table(title=f"   run.history(keys=['loss', 'acc'], samples=5) of {best.id}")
        for col in ("_step", "loss", "acc"):
            hist.add_column(col)
        for row in rows:
            hist.add_row(str(row.get("_step")), _fmt(row.get("loss")), _fmt(row.get("acc")))
        if not quiet:
            say(hist)
    return {"finished_runs": len(finished), "best_run": best.id if best else None}


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _edit_and_push(store: Any, settings: Settings, say: Any) -> dict[str, Any]:
    """Edit a finished run offline, show it pending, push it, show the server's view."""
    from mirror.api import Api
    from mirror.outbox.replay import PushOptions, push
    from mirror.outbox.status import outbox_status
    from mirror.upstream.client import WandbClient

    api = Api(store=store, settings=settings)
    path = f"{settings.entity}/{settings.project}"
    run = api.runs(path, filters={"state": "finished"}, order="+created_at")[0]
    # Values of this moment: a demo run again over the same store edits for real.
    stamp = wandb_time()
    notes = f"checked offline in the demo at {stamp}"
    run.summary["reviewed_at"] = stamp
    if "reviewed" not in run.tags:
        run.tags.append("reviewed")
    run.notes = notes
    run.update()
    pending = outbox_status(store)["pending"]
    api.flush()
    shown = api.run(f"{path}/{run.id}")
    say(f"6. offline edit of {run.id}: summary.reviewed_at = "
        f"{shown.summary['reviewed_at']}, tags {shown.tags}, notes {shown.notes!r}: shown at "
        f"once, {pending} op(s) pending")
    client = WandbClient(settings)
    try:
        report = push(store, client, PushOptions(max_wait=10.0), base_url=settings.base_url)
        (remote,) = client.get_runs([(settings.entity or "", settings.project or "", run.id)])
    finally:
        client.close()
    calls = sum(report.calls.values())
    say(f"7. mirror push: {report.acked} op(s) acknowledged in {calls} request(s) "
        f"({report.seconds:.2f}s)")
    ok = (remote is not None and (remote.summary or {}).get("reviewed_at") == stamp
          and "reviewed" in remote.tags and remote.notes == notes)
    if remote is not None:
        say(f"8. the server now shows {run.id}: summary.reviewed_at = "
            f"{(remote.summary or {}).get('reviewed_at')}, tags {remote.tags}, "
            f"notes {remote.notes!r}")
    return {"edited_run": run.id, "pending_before_push": pending, "push_requests": calls,
            "push_ok": report.ok, "server_shows_edit": ok}
