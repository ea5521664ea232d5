"""The ``mirror`` command line: a thin layer over the packages, no business logic.

Exit codes: 0 success; 1 a ``MirrorError`` (the message and its hint are printed); 2 bad
usage (typer/click's own). ``--json`` prints machine-readable output on stdout; human
output and progress go to stderr so pipes stay clean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mirror import __version__
from mirror.commands.common import (
    JsonOpt,
    StoreOpt,
    emit_json,
    err,
    handle_errors,
    out,
    settings_for,
)

app = typer.Typer(
    name="mirror",
    help="An offline-first local mirror of Weights & Biases data.\n\n"
    "Example: mirror sync my-team/my-project && mirror status",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Inspect and migrate the local store.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _mount_commands() -> None:
    """Commands that live in :mod:`mirror.commands`, one module per capability."""
    from mirror.commands.daemon import daemon_cmd
    from mirror.commands.outbox import outbox_app
    from mirror.commands.push import push_cmd

    app.command("daemon")(daemon_cmd)
    app.command("push")(push_cmd)
    app.add_typer(outbox_app, name="outbox")
    from mirror.commands.import_mlflow import app as import_app

    app.add_typer(import_app, name="import", help="Import runs from other systems (MLflow).")
    from mirror.commands.ingest import app as ingest_app

    app.add_typer(ingest_app, name="ingest", help="Ingest offline wandb runs (local runs).")
    from mirror.commands import export, query

    app.command("runs")(query.runs_cmd)
    app.command("history")(query.history_cmd)
    app.command("files")(query.files_cmd)
    app.command("export")(export.export_cmd)


_mount_commands()

def _version_callback(value: bool) -> None:
    if value:
        out.print(f"wandb-mirror {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True,
                     help="Show the version and exit."),
    ] = False,
) -> None:
    """An offline-first local mirror of Weights & Biases data."""


@db_app.command("upgrade")
@handle_errors
def db_upgrade(store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """Create the store, or migrate it to the current schema (after a backup).

    Example: mirror db upgrade --store ~/mirror.db
    """
    from mirror.store import open_store

    s = open_store(settings_for(store))
    try:
        info = {
            "store": s.where,
            "revision": s.revision(),
            "created": s.prepared.created,
            "upgraded_from": s.prepared.upgraded_from,
            "backup": str(s.prepared.backup_path) if s.prepared.backup_path else None,
        }
    finally:
        s.close()
    if json_out:
        emit_json(info)
        return
    if info["created"]:
        err.print(f"created store {info['store']} at revision {info['revision']}")
    elif info["upgraded_from"]:
        err.print(
            f"upgraded {info['store']} from {info['upgraded_from']} to {info['revision']} "
            f"(backup: {info['backup']})"
        )
    else:
        err.print(f"{info['store']} is up to date (revision {info['revision']})")


@db_app.command("info")
@handle_errors
def db_info(store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """Show the store's path, schema revision and row counts.

    Example: mirror db info --json
    """
    from mirror.store import head_revision, open_store

    s = open_store(settings_for(store), create=False, allow_upgrade=False)
    try:
        counts = s.counts()
        info = {
            "store": s.where,
            "revision": s.revision(),
            "head": head_revision(),
            "size_bytes": s.path.stat().st_size if s.path else None,
            "counts": counts,
        }
    finally:
        s.close()
    if json_out:
        emit_json(info)
        return
    table = Table(title=f"{info['store']} (revision {info['revision']})")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in counts.items():
        table.add_row(name, f"{n:,}")
    out.print(table)


@app.command("status")
@handle_errors
def status(store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """Summarise what the mirror holds, and the daemon's state.

    Example: mirror status --json
    """
    from mirror.daemon.status import daemon_status, format_status
    from mirror.outbox.status import outbox_status
    from mirror.store import open_store

    settings = settings_for(store)
    s = open_store(settings, create=False, allow_upgrade=False)
    try:
        counts = s.counts()
        outbox = outbox_status(s)
    finally:
        s.close()
    daemon = daemon_status(settings)
    summary = {
        "store": s.where,
        "projects": counts["project"],
        "runs": counts["run"],
        "history_rows": counts["history"],
        "events": counts["event"],
        "files": counts["run_file"],
        "cached_blobs": counts["blob"],
        "outbox_pending": counts["outbox_op"],
        "conflicts": counts["conflict"],
    }
    if json_out:
        emit_json({**summary, "outbox": outbox, "daemon": daemon})
        return
    table = Table(title=f"wandb-mirror status: {s.where}", show_header=False)
    for key, value in summary.items():
        if key != "store":
            table.add_row(key.replace("_", " "), f"{value:,}")
    out.print(table)
    for key, value in outbox.items():
        if not isinstance(value, dict | list):
            out.print(f"outbox {key.replace('_', ' ')}: {value}", highlight=False, markup=False)
    for line in format_status(daemon):
        out.print(line, highlight=False, markup=False)


FilesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--files",
        help="Which run files to download: all, none, or glob patterns (repeatable).",
        show_default="all",
    ),
]


@app.command("sync")
@handle_errors
def sync_cmd(
    targets: Annotated[
        list[str] | None,
        typer.Argument(help="ENTITY/PROJECT or ENTITY; none: every project synced before."),
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="List every run (anti-entropy): finds deletions.")
    ] = False,
    files: FilesOpt = None,
    max_file_size: Annotated[
        int | None, typer.Option("--max-file-size", help="Skip downloading larger files (bytes).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=32)] = 4,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Pull W&B projects into the local store, incrementally and crash-safely.

    Example: mirror sync my-team/my-project --files 'wandb-*' --files '*.yaml'
    """
    from mirror.progress import SyncProgress
    from mirror.store import open_store
    from mirror.sync.engine import SyncOptions
    from mirror.sync.policy import FilePolicy
    from mirror.sync.runner import sync

    settings = settings_for(store)
    options = SyncOptions(full=full, files=FilePolicy.parse(files, max_file_size),
                          workers=workers)
    s = open_store(settings)
    try:
        with SyncProgress(err, enabled=not json_out) as progress:
            report = sync(s, settings, targets or [], options, progress)
    finally:
        s.close()
    if json_out:
        emit_json(report.as_dict())
    else:
        print_sync_report(report)
    if not report.ok:
        raise typer.Exit(1)


def print_sync_report(report: Any) -> None:
    table = Table(title="sync")
    for col in ("project", "listed", "unchanged", "synced", "failed", "rows", "MB", "s"):
        table.add_column(col, justify="left" if col == "project" else "right")
    for p in report.projects:
        synced = len(p.outcomes) - len(p.failed)
        table.add_row(f"{p.entity}/{p.project}", str(p.listed), str(p.unchanged), str(synced),
                      str(len(p.failed)), f"{p.rows:,}", f"{p.bytes / 1e6:,.1f}",
                      f"{p.seconds:.1f}")
    err.print(table)
    for p in report.projects:
        for o in p.failed:
            err.print(f"[red]failed[/] {p.entity}/{p.project}/{o.run_id}: {o.error}")
        for o in p.outcomes:
            for why in o.skipped:
                err.print(f"[yellow]skipped[/] {p.entity}/{p.project}/{o.run_id}: {why}")
    for target, why in report.errors.items():
        err.print(f"[red]failed[/] {target}: {why}")


@app.command("serve")
@handle_errors
def serve_cmd(
    store: StoreOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless told).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 8765,
    authoritative: Annotated[
        bool,
        typer.Option("--authoritative", help="Apply edits directly (be the upstream)."),
    ] = False,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help="Key clients must send (40+ chars; default: random)."),
    ] = None,
    seed: Annotated[
        str | None, typer.Option("--seed", help="Seed the store first: 'demo'.")
    ] = None,
    faults: Annotated[
        Path | None, typer.Option("--faults", help="JSON fault plan (tests, benchmarks).")
    ] = None,
    request_log: Annotated[
        Path | None, typer.Option("--request-log", help="Append a JSON line per request.")
    ] = None,
) -> None:
    """Serve the store over W&B's HTTP/GraphQL protocol (the official client works on it).

    Example: mirror serve --seed demo --authoritative --port 8765
    """
    from mirror.server.faults import FaultPlan
    from mirror.server.http import serve
    from mirror.server.requestlog import RequestLog
    from mirror.server.seed import seed_demo
    from mirror.store import open_store

    s = open_store(settings_for(store))
    if seed is not None:
        if seed != "demo":
            raise typer.BadParameter("only 'demo' is known", param_hint="--seed")
        res = seed_demo(s)
        err.print(f"seeded {res.entity}/{res.project}: {len(res.run_ids)} runs")
    plan = FaultPlan.from_json(faults) if faults else None
    log = RequestLog(request_log) if request_log else None

    def ready(server: Any) -> None:
        err.print(f"wandb-mirror serving {s.where} at {server.url}"
                  f" ({'authoritative' if authoritative else 'local'} mode). Use:")
        out.print(f"export WANDB_BASE_URL={server.url}", highlight=False)
        out.print(f"export WANDB_API_KEY={server.api_key}", highlight=False)
        err.print("Ctrl-C stops the server.")

    try:
        serve(s, host=host, port=port, api_key=api_key, authoritative=authoritative,
              faults=plan, request_log=log, ready=ready)
    finally:
        s.close()


@app.command("demo")
@handle_errors
def demo_cmd(
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Sync a seeded, bundled W&B-compatible server into the local store, then query it.

    Needs no account and no network: the server runs on 127.0.0.1 over a temporary store.
    Example: mirror demo && mirror status
    """
    from mirror.demo import run_demo

    result = run_demo(settings_for(store), console=err, quiet=json_out)
    if json_out:
        emit_json(result)
    if not result["ok"]:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
