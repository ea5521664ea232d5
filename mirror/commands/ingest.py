"""``mirror ingest wandb PATH...``: offline wandb runs into the local store, as local runs.

Mounted by ``mirror/cli.py`` as the ``ingest`` group. Progress and the summary table go
to stderr; ``--json`` prints the per-run report on stdout. Exit codes: 0 when every run
was ingested (or was unchanged); 1 when a path is not an offline run, the wandb extra is
missing, or any run failed; 2 for bad usage. A run whose log ends in a truncated or
corrupt record is ingested up to its last good record and reported, not failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mirror.commands.common import emit_json, err, print_error
from mirror.errors import MirrorError

app = typer.Typer(
    name="ingest",
    help="Ingest runs recorded offline into the local store (then `mirror push` them).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _ingest_group() -> None:
    """Ingest runs recorded offline into the local store (then `mirror push` them)."""


@app.command("wandb")
def ingest_wandb(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Offline run folders (wandb/offline-run-*), their run-*.wandb "
                       "logs, or wandb/ folders holding them.", show_default=False),
    ],
    project: Annotated[
        str | None, typer.Option("--project", help="ENTITY/PROJECT (or PROJECT) for every "
                                 "run (default: the run's own, else WANDB_ENTITY/"
                                 "WANDB_PROJECT).")
    ] = None,
    no_queue: Annotated[
        bool, typer.Option("--no-queue", help="Only ingest; do not queue the runs for "
                           "`mirror push`.")
    ] = False,
    store: Annotated[
        Path | None, typer.Option("--store", help="SQLite store file (default: "
                                  "$MIRROR_DB_URL, else $MIRROR_HOME/mirror.db).",
                                  show_default=False)
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Read offline runs (written with WANDB_MODE=offline) into the local store as local
    runs: history, summary, config, system metrics, files, tags, notes, state. Safe to
    re-run: unchanged runs are skipped, a log that grew adds only its new records.
    `mirror push` uploads them later.

    Example: mirror ingest wandb ./wandb --project my-team/my-project
    """
    try:
        report = _run(paths, project, not no_queue, store, json_out)
    except MirrorError as exc:
        print_error(exc)
        raise typer.Exit(1) from None
    if json_out:
        emit_json(report.as_dict())
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(1)


def _run(paths: list[Path], project: str | None, queue: bool, store_path: Path | None,
         quiet: bool) -> Any:
    from mirror.errors import ConfigError
    from mirror.importers.namespace import Namespace
    from mirror.ingest.folders import find_runs
    from mirror.ingest.offline import IngestReport, OfflineIngester, RunIngest
    from mirror.settings import Settings
    from mirror.store import open_store

    try:
        namespace = Namespace.from_path(project) if project else Namespace()
    except ValueError as exc:
        raise ConfigError(str(exc), hint="Use --project ENTITY/PROJECT.") from None
    settings = Settings.from_env()
    if store_path is not None:
        settings = settings.with_store(store_path)
    runs = [run for p in paths for run in find_runs(p)]
    store = open_store(settings)
    try:
        ingester = OfflineIngester(store, namespace=namespace, settings=settings,
                                   queue_upload=queue)
        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                       MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
                       TimeElapsedColumn(), console=err, disable=quiet)
        report = IngestReport()
        with bar:
            task = bar.add_task("ingest", total=len(dict.fromkeys(runs)), detail="")
            for run in dict.fromkeys(runs):
                bar.update(task, detail=run.folder.name)
                outcome: RunIngest = ingester.ingest_run(run)
                report.runs.append(outcome)
                bar.update(task, advance=1, detail=f"{outcome.status}: {run.folder.name}")
        return report
    finally:
        store.close()


def _print_report(report: Any) -> None:
    table = Table(title="wandb offline ingest")
    for col in ("run", "status", "state", "records", "rows", "events", "files"):
        table.add_column(col, justify="left" if col in ("run", "status", "state") else "right")
    for r in report.runs:
        table.add_row(r.path or r.folder, r.status, r.state or "", f"{r.records:,}",
                      f"{r.rows:,}", f"{r.events:,}", f"{r.files:,}")
    err.print(table)
    queued = sum(1 for r in report.runs if r.queued)
    if queued:
        err.print(f"{queued} run(s) queued for upload: `mirror push` sends them.")
    for r in report.runs:
        if r.status == "failed":
            err.print(f"[red]failed[/] {r.folder}: {r.problem}", highlight=False)
        elif r.status == "skipped":
            err.print(f"[yellow]skipped[/] {r.folder}: {r.problem}", highlight=False)
        elif r.problem:
            err.print(f"[yellow]warning[/] {r.folder}: {r.problem} (kept every record "
                       "before it)", highlight=False)


__all__ = ["app", "ingest_wandb"]
