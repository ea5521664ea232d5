"""Runs and their history as files: CSV, JSON and Parquet, streamed from the offline ``Api``.

The ``mirror runs``, ``mirror history`` and ``mirror export`` commands are thin layers over
this module, and scripts can call it too. Everything is read through :class:`mirror.api.Api`
(no SQL here), and history is written as it is read: without sampling it comes from
``run.scan_history()`` one page at a time, so a 200,000-step run is never held in memory.

Value rules, the same for every format:

* JSON text is strict (``codec.dumps_strict``): NaN and +/-Infinity become ``null``, since a
  bare ``NaN`` is not JSON and breaks other readers; non-ASCII keys are kept as UTF-8.
* CSV: UTF-8, a header row, LF line ends. Numbers as Python prints them (``nan``/``inf``
  for non-finite floats, which pandas reads back as floats), ``True``/``False`` as pandas
  writes them, an empty cell for a missing or null value, and strict JSON text for lists
  and dicts (media, histograms).
* Parquet columns are typed from the run's ``history_keys`` type counts when streaming (or
  from the rows when sampled): ``number`` -> float64 (``_step`` -> int64; NaN stays NaN),
  ``boolean`` -> bool, ``string`` -> string; anything else (media objects, lists, mixed
  types) is a string column of strict JSON, and those columns are listed in the file's
  schema metadata under ``wandb-mirror:json_columns``.

The runs file of :func:`export_project` is the guide's "export runs" CSV: one row per run
with the columns ``summary`` (``run.summary._json_dict``), ``config`` (``run.config`` without
keys starting with ``_``) and ``name``, as JSON text instead of pandas' Python ``repr``, plus
``id``, which names the run's history file (``history/<id>.<format>``).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mirror.api import history as _history
from mirror.errors import MirrorError
from mirror.paths import validate_path_part
from mirror.store import codec

if TYPE_CHECKING:
    from mirror.api.api import Api
    from mirror.api.run import Run
    from mirror.api.runs import Runs

Row = dict[str, Any]

HISTORY_FORMATS = ("csv", "json", "parquet")
"""Formats of one run's history: CSV, JSON lines (one object per row), Parquet."""

RUNS_FILE_COLUMNS = ("summary", "config", "name", "id")
"""Columns of the guide's runs CSV (``summary``, ``config``, ``name``), plus the run id."""

RUN_ATTRIBUTES = (
    "id", "name", "display_name", "state", "created_at", "heartbeat_at", "tags", "notes",
    "description", "group", "job_type", "commit", "url", "path", "entity", "project",
    "sweep_name", "storage_id", "username", "host", "lastHistoryStep",
)
"""Run attributes a runs listing can show, besides ``config[.key]`` and ``summary[.key]``."""

LEADING_COLUMNS = ("_step", "_runtime", "_timestamp")
"""History columns written first (when present); the others follow sorted by name."""

PARQUET_BATCH_ROWS = 2_048
PARQUET_ROW_GROUP_ROWS = 65_536
JSON_COLUMNS_META = b"wandb-mirror:json_columns"


class ExportError(MirrorError):
    """Writing an export failed for a reason the user can act on."""


class ColumnError(MirrorError, ValueError):
    """A ``--columns`` entry names nothing a run has (a usage error)."""

    default_hint = (
        "Columns are run attributes (" + ", ".join(RUN_ATTRIBUTES[:6]) + ", ...), "
        "'config', 'config.<key>', 'summary' or 'summary.<key>' (nested keys dotted)."
    )


# --- values ----------------------------------------------------------------------------


def json_text(value: Any) -> str:
    """Strict JSON for ``value`` (NaN/Infinity -> null; unicode kept)."""
    return codec.dumps_strict(value)


def csv_cell(value: Any) -> Any:
    """One CSV cell: scalars as they are (the csv module prints them), JSON for the rest."""
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        return json_text(value)
    return value


def display_cell(value: Any) -> str:
    """A value for a terminal table: compact, JSON for structures, empty for None."""
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        return json_text(value)
    return str(value)


# --- runs ------------------------------------------------------------------------------


def check_columns(columns: Sequence[str]) -> list[str]:
    """The columns, validated up front (so a typo fails even on an empty project)."""
    out: list[str] = []
    for column in columns:
        column = column.strip()
        head = column.split(".", 1)[0]
        if not column or (column not in RUN_ATTRIBUTES
                          and head not in ("config", "summary", "summary_metrics")):
            raise ColumnError(f"unknown column {column!r}")
        out.append(column)
    return out


def run_value(run: Run, column: str) -> Any:
    """The value of one (checked) column for ``run``; a missing config/summary key is None."""
    head, _, rest = column.partition(".")
    if head == "config":
        doc: Any = guide_config(run)
    elif head in ("summary", "summary_metrics"):
        doc = run.summary._json_dict
    else:
        return getattr(run, column)
    return lookup(doc, rest) if rest else doc


def lookup(doc: Any, dotted: str) -> Any:
    """``doc[dotted]`` if that key exists, else the nested ``doc[a][b]...`` path, else None.

    The whole key is tried first because W&B keys may contain dots themselves."""
    if not isinstance(doc, Mapping):
        return None
    if dotted in doc:
        return doc[dotted]
    head, _, rest = dotted.partition(".")
    if not rest or head not in doc:
        return None
    return lookup(doc[head], rest)


def guide_config(run: Run) -> dict[str, Any]:
    """``run.config`` without keys starting with ``_``, as the guide's export builds it."""
    return {k: v for k, v in run.config.items() if not k.startswith("_")}


def runs_file_row(run: Run) -> list[str]:
    """One row of the runs CSV (:data:`RUNS_FILE_COLUMNS`)."""
    return [json_text(run.summary._json_dict), json_text(guide_config(run)),
            run.name or "", run.id]


def write_runs_json(runs: Iterable[Run], columns: Sequence[str], out: IO[str]) -> int:
    """A JSON array of ``{column: value}`` objects, one per run, written as runs stream in."""
    n = 0
    out.write("[")
    for run in runs:
        obj = {c: run_value(run, c) for c in columns}
        out.write(("\n" if n == 0 else ",\n") + json_text(obj))
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n


def write_runs_csv(runs: Iterable[Run], columns: Sequence[str], out: IO[str]) -> int:
    """A CSV with a header of ``columns`` and one row per run."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    n = 0
    for run in runs:
        writer.writerow([csv_cell(run_value(run, c)) for c in columns])
        n += 1
    return n


# --- history ---------------------------------------------------------------------------


@dataclass
class HistorySource:
    """The rows of one run's history an export writes, and the columns they fill.

    ``types`` maps each column to ``int``, ``float``, ``bool``, ``string`` or ``json``
    (what Parquet stores it as). ``rows`` is a stream when nothing is sampled.
    """

    columns: list[str]
    types: dict[str, str]
    rows: Iterable[Row]


def history_source(
    run: Run,
    *,
    keys: Sequence[str] | None = None,
    samples: int | None = None,
    stream: str = "default",
    page_size: int = 1000,
) -> HistorySource:
    """What ``mirror history`` writes for ``run``.

    No ``samples`` and the default stream: every row, streamed by ``run.scan_history``
    (columns and types from ``run.history_keys``, no pass over the rows first). With
    ``samples``: ``run.history(samples, keys)``'s rows. ``stream="events"``: the system
    metrics (all of them unless ``samples``), which cannot be combined with ``keys``.
    """
    wanted = _history.check_keys(list(keys) if keys else None)
    if stream not in ("default", "events", "system"):
        raise ValueError(f"unknown stream {stream!r}: use 'default' or 'events'")
    if stream != "default" or samples is not None:
        rows = _history.sampled_rows(run, samples, wanted, "_step", stream)
        columns, types = infer_columns(rows)
        if wanted and stream == "default":
            columns = list(dict.fromkeys(["_step", *wanted]))
        return HistorySource(columns, types, rows)
    scan = run.scan_history(keys=wanted, page_size=page_size)
    key_info = run.history_keys.get("keys") or {}
    columns = list(dict.fromkeys(["_step", *wanted])) if wanted else order_columns(key_info)
    types = {c: declared_type(c, key_info.get(c)) for c in columns}
    return HistorySource(columns, types, scan)


def order_columns(keys: Iterable[str]) -> list[str]:
    """``_step``, ``_runtime``, ``_timestamp`` first (if present), then the rest sorted."""
    present = set(keys)
    lead = [c for c in LEADING_COLUMNS if c in present]
    return lead + sorted(present.difference(lead))


def declared_type(column: str, info: Any) -> str:
    """A column's storage type from its ``historyKeys`` entry (``typeCounts``)."""
    if column == "_step":
        return "int"
    kinds: set[str] = set()
    if isinstance(info, Mapping):
        for entry in info.get("typeCounts") or ():
            kind = entry.get("type") if isinstance(entry, Mapping) else None
            if isinstance(kind, str) and kind != "nil":
                kinds.add(kind)
    mapping = {frozenset({"number"}): "float", frozenset({"boolean"}): "bool",
               frozenset({"string"}): "string"}
    return mapping.get(frozenset(kinds), "json")


def infer_columns(rows: Sequence[Row]) -> tuple[list[str], dict[str, str]]:
    """Columns and storage types from rows held in memory (sampled history, events)."""
    seen: dict[str, set[type]] = {}
    for row in rows:
        for key, value in row.items():
            if value is not None:
                seen.setdefault(key, set()).add(type(value))
            else:
                seen.setdefault(key, set())
    types: dict[str, str] = {}
    for key, kinds in seen.items():
        if not kinds:
            types[key] = "json"
        elif kinds == {bool}:
            types[key] = "bool"
        elif kinds == {int}:
            types[key] = "int"
        elif kinds <= {int, float}:
            types[key] = "float"
        elif kinds == {str}:
            types[key] = "string"
        else:
            types[key] = "json"
    return order_columns(seen), types


def _unexpected(row: Row, columns: set[str]) -> ExportError:
    extra = sorted(set(row) - columns)
    return ExportError(
        f"history row at step {row.get('_step')} holds keys {extra} that the run's "
        "history_keys do not list",
        hint="Pass --keys to choose the columns, or write JSON lines (--format json).",
    )


def write_history_csv(source: HistorySource, out: IO[str]) -> int:
    """Header of the columns, one line per row; returns the number of rows."""
    columns = source.columns
    colset = set(columns)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    n = 0
    # The csv module prints numbers, strings, booleans and None (as "") itself; only rows
    # holding a list or dict (media, histograms) need their cells converted.
    write = writer.writerow
    for row in source.rows:
        if not colset.issuperset(row):
            raise _unexpected(row, colset)
        cells = [row.get(c) for c in columns]
        if _structured(cells):
            cells = [csv_cell(v) for v in cells]
        write(cells)
        n += 1
    return n


def _structured(cells: list[Any]) -> bool:
    """Does a row (after JSON columns were encoded) still hold a list or dict?"""
    return any(type(v) in (dict, list) for v in cells)


def write_history_json(source: HistorySource, out: IO[str]) -> int:
    """JSON lines: one strict JSON object per row, keys as the ``Api`` gives them."""
    n = 0
    for row in source.rows:
        out.write(json_text(row))
        out.write("\n")
        n += 1
    return n


def write_history_parquet(source: HistorySource, target: Path,
                          batch_rows: int = PARQUET_BATCH_ROWS,
                          row_group_rows: int = PARQUET_ROW_GROUP_ROWS) -> int:
    """A Parquet file, written as rows stream in.

    Rows are converted to Arrow ``batch_rows`` at a time (few Python dicts alive at once)
    and written as row groups of ``row_group_rows`` (big enough for fast column reads), so
    memory stays at one row group's columns however long the run is.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow_types = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
                   "string": pa.string(), "json": pa.string()}
    json_columns = [c for c in source.columns if source.types.get(c, "json") == "json"]
    schema = pa.schema(
        [pa.field(c, arrow_types[source.types.get(c, "json")]) for c in source.columns],
        metadata={JSON_COLUMNS_META: json.dumps(json_columns).encode("utf-8")},
    )
    row_type = pa.struct(list(schema))
    colset = set(source.columns)
    n = 0
    with pq.ParquetWriter(str(target), schema) as writer:
        rows: list[Row] = []
        group: list[Any] = []
        group_rows = 0

        def convert() -> None:
            nonlocal group_rows
            if json_columns:  # the rows are the scan's own fresh dicts: encode in place
                for row in rows:
                    for c in json_columns:
                        value = row.get(c)
                        if value is not None:
                            row[c] = json_text(value)
            try:  # list of dicts -> struct array is one C++ pass (missing keys -> null)
                array = pa.array(rows, type=row_type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                raise ExportError(
                    f"a history value does not fit its column's type ({exc})",
                    hint="Re-sync the run, or export it as CSV or JSON lines.",
                ) from exc
            group.append(pa.RecordBatch.from_struct_array(array))
            group_rows += len(rows)
            rows.clear()

        def write_group() -> None:
            nonlocal group_rows
            writer.write_table(pa.Table.from_batches(group, schema=schema))
            group.clear()
            group_rows = 0

        for row in source.rows:
            if not colset.issuperset(row):
                raise _unexpected(row, colset)
            rows.append(row)
            n += 1
            if len(rows) >= batch_rows:
                convert()
                if group_rows >= row_group_rows:
                    write_group()
        if rows or n == 0:
            convert()
        if group:
            write_group()
    return n


def write_history(source: HistorySource, fmt: str, target: Path | None,
                  stdout: IO[str] | None = None) -> int:
    """Write ``source`` as ``fmt`` to ``target`` (atomically) or to ``stdout``."""
    if fmt not in HISTORY_FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(HISTORY_FORMATS)}")
    if target is None:
        if fmt == "parquet" or stdout is None:
            raise ValueError("parquet is binary: give a file to write it to (-o FILE)")
        return _write_text(source, fmt, stdout)
    with atomic_path(target) as tmp:
        if fmt == "parquet":
            return write_history_parquet(source, tmp)
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            return _write_text(source, fmt, fh)


def _write_text(source: HistorySource, fmt: str, out: IO[str]) -> int:
    return write_history_csv(source, out) if fmt == "csv" else write_history_json(source, out)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temp path next to ``target``, renamed onto it only if the block succeeds, so an
    interrupted export never leaves a truncated file that looks complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def format_for(path: Path | None, fmt: str | None) -> str:
    """The format asked for, else the one ``path``'s suffix names, else CSV."""
    if fmt:
        return fmt
    suffix = path.suffix.lower() if path is not None else ""
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".json", ".jsonl", ".ndjson"):
        return "json"
    return "csv"


# --- a whole project -------------------------------------------------------------------


@dataclass
class ExportReport:
    """What :func:`export_project` wrote."""

    directory: Path
    runs_file: Path
    runs: int = 0
    rows: int = 0
    history_files: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "runs_file": str(self.runs_file),
                "runs": self.runs, "rows": self.rows,
                "history_files": [str(p) for p in self.history_files],
                "failed": dict(self.failed), "ok": self.ok}


ProgressFn = Callable[[str, int], None]
"""Called after each run with the run id and the rows written for it."""


def export_project(
    api: Api,
    path: str,
    to: Path,
    *,
    filters: Mapping[str, Any] | None = None,
    order: str = "+created_at",
    fmt: str = "csv",
    keys: Sequence[str] | None = None,
    samples: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_run: ProgressFn | None = None,
) -> ExportReport:
    """Write ``to/runs.csv`` and ``to/history/<run_id>.<fmt>`` for the matching runs.

    A run whose history cannot be written is reported in ``failed`` and the others go
    on; a bad filter, an unknown project or an unwritable folder fail before anything is
    written. Files of the same name are replaced.
    """
    if fmt not in ("csv", "parquet", "json"):
        raise ValueError(f"unknown format {fmt!r}: use csv or parquet")
    runs: Runs = api.runs(path, filters=filters, order=order)
    total = len(runs)  # reads the matching keys: an unknown project fails here
    if on_start is not None:
        on_start(total)
    report = ExportReport(directory=to, runs_file=to / "runs.csv")
    history_dir = to / "history"
    try:
        history_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {history_dir}: {exc.strerror or exc}",
                          hint="Choose a folder you can write to (--to DIR).") from exc
    suffix = "jsonl" if fmt == "json" else fmt
    with atomic_path(report.runs_file) as tmp, open(tmp, "w", encoding="utf-8",
                                                    newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(RUNS_FILE_COLUMNS)
        for run in runs:
            writer.writerow(runs_file_row(run))
            report.runs += 1
            rows = 0
            try:
                target = history_dir / f"{validate_path_part(run.id, 'run id')}.{suffix}"
                source = history_source(run, keys=keys, samples=samples)
                rows = write_history(source, fmt, target)
            except (MirrorError, OSError) as exc:
                report.failed[run.id] = getattr(exc, "message", None) or str(exc)
            else:
                report.history_files.append(target)
                report.rows += rows
            if on_run is not None:
                on_run(run.id, rows)
    return report


__all__ = [
    "HISTORY_FORMATS",
    "RUNS_FILE_COLUMNS",
    "RUN_ATTRIBUTES",
    "ColumnError",
    "ExportError",
    "ExportReport",
    "HistorySource",
    "check_columns",
    "export_project",
    "format_for",
    "history_source",
    "run_value",
    "write_history",
    "write_runs_csv",
    "write_runs_json",
]
