"""``mirror export``: a project's runs and their history as files, for pandas, Excel, Spark.

Mounted by ``mirror/cli.py`` as a single command. The work is
:func:`mirror.api.export.export_project` (reads through the offline ``Api``, history
streamed run by run); this module adds the options, a progress bar on stderr and the
summary. Exit codes: 0 everything written; 1 a run's history could not be written (the
others were) or the store could not answer; 2 bad usage (filter, format, path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mirror.commands.query import (
    FilterOpt,
    OrderOpt,
    PathArg,
    StoreOpt,
    err,
    open_api,
    parse_filter,
    project_missing,
    query_errors,
)

__all__ = ["export_cmd"]


@query_errors
def export_cmd(
    path: PathArg,
    to: Annotated[
        Path, typer.Option("--to", help="Folder to write into (created if needed; files of "
                           "the same name are replaced).", show_default=False)
    ],
    filter_json: FilterOpt = None,
    order: OrderOpt = "+created_at",
    fmt: Annotated[
        str, typer.Option("--format", help="History file format: csv or parquet.")
    ] = "csv",
    keys: Annotated[
        list[str] | None,
        typer.Option("--keys", "-k", help="Only history rows holding all these keys, reduced "
                     "to _step and them (comma-separated or repeated).", show_default=False),
    ] = None,
    samples: Annotated[
        int | None, typer.Option("--samples", min=1, help="At most N evenly spaced history "
                                 "rows per run (default: every row, streamed).",
                                 show_default=False)
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    store: StoreOpt = None,
) -> None:
    """Export a project's runs to DIR/runs.csv and each run's history to DIR/history/.

    runs.csv is the import/export guide's runs table: one row per run with the columns
    summary, config (without keys starting with '_') and name, as strict JSON text (NaN
    -> null), plus id. DIR/history/<id>.csv (or .parquet) holds every history row of the
    run, streamed, unless --samples or --keys narrow it.

    Exit codes: 0 ok; 1 a run's history could not be written (the others were), no store
    or unknown project; 2 bad usage (an invalid --filter says what is wrong).

    Examples:

      mirror export my-team/my-project --to ./export

      mirror export my-team/my-project --to ./export --format parquet
      --filter '{"state": "finished"}'

      python -c "import pandas as pd; print(pd.read_csv('export/runs.csv').head())"
    """
    from mirror.api import ProjectNotFoundError
    from mirror.api.export import export_project

    if fmt not in ("csv", "parquet"):
        raise typer.BadParameter(f"{fmt!r} is not one of csv, parquet", param_hint="--format")
    filters = parse_filter(filter_json)
    wanted = [k for entry in keys or [] for k in entry.split(",") if k.strip()] or None
    bar = Progress(TextColumn("[bold]export"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=err, disable=quiet, transient=False)
    task = bar.add_task("export", total=None, detail="")
    rows = 0

    def on_start(total: int) -> None:
        bar.update(task, total=total)

    def on_run(run_id: str, n: int) -> None:
        nonlocal rows
        rows += n
        bar.update(task, advance=1, detail=f"{rows:,} rows, last {run_id}")

    with open_api(store) as api:
        try:
            with bar:
                report = export_project(api, path, to, filters=filters, order=order, fmt=fmt,
                                        keys=wanted, samples=samples, on_start=on_start,
                                        on_run=on_run)
        except ProjectNotFoundError as exc:
            raise project_missing(exc, path, api) from None
    err.print(f"wrote {report.runs_file} ({report.runs} run(s)) and "
              f"{len(report.history_files)} history file(s), {report.rows:,} row(s), "
              f"in {to / 'history'}", highlight=False)
    for run_id, why in report.failed.items():
        err.print(f"[red]failed[/] {run_id}: {why}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)
