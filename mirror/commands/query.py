"""``mirror runs``, ``mirror history`` and ``mirror files``: query the local store.

Mounted by ``mirror/cli.py`` as single commands. Every read goes through the offline
:class:`mirror.api.Api` (and :mod:`mirror.api.export` for the file formats), so the CLI
answers exactly what a script using ``mirror.Api`` gets. Data goes to stdout (or ``-o
FILE``); errors and hints go to stderr.

Exit codes: 0 success; 1 the store could not answer (no store, unknown project or run, a
write failed); 2 bad usage: an option typer rejects, a ``--filter`` that is not JSON or
not a valid filter, an unknown ``--columns`` entry, a malformed run path.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from mirror.commands.common import F, StoreOpt, err, out, print_error
from mirror.errors import FilterError, MirrorError

if TYPE_CHECKING:
    from mirror.api import Api

__all__ = ["files_cmd", "history_cmd", "runs_cmd"]

USAGE_EXIT = 2


def parse_filter(value: str | None) -> dict[str, Any] | None:
    """``--filter``: a JSON object (MongoDB-style), checked for syntax before any read."""
    if value is None or not value.strip():
        return None
    try:
        doc = json.loads(value)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            """example: --filter '{"state": "finished", "config.lr": {"$gt": 0.01}}'""",
            param_hint="--filter",
        ) from None
    if not isinstance(doc, dict):
        raise typer.BadParameter(
            f"must be a JSON object, got {type(doc).__name__}; "
            """example: --filter '{"state": "finished"}'""",
            param_hint="--filter",
        )
    return doc


PathArg = Annotated[
    str, typer.Argument(help="ENTITY/PROJECT (or PROJECT with WANDB_ENTITY set).",
                        metavar="PATH", show_default=False),
]
RunPathArg = Annotated[
    str, typer.Argument(help="ENTITY/PROJECT/RUN_ID (or a run URL path).", metavar="RUN_PATH",
                        show_default=False),
]
FilterOpt = Annotated[
    str | None,
    typer.Option("--filter", "-f", help="""MongoDB-style JSON filter, as wandb.Api().runs
    takes it, e.g. '{"state": "finished", "config.lr": {"$gt": 0.01}}'.""",
                 show_default=False),
]
OrderOpt = Annotated[
    str, typer.Option("--order", help="'+field' or '-field': created_at, name, state, "
                      "config.<key>, summary_metrics.<key>... (runs without it come last).")
]


def _fail(exc: MirrorError, code: int) -> typer.Exit:
    print_error(exc)
    return typer.Exit(code)


def query_errors(fn: F) -> F:
    """Errors as one message plus hint on stderr, and an exit code that says what failed:
    2 for a bad filter, column, path or option value (usage), 1 for anything else."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mirror.api.export import ColumnError

        try:
            return fn(*args, **kwargs)
        except (FilterError, ColumnError) as exc:
            raise _fail(exc, USAGE_EXIT) from None
        except MirrorError as exc:
            raise _fail(exc, 1) from None
        except ValueError as exc:  # malformed run path, keys with a non-default stream...
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(USAGE_EXIT) from None
        except BrokenPipeError:  # `mirror history ... | head`: the reader had enough
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None

    return wrapper  # type: ignore[return-value]


def open_api(store: Path | None) -> Api:
    """The offline ``Api`` over the store the environment (or ``--store``) names."""
    from mirror.api import Api
    from mirror.settings import Settings

    settings = Settings.from_env()
    return Api(settings=settings.with_store(store) if store is not None else settings)


def project_missing(exc: MirrorError, path: str, api: Api) -> MirrorError:
    """An unknown project, said with its full path and the sync command that fetches it."""
    return type(exc)(f"project {path!r} is not in the local store ({api.store.where})",
                     hint=f"Check the path, or run `mirror sync {path}` while online.")


def find_run(api: Api, run_path: str) -> Any:
    """``api.run(run_path)``; an unknown run names the ``mirror sync`` that would fetch it."""
    from mirror.api import RunNotFoundError
    from mirror.api.api import parse_path

    try:
        return api.run(run_path)
    except RunNotFoundError as exc:
        try:
            entity, project, run_id = parse_path(run_path, api.default_entity,
                                                 api.settings.get("project"))
        except ValueError:
            raise exc from None
        raise RunNotFoundError(
            f"run {entity}/{project}/{run_id} is not in the local store ({api.store.where})",
            hint=f"Check the run id (`mirror runs {entity}/{project}` lists them), or run "
                 f"`mirror sync {entity}/{project}` while online to fetch it.",
        ) from None


@contextmanager
def output_to(path: Path | None) -> Iterator[IO[str]]:
    """``-o FILE`` (written to a temp file, renamed into place at the end) or stdout."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    from mirror.api.export import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        yield fh


# --- mirror runs -------------------------------------------------------------------------

DEFAULT_COLUMNS = ["id", "name", "state", "created_at"]
DEFAULT_DATA_COLUMNS = [*DEFAULT_COLUMNS, "tags", "config", "summary"]


@query_errors
def runs_cmd(
    path: PathArg,
    filter_json: FilterOpt = None,
    order: OrderOpt = "+created_at",
    columns: Annotated[
        list[str] | None,
        typer.Option("--columns", "-c", help="Columns to show, comma-separated or repeated: "
                     "run attributes (id, name, state, created_at, tags, group, job_type, "
                     "url, ...), config, config.<key>, summary, summary.<key> (nested keys "
                     "dotted). Default: id,name,state,created_at (csv/json also add "
                     "tags,config,summary).", show_default=False),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="table (for people), csv, or json (one JSON "
                          "array of objects, what scripts expect).")
    ] = "table",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most N runs.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to FILE instead of stdout "
                                  "(csv/json).", show_default=False)
    ] = None,
    store: StoreOpt = None,
) -> None:
    """List a project's runs from the local store: filter, order, pick columns.

    Filters and orders are wandb.Api().runs()'s (MongoDB-style, compiled to SQL). JSON
    output is strict: NaN and Infinity are written as null.

    Exit codes: 0 ok; 1 no store or unknown project; 2 bad --filter/--order/--columns.

    Examples:

      mirror runs my-team/my-project

      mirror runs my-team/my-project --filter '{"state": "finished"}'
      --order -summary_metrics.acc -c id,name,config.lr,summary.acc

      mirror runs my-team/my-project --format csv -o runs.csv
    """
    from mirror.api.export import check_columns, display_cell, write_runs_csv, write_runs_json

    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter(f"{fmt!r} is not one of table, csv, json",
                                 param_hint="--format")
    filters = parse_filter(filter_json)
    wanted = [c for entry in columns or [] for c in entry.split(",") if c.strip()]
    cols = check_columns(wanted or (DEFAULT_COLUMNS if fmt == "table" else DEFAULT_DATA_COLUMNS))
    with open_api(store) as api:
        from mirror.api import ProjectNotFoundError

        runs = api.runs(path, filters=filters, order=order)
        try:
            total = len(runs)
        except ProjectNotFoundError as exc:
            raise project_missing(exc, path, api) from None
        selected = runs[:limit] if limit is not None else runs
        if fmt == "table":
            table = Table(title=f"{path}: {min(total, limit or total)} of {total} run(s)")
            for c in cols:
                table.add_column(c, overflow="fold")
            from mirror.api.export import run_value

            for run in selected:
                table.add_row(*[Text(display_cell(run_value(run, c))) for c in cols])
            out.print(table)
            return
        with output_to(output) as fh:
            writer = write_runs_csv if fmt == "csv" else write_runs_json
            n = writer(selected, cols, fh)
        if output is not None:
            err.print(f"wrote {n} run(s) to {output}", highlight=False)


# --- mirror history ----------------------------------------------------------------------


@query_errors
def history_cmd(
    run_path: RunPathArg,
    keys: Annotated[
        list[str] | None,
        typer.Option("--keys", "-k", help="Only rows holding all these keys, reduced to "
                     "_step and them (comma-separated or repeated).", show_default=False),
    ] = None,
    samples: Annotated[
        int | None, typer.Option("--samples", min=1, help="At most N evenly spaced rows "
                                 "(first and last kept), as run.history(samples=N). "
                                 "Default: every row, streamed.", show_default=False)
    ] = None,
    stream: Annotated[
        str, typer.Option("--stream", help="default (metrics) or events (system metrics: "
                          "CPU, memory, GPU...).")
    ] = "default",
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv, json (JSON lines: one strict JSON "
                                 "object per row, NaN -> null) or parquet (needs -o). "
                                 "Default: from the -o suffix, else csv.", show_default=False)
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to FILE instead of stdout.",
                                  show_default=False)
    ] = None,
    store: StoreOpt = None,
) -> None:
    """Print or save a run's metric history (every row, or sampled) from the local store.

    Without --samples every row is streamed (run.scan_history), so a run of any length
    exports in constant memory. CSV columns: _step, _runtime, _timestamp, then the other
    keys sorted; lists and dicts (media, histograms) are JSON text.

    Exit codes: 0 ok; 1 no store or unknown run; 2 bad usage (path, options).

    Examples:

      mirror history my-team/my-project/1a2b3c4d -k loss,acc | head

      mirror history my-team/my-project/1a2b3c4d --samples 500 --format json

      mirror history my-team/my-project/1a2b3c4d -o history.parquet

      mirror history my-team/my-project/1a2b3c4d --stream events -o system.csv
    """
    from mirror.api.export import HISTORY_FORMATS, format_for, history_source, write_history

    fmt = format_for(output, fmt)
    if fmt not in HISTORY_FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(HISTORY_FORMATS)}",
                                 param_hint="--format")
    if fmt == "parquet" and output is None:
        raise typer.BadParameter("parquet is binary: give a file with -o FILE",
                                 param_hint="--format")
    if stream not in ("default", "events"):
        raise typer.BadParameter(f"{stream!r} is not one of default, events",
                                 param_hint="--stream")
    wanted = [k for entry in keys or [] for k in entry.split(",") if k.strip()] or None
    if wanted and stream != "default":
        raise typer.BadParameter("--keys only applies to the default stream",
                                 param_hint="--keys")
    with open_api(store) as api:
        run = find_run(api, run_path)
        source = history_source(run, keys=wanted, samples=samples, stream=stream)
        n = write_history(source, fmt, output, stdout=sys.stdout)
        sys.stdout.flush()
    if output is not None:
        err.print(f"wrote {n:,} row(s) of {'/'.join(run.path)} to {output}", highlight=False)
    if n == 0 and wanted:
        known = run.history_keys.get("keys") or {}
        unknown = [k for k in wanted if k not in known and k != "_step"]
        err.print(f"no history rows hold all of {', '.join(wanted)}"
                  + (f" (not in this run's history: {', '.join(unknown)})" if unknown else ""),
                  highlight=False)


# --- mirror files ------------------------------------------------------------------------


@query_errors
def files_cmd(
    run_path: RunPathArg,
    pattern: Annotated[
        str | None, typer.Option("--pattern", help="SQL LIKE pattern on the name, e.g. "
                                 "'%.json' or 'media/%'.", show_default=False)
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON array on stdout.")]
    = False,
    store: StoreOpt = None,
) -> None:
    """List a run's files, their sizes, and whether their bytes are cached locally.

    A file that is not cached can be listed but not downloaded offline; fetch it with
    `mirror sync --files`.

    Examples:

      mirror files my-team/my-project/1a2b3c4d

      mirror files my-team/my-project/1a2b3c4d --pattern '%.json' --json
    """
    from mirror.api.export import json_text

    with open_api(store) as api:
        run = find_run(api, run_path)
        listing = [{"name": f.name, "size": f.size, "md5": f.md5, "mimetype": f.mimetype,
                    "updated_at": f.updated_at, "cached": f.is_cached, "url": f.url}
                   for f in run.files(pattern=pattern)]
    if json_out:
        sys.stdout.write("[" + ",\n".join(json_text(f) for f in listing) + "]\n")
        return
    table = Table(title=f"{'/'.join(run.path)}: {len(listing)} file(s)")
    for col, justify in (("name", "left"), ("size", "right"), ("updated", "left"),
                         ("cached", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for f in listing:
        table.add_row(Text(f["name"]), f"{f['size']:,}", f["updated_at"] or "",
                      "yes" if f["cached"] else "[yellow]no[/]")
    out.print(table)
    missing = sum(1 for f in listing if not f["cached"])
    if missing:
        err.print(f"{missing} file(s) not cached: `mirror sync --files` fetches them.",
                  highlight=False)
