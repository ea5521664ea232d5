"""The ``mirror`` command line: a thin layer over the packages, no business logic.

Exit codes: 0 success; 1 a ``MirrorError`` (the message and its hint are printed); 2 bad
usage (typer/click's own). ``--json`` prints machine-readable output on stdout; human
output and progress go to stderr so pipes stay clean.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from mirror import __version__
from mirror.errors import MirrorError
from mirror.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

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

StoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help="SQLite store file (default: $MIRROR_DB_URL, else $MIRROR_HOME/mirror.db).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


def settings_for(store: Path | None) -> Settings:
    """Build settings at the edge: the environment, then the command's options."""
    settings = Settings.from_env()
    return settings.with_store(store) if store is not None else settings


def handle_errors(fn: F) -> F:
    """Print ``MirrorError``s as one clear message plus hint, exit 1; no traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MirrorError as exc:
            err.print(f"[bold red]error:[/] {exc.message}", highlight=False, markup=True)
            if exc.hint:
                err.print(f"[yellow]hint:[/] {exc.hint}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


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
    """Summarise what the mirror holds: projects, runs, history, files, pending edits.

    Example: mirror status --json
    """
    from mirror.store import open_store

    s = open_store(settings_for(store), create=False, allow_upgrade=False)
    try:
        counts = s.counts()
    finally:
        s.close()
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
        emit_json(summary)
        return
    table = Table(title=f"wandb-mirror status: {s.where}", show_header=False)
    for key, value in summary.items():
        if key != "store":
            table.add_row(key.replace("_", " "), f"{value:,}")
    out.print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
