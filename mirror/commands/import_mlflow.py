"""``mirror import mlflow``: MLflow runs into the local store, then up to W&B.

Mounted by ``mirror/cli.py`` as the ``import`` group. Progress goes to stderr, the summary
table too; ``--json`` prints the full per-run report on stdout. Exit code 1 when any run
failed to import or to upload (a run whose upload is merely pending because the server is
unreachable is not a failure: ``mirror push`` sends it later).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mirror.commands.common import emit_json, err, print_error
from mirror.errors import MirrorError

app = typer.Typer(
    name="import",
    help="Import runs from other tracking systems into the mirror (then upload them).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _import_group() -> None:
    """Import runs from other tracking systems into the mirror (then upload them)."""


@app.command("mlflow")
def import_mlflow(
    tracking_uri: Annotated[
        str, typer.Option("--tracking-uri", help="MLflow tracking URI: http(s)://..., "
                          "sqlite:///mlflow.db, file:./mlruns, databricks.")
    ],
    experiment: Annotated[
        list[str] | None,
        typer.Option("--experiment", help="Experiment name or id (repeatable; default all)."),
    ] = None,
    filter_string: Annotated[
        str | None, typer.Option("--filter", help="MLflow search filter, e.g. "
                                 "\"metrics.acc > 0.9 and tags.team = 'ml'\".")
    ] = None,
    no_artifacts: Annotated[
        bool, typer.Option("--no-artifacts", help="Skip artifacts and logged models.")
    ] = False,
    entity: Annotated[
        str | None, typer.Option("--entity", help="W&B entity (default: WANDB_ENTITY, else "
                                 "the API key's owner).")
    ] = None,
    project: Annotated[
        str | None, typer.Option("--project", help="W&B project for every run (default: "
                                 "one per MLflow experiment, named after it).")
    ] = None,
    no_upload: Annotated[
        bool, typer.Option("--no-upload", help="Only import into the local store.")
    ] = False,
    include_deleted: Annotated[
        bool, typer.Option("--include-deleted", help="Also import deleted runs/experiments.")
    ] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N runs.")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, max=32, help="Runs imported at once.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Refetch runs even if they look unchanged.")
    ] = False,
    remap_deleted: Annotated[
        bool, typer.Option("--remap-deleted", help="Give a new W&B id to runs whose id was "
                           "deleted on W&B (HTTP 409) and upload them again.")
    ] = False,
    store: Annotated[
        Path | None, typer.Option("--store", help="SQLite store file (default: "
                                  "$MIRROR_DB_URL, else $MIRROR_HOME/mirror.db).",
                                  show_default=False)
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Import MLflow runs (params, metrics with every point, tags, artifacts) into the
    local store, then upload them to W&B. Safe to re-run: unchanged runs are skipped.

    Example: mirror import mlflow --tracking-uri http://127.0.0.1:5000
    --experiment churn --entity my-team --project from-mlflow
    """
    try:
        report = _run(tracking_uri, experiment, filter_string, not no_artifacts, entity,
                      project, not no_upload, include_deleted, limit, workers, force,
                      remap_deleted, store, json_out)
    except MirrorError as exc:
        print_error(exc)
        raise typer.Exit(1) from None
    if json_out:
        emit_json(report.as_dict())
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(1)


def _run(tracking_uri: str, experiments: list[str] | None, filter_string: str | None,
         artifacts: bool, entity: str | None, project: str | None, upload: bool,
         include_deleted: bool, limit: int | None, workers: int | None, force: bool,
         remap_deleted: bool, store: Path | None, quiet: bool) -> Any:
    from mirror.importers.mlflow import MlflowImporter, RunReport
    from mirror.importers.namespace import Namespace
    from mirror.settings import Settings

    settings = Settings.from_env()
    if store is not None:
        settings = settings.with_store(store)
    with MlflowImporter(mlflow_tracking_uri=tracking_uri, settings=settings) as importer:
        ids = importer.resolve_experiments(experiments) if experiments else None
        runs = list(importer.collect_runs(limit=limit, experiment_ids=ids,
                                          filter_string=filter_string,
                                          include_deleted=include_deleted))
        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                       MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
                       TimeElapsedColumn(), console=err, disable=quiet)
        lock = threading.Lock()
        with bar:
            tasks = {"import": bar.add_task("import", total=len(runs), detail=""),
                     "upload": bar.add_task("upload", total=None, detail="", visible=False)}

            def progress(phase: str, r: RunReport) -> None:
                with lock:
                    bar.update(tasks[phase], advance=1, visible=True,
                               detail=f"{r.status if phase == 'import' else r.upload}: "
                               f"{r.run_name or r.mlflow_run_id}")

            return importer.import_runs(
                runs, artifacts=artifacts, namespace=Namespace(entity, project),
                upload=upload, max_workers=workers, force=force,
                remap_deleted=remap_deleted, progress=progress)


def _print_report(report: Any) -> None:
    counts = report.counts()
    table = Table(title="mlflow import")
    table.add_column("outcome")
    table.add_column("runs", justify="right")
    for key in ("imported", "updated", "unchanged", "skipped", "failed", "upload_uploaded",
                "upload_unchanged", "upload_pending", "upload_failed"):
        if counts.get(key):
            table.add_row(key.replace("_", " "), f"{counts[key]:,}")
    rows = sum(r.rows for r in report.runs)
    files = sum(r.files for r in report.runs if r.status in ("imported", "updated"))
    table.add_row("history rows written", f"{rows:,}")
    table.add_row("files (imported runs)", f"{files:,}")
    err.print(table)
    for r in report.runs:
        name = f"{r.run_name or ''} ({r.mlflow_run_id})"
        if r.status == "failed":
            err.print(f"[red]failed[/] {name}: {r.reason}", highlight=False)
        elif r.status == "skipped":
            err.print(f"[yellow]skipped[/] {name}: {r.reason}", highlight=False)
        if r.upload in ("failed", "pending"):
            color = "red" if r.upload == "failed" else "yellow"
            err.print(f"[{color}]upload {r.upload}[/] {name}: {r.upload_reason}",
                       highlight=False)
        for w in r.warnings:
            err.print(f"[yellow]warning[/] {name}: {w}", highlight=False)


__all__ = ["app", "import_mlflow"]
