"""MLflow -> W&B mapping: pure functions, no I/O, no mlflow import (and the plain report
records the importer returns).

:mod:`mirror.importers.mlflow_read` turns MLflow objects into the plain values below
(:class:`SourceRun`, :class:`Point`); this module turns those into what the store holds
(a :class:`~mirror.records.RunRecord`, W&B history rows, run file names). Keeping it pure
is what lets the mapping rules be tested exhaustively without a tracking server.

The rules, each one a fix of a defect of W&B's old importer (reference, section 8):

Identity
    The W&B run id is a function of ``(normalised tracking URI, MLflow run id)``: 8
    characters of base36 of a sha256 (:func:`wandb_run_id`). Re-importing gives the
    same id, on any machine, so nothing is ever duplicated. URIs lose credentials and
    query strings first, and ``sqlite:``/``file:`` paths become absolute.

Run fields
    state from ``status`` (FINISHED->finished, FAILED->failed, KILLED->killed,
    RUNNING->running, SCHEDULED->pending); ``created_at`` from ``start_time`` (ms);
    runtime from ``end_time``, else from the last metric timestamp (a RUNNING run is not
    0 s long); commit, user, notes from ``mlflow.source.git.commit``, ``mlflow.user`` (else
    ``user_id``), ``mlflow.note.content``; group = the W&B id of the root of a nested run
    tree (``mlflow.parentRunId`` followed up). Project: the namespace's, else
    :func:`project_for_experiment` of the experiment name. The entity is never the
    MLflow ``user_id``.

Config and tags
    params become config keys, values kept as the strings MLflow stores. Everything else
    about the source run, losslessly, is under the config key ``_mlflow`` (ids, times,
    status, lifecycle stage, experiment, every tag including ``mlflow.*``, parent ids,
    dataset inputs, logged models). User tags also become W&B tags ``key:value`` when
    that fits W&B's 64 characters. ``_wandb.t`` is set so the SDK can resume the run.

History (the projection)
    Every point of every metric is kept. Rows are merged by step in ascending step order;
    ``_step`` is the MLflow step, except in runs whose steps W&B cannot scan (a negative
    step, or a last step above 10,000 x the number of rows, e.g. ``2**62`` or epoch
    milliseconds: W&B's history scan walks step windows from 0): there ``_step`` is the
    row's index and ``_mlflow_step`` the MLflow step (:func:`needs_renumbering`), so
    nothing is lost and the official client can read every row. A row holds ``_step``,
    ``_timestamp`` (seconds,
    float), ``_runtime`` (seconds since the run's start) and, per key, ONE value: the
    point with the greatest ``(timestamp, value)`` at that step, which is MLflow's own
    rule for a metric's latest value, so the last row agrees with the summary. The row's
    ``_timestamp`` is the greatest timestamp among the values it holds.
    A point the row does not carry exactly (a key with several points at that step, a
    point whose timestamp differs from the row's, a point tied to a dataset or a logged
    model, a metric named like a W&B reserved key) is written, together with every other
    point of the same key and step, to the run file ``mlflow/metric-points.jsonl``:
    one JSON line per point (``key, step, timestamp`` in ms, ``value``, and the dataset
    / model fields when set), bare ``NaN``/``Infinity`` as the SDK writes them. So
    (rows + that file) reconstruct the exact point set (:func:`points_from_history`),
    and for the common case (one value per key and step, logged together) the file is
    not written at all.

Non-finite values
    NaN stays NaN. MLflow's SQL stores cannot hold infinities and return
    ``±1.7976931348623157e308`` (the largest double) instead; those two exact values are
    mapped back to ``±inf`` (:func:`restore_inf`). A metric genuinely equal to the
    largest double would read as infinite; no real metric is.

Files
    Artifacts keep their relative paths under ``mlflow/artifacts/``; MLflow 3 logged
    models (which live outside the run's artifact tree) go under
    ``mlflow/models/<model id>/``; a ``wandb-metadata.json`` carries ``startedAt``,
    program and git as W&B shows them.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from mirror import __version__
from mirror.paths import run_storage_id, wandb_time
from mirror.records import RunRecord
from mirror.store.codec import dumps_wire, loads_wire

MAPPING_VERSION = 1
"""Bumped when the mapping changes, so re-imports refresh runs imported by older rules."""

ARTIFACTS_PREFIX = "mlflow/artifacts/"
MODELS_PREFIX = "mlflow/models/"
POINTS_FILE = "mlflow/metric-points.jsonl"
METADATA_FILE = "wandb-metadata.json"
CONFIG_KEY = "_mlflow"
MLFLOW_STEP = "_mlflow_step"
RESERVED_KEYS = frozenset({"_step", "_runtime", "_timestamp", "_wandb", MLFLOW_STEP})
STEPS_PER_ROW = 10_000
MAX_TAG_LENGTH = 64

_SQL_MAX = 1.7976931348623157e308
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_STATES = {
    "FINISHED": "finished",
    "FAILED": "failed",
    "KILLED": "killed",
    "RUNNING": "running",
    "SCHEDULED": "pending",
}
_PROJECT_BAD = re.compile(r"[^A-Za-z0-9_.\-]+")


# --- plain values read from MLflow ---------------------------------------------------------


class Point(NamedTuple):
    """One metric point. ``extra`` holds MLflow 3's dataset/model link, when set."""

    step: int
    timestamp: int  # ms since the epoch, as MLflow stores it
    value: float
    extra: tuple[tuple[str, str], ...] | None = None


@dataclass
class SourceRun:
    """An MLflow run as plain values (what the mapping needs; no mlflow objects)."""

    run_id: str
    experiment_id: str
    experiment_name: str | None = None
    experiment_stage: str | None = None
    run_name: str | None = None
    user_id: str | None = None
    status: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    lifecycle_stage: str | None = None
    artifact_uri: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    latest: dict[str, Point] = field(default_factory=dict)  # key -> latest point
    datasets: list[dict[str, Any]] = field(default_factory=list)
    model_inputs: list[dict[str, Any]] = field(default_factory=list)
    model_outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def parent_run_id(self) -> str | None:
        return self.tags.get("mlflow.parentRunId") or None


@dataclass(frozen=True)
class ArtifactFile:
    """One file of the run's artifact tree (or of a logged model), by relative path."""

    path: str
    size: int | None


@dataclass
class LoggedModel:
    """An MLflow 3 logged model that the run produced (``run.outputs.model_outputs``)."""

    model_id: str
    name: str | None
    artifact_location: str | None
    step: int | None
    files: list[ArtifactFile] = field(default_factory=list)


# --- identity ------------------------------------------------------------------------------


def normalize_tracking_uri(uri: str, *, cwd: Path | None = None) -> str:
    """The form of a tracking URI that identifies a store (the import map's key).

    Credentials and query strings are dropped (they change without the store changing,
    and must never be stored); ``sqlite:``/``file:`` paths and bare paths become absolute,
    so the same file reached from two working directories is one store.
    """
    uri = uri.strip()
    if uri.lower() in ("databricks", "databricks-uc", "uc"):
        return uri.lower()
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    base = cwd or Path.cwd()
    if scheme in ("http", "https"):
        host = (parts.hostname or "").lower()
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((scheme, host, parts.path.rstrip("/"), "", ""))
    if scheme.startswith("sqlite"):
        prefix, _, rest = uri.partition(":///")
        rest = rest.split("?", 1)[0]
        if rest and rest != ":memory:" and not rest.startswith("/"):
            rest = str((base / rest).resolve())
        return f"{prefix.lower()}:///{rest}" if rest else uri
    if scheme == "file":
        path = parts.path or parts.netloc
        return "file://" + str((base / path).resolve())
    if scheme == "" or (len(scheme) == 1 and uri[1:2] == ":"):  # a path (or C:\ path)
        return "file://" + str((base / uri).resolve())
    return urlunsplit((scheme, parts.netloc.split("@")[-1], parts.path, "", ""))


def is_remote(uri: str) -> bool:
    """True for stores reached over the network (fetch concurrently), False for local."""
    scheme = uri.strip().split(":", 1)[0].lower() if ":" in uri else uri.strip().lower()
    return scheme in ("http", "https", "uc") or scheme.startswith("databricks")


def wandb_run_id(source_uri: str, mlflow_run_id: str, salt: str = "") -> str:
    """8 chars of base36 of sha256(uri, run id[, salt]): W&B's id alphabet and length."""
    digest = hashlib.sha256(f"{source_uri}\n{mlflow_run_id}\n{salt}".encode()).digest()
    n = int.from_bytes(digest[:8], "big")
    out = []
    for _ in range(8):
        n, r = divmod(n, 36)
        out.append(_BASE36[r])
    return "".join(out)


def project_for_experiment(name: str | None, experiment_id: str) -> str:
    """A W&B project name for an MLflow experiment.

    Unicode is folded to ASCII (``ü`` -> ``u``), every run of characters outside
    ``[A-Za-z0-9_.-]`` (``/``, spaces, ``@``...) becomes one ``-``, and the result is
    cut to 100 characters; a name with nothing left becomes ``mlflow-experiment-<id>``.
    Databricks paths keep their folders: ``/Users/a@b.com/x`` -> ``Users-a-b.com-x``.
    """
    folded = unicodedata.normalize("NFKD", name or "").encode("ascii", "ignore").decode()
    slug = _PROJECT_BAD.sub("-", folded).strip("-._")[:100].strip("-._")
    return slug or f"mlflow-experiment-{experiment_id}"


# --- values --------------------------------------------------------------------------------


def restore_inf(value: float) -> float:
    """``±DBL_MAX`` (how MLflow's SQL stores return ±inf) back to ``±inf``."""
    if value == _SQL_MAX:
        return math.inf
    if value == -_SQL_MAX:
        return -math.inf
    return value


def map_state(status: str | None) -> str:
    """MLflow ``RunStatus`` name -> W&B run state (unknown statuses: ``crashed``)."""
    return _STATES.get((status or "").upper(), "crashed")


def exitcode_for(state: str | None) -> int | None:
    """The file_stream exit code that finishes a run in ``state``; None: leave it open.

    W&B derives a run's final state only from ``complete``/``exitcode`` of the last
    file_stream request (0 finished, non-zero failed; 255 is what a stopped run sends).
    Running and pending runs are not completed.
    """
    return {"finished": 0, "failed": 1, "killed": 255, "crashed": 1}.get(state or "")


def _point_order(p: Point) -> tuple[int, int, int, float]:
    """Total order of one key's points: step, timestamp, then value (NaN last)."""
    nan = p.value != p.value
    return (p.step, p.timestamp, 1 if nan else 0, 0.0 if nan else p.value)


def latest_point(points: Iterable[Point]) -> Point | None:
    """MLflow's "latest" value of a metric: the max of ``(step, timestamp, value)``."""
    best: Point | None = None
    for p in points:
        if best is None or _point_order(p) >= _point_order(best):
            best = p
    return best


def same_latest(points: Sequence[Point] | None, latest: Point) -> bool:
    """Does a stored series end in MLflow's current latest point of its key? (If so, the
    key's history has not moved and need not be fetched again.)"""
    mine = latest_point(points or ())
    if mine is None:
        return False
    same_value = mine.value == latest.value or (mine.value != mine.value
                                                and latest.value != latest.value)
    return (mine.step, mine.timestamp) == (latest.step, latest.timestamp) and same_value


def runtime_seconds(src: SourceRun, last_metric_ms: int | None) -> float | None:
    """Seconds from start to end; for an open run, to its last metric; None if unknown."""
    if src.start_time is None:
        return None
    end = src.end_time if src.end_time is not None else last_metric_ms
    if end is None:
        return None
    return max(0.0, (end - src.start_time) / 1000.0)


# --- history projection --------------------------------------------------------------------


@dataclass
class Projection:
    """What :func:`project_history` produced besides the rows (filled as rows are read)."""

    rows: int = 0
    points: int = 0
    extra_points: int = 0
    first_step: int | None = None
    last_step: int | None = None
    last_timestamp: int | None = None
    key_counts: dict[str, int] = field(default_factory=dict)
    renumbered: bool = False

    def history_keys(self) -> dict[str, Any]:
        """``historyKeys`` as the server computes it: per key, rows per value type."""
        keys = {k: {"typeCounts": [{"type": "number", "count": n}]}
                for k, n in sorted(self.key_counts.items())}
        return {"lastStep": -1 if self.last_step is None else self.last_step, "keys": keys}


def needs_renumbering(steps: Iterable[int]) -> bool:
    """True when MLflow's steps cannot serve as W&B ``_step`` values.

    W&B's history scan walks step windows from 0 to the last step, so a negative step
    is never read back and very sparse or huge steps (``2**62``, epoch milliseconds)
    cost one request per empty window, for ever in practice. The threshold: a step below
    0, or a last step above ``STEPS_PER_ROW`` times the number of rows.
    """
    count, low, high = 0, None, None
    for step in steps:
        count += 1
        low = step if low is None or step < low else low
        high = step if high is None or step > high else high
    if not count or low is None or high is None:
        return False
    return low < 0 or high > STEPS_PER_ROW * count


def project_history(
    series: Mapping[str, Sequence[Point]],
    start_ms: int | None,
    write_extra: Callable[[str], None],
    stats: Projection | None = None,
    *,
    renumber: bool | None = None,
) -> Iterator[dict[str, Any]]:
    """W&B history rows (ascending ``_step``) from every point of every metric.

    ``series`` maps a metric key to its points (any order). Rows are produced lazily by
    a k-way merge of the per-key sorted lists, so memory beyond the input is one step's
    worth. Points a row cannot carry exactly are passed to ``write_extra`` as JSON lines
    of ``mlflow/metric-points.jsonl`` (see the module docstring). ``stats`` is filled as
    rows are produced. With ``renumber`` (default: :func:`needs_renumbering` of the
    steps), ``_step`` is the row's index and ``_mlflow_step`` the MLflow step.
    """
    stats = stats if stats is not None else Projection()
    ordered = {k: sorted(v, key=_point_order) for k, v in series.items() if v}
    if renumber is None:
        renumber = needs_renumbering({p.step for pts in ordered.values() for p in pts})
    stats.renumbered = renumber
    if start_ms is None:
        firsts = [min(p.timestamp for p in v) for v in ordered.values()]
        start_ms = min(firsts) if firsts else 0
    merged = heapq.merge(*(_keyed(k, pts) for k, pts in sorted(ordered.items())))
    pending: list[tuple[str, Point]] = []
    current: int | None = None
    for step, key, _i, point in merged:
        if current is not None and step != current:
            yield _row(current, pending, start_ms, write_extra, stats)
            pending = []
        current = step
        pending.append((key, point))
    if current is not None:
        yield _row(current, pending, start_ms, write_extra, stats)


def _keyed(key: str, points: list[Point]) -> Iterator[tuple[int, str, int, Point]]:
    for i, p in enumerate(points):
        yield p.step, key, i, p


def _row(
    step: int,
    points: list[tuple[str, Point]],
    start_ms: int,
    write_extra: Callable[[str], None],
    stats: Projection,
) -> dict[str, Any]:
    by_key: dict[str, list[Point]] = {}
    for key, p in points:
        by_key.setdefault(key, []).append(p)
    chosen: dict[str, Point] = {}
    for key, pts in by_key.items():
        if key not in RESERVED_KEYS:
            chosen[key] = pts[-1]  # sorted: the greatest (timestamp, value)
    row_ts = max((p.timestamp for p in chosen.values()),
                 default=max(p.timestamp for _k, p in points))
    wandb_step = stats.rows if stats.renumbered else step
    row: dict[str, Any] = {"_step": wandb_step}
    if stats.renumbered:
        row[MLFLOW_STEP] = step
    for key, pts in by_key.items():
        exact = key in chosen and len(pts) == 1 and pts[0].extra is None and (
            pts[0].timestamp == row_ts)
        if not exact:
            for p in pts:
                write_extra(point_line(key, p))
            stats.extra_points += len(pts)
        if key in chosen:
            row[key] = chosen[key].value
            stats.key_counts[key] = stats.key_counts.get(key, 0) + 1
    row["_timestamp"] = row_ts / 1000.0
    row["_runtime"] = (row_ts - start_ms) / 1000.0
    for k in row:
        if k.startswith("_"):
            stats.key_counts[k] = stats.key_counts.get(k, 0) + 1
    stats.rows += 1
    stats.points += len(points)
    if stats.first_step is None:
        stats.first_step = wandb_step
    stats.last_step = wandb_step
    if stats.last_timestamp is None or row_ts > stats.last_timestamp:
        stats.last_timestamp = row_ts
    return row


def point_line(key: str, p: Point) -> str:
    """One line of ``mlflow/metric-points.jsonl`` (bare NaN/Infinity, like the SDK)."""
    doc: dict[str, Any] = {"key": key, "step": p.step, "timestamp": p.timestamp,
                           "value": p.value}
    if p.extra:
        doc.update(dict(p.extra))
    return dumps_wire(doc)


def points_from_history(
    rows: Iterable[Mapping[str, Any]], extra_lines: Iterable[str | bytes]
) -> dict[str, list[Point]]:
    """The inverse of :func:`project_history`: every point, from rows + the points file."""
    out: dict[str, list[Point]] = {}
    covered: set[tuple[str, int]] = set()
    for line in extra_lines:
        if not line or not line.strip():
            continue
        doc = loads_wire(line)
        extra = tuple(sorted((k, str(v)) for k, v in doc.items()
                             if k not in ("key", "step", "timestamp", "value"))) or None
        key = str(doc["key"])
        p = Point(int(doc["step"]), int(doc["timestamp"]), float(doc["value"]), extra)
        out.setdefault(key, []).append(p)
        covered.add((key, p.step))
    for row in rows:
        step = int(row[MLFLOW_STEP] if MLFLOW_STEP in row else row["_step"])
        ts = round(float(row["_timestamp"]) * 1000)
        for key, value in row.items():
            if key in RESERVED_KEYS or (key, step) in covered:
                continue
            out.setdefault(key, []).append(Point(step, ts, float(value)))
    for pts in out.values():
        pts.sort(key=_point_order)
    return out


# --- the run record ------------------------------------------------------------------------


def wandb_tags(src: SourceRun) -> list[str]:
    """W&B tags: ``key:value`` of user tags that fit in 64 chars (all tags are in config)."""
    tags = []
    for key, value in sorted(src.tags.items()):
        if key.startswith("mlflow."):
            continue
        text = f"{key}:{value}" if value != "" else key
        if len(text) <= MAX_TAG_LENGTH and text.strip():
            tags.append(text)
    if (src.lifecycle_stage or "").lower() == "deleted":
        tags.append("mlflow-deleted")
    return tags


def mlflow_section(
    src: SourceRun, source_uri: str, parent_wandb_id: str | None, root_wandb_id: str | None,
    models: Sequence[LoggedModel] = (),
) -> dict[str, Any]:
    """Everything about the source run that has no W&B field, losslessly."""
    return {
        "run_id": src.run_id,
        "run_name": src.run_name,
        "experiment_id": src.experiment_id,
        "experiment_name": src.experiment_name,
        "experiment_lifecycle_stage": src.experiment_stage,
        "tracking_uri": source_uri,
        "user_id": src.user_id,
        "status": src.status,
        "lifecycle_stage": src.lifecycle_stage,
        "start_time": src.start_time,
        "end_time": src.end_time,
        "artifact_uri": _public_uri(src.artifact_uri),
        "parent_run_id": src.parent_run_id,
        "parent_wandb_run_id": parent_wandb_id,
        "root_wandb_run_id": root_wandb_id,
        "source_name": src.tags.get("mlflow.source.name"),
        "source_type": src.tags.get("mlflow.source.type"),
        "git_repo_url": src.tags.get("mlflow.source.git.repoURL"),
        "git_branch": src.tags.get("mlflow.source.git.branch"),
        "tags": dict(sorted(src.tags.items())),
        "datasets": src.datasets,
        "model_inputs": src.model_inputs,
        "logged_models": [
            {"model_id": m.model_id, "name": m.name, "step": m.step,
             "artifact_location": _public_uri(m.artifact_location)}
            for m in models
        ],
        "importer": f"wandb-mirror {__version__}",
    }


def build_config(
    src: SourceRun, section: dict[str, Any]
) -> dict[str, Any]:
    """W&B's wrapped config: params as strings, ``_mlflow`` and a resumable ``_wandb``.

    A param whose name collides with a reserved key (``_mlflow``, ``_wandb``) is kept
    under ``_mlflow.params`` instead of clobbering it.
    """
    config: dict[str, Any] = {}
    clashing = {}
    for key, value in sorted(src.params.items()):
        if key in (CONFIG_KEY, "_wandb"):
            clashing[key] = value
        else:
            config[key] = {"value": value}
    if clashing:
        section = {**section, "params": clashing}
    config[CONFIG_KEY] = {"value": section}
    # The SDK treats a run without _wandb.value.t as nonexistent when asked to resume it.
    config["_wandb"] = {"value": {"t": {"importer": "mlflow"}, "source": "mlflow"}}
    return config


def build_summary(
    src: SourceRun, projection: Projection, runtime: float | None
) -> dict[str, Any]:
    """MLflow's latest value of each metric, plus W&B's ``_step``/``_timestamp``/``_runtime``."""
    summary: dict[str, Any] = {}
    for key, point in sorted(src.latest.items()):
        if key not in RESERVED_KEYS:
            summary[key] = restore_inf(point.value)
    if projection.last_step is not None:
        summary["_step"] = projection.last_step
    if projection.last_timestamp is not None:
        summary["_timestamp"] = projection.last_timestamp / 1000.0
    if runtime is not None:
        summary["_runtime"] = runtime
    summary["_wandb"] = {"runtime": int(runtime) if runtime is not None else 0}
    return summary


def build_record(
    src: SourceRun,
    *,
    entity: str,
    project: str,
    run_id: str,
    config: dict[str, Any],
    summary: dict[str, Any],
    group: str | None,
    projection: Projection,
    file_count: int,
) -> RunRecord:
    """The local run row of an imported MLflow run."""
    start = src.start_time
    ends = [t for t in (src.end_time, projection.last_timestamp, start) if t is not None]
    last_ms = max(ends) if ends else None
    user = src.tags.get("mlflow.user") or src.user_id
    return RunRecord(
        entity=entity,
        project=project,
        run_id=run_id,
        storage_id=run_storage_id(entity, project, run_id),
        display_name=src.run_name or src.tags.get("mlflow.runName") or src.run_id,
        state=map_state(src.status),
        config=config,
        summary=summary,
        tags=wandb_tags(src),
        notes=src.tags.get("mlflow.note.content"),
        group_name=group,
        commit=src.tags.get("mlflow.source.git.commit"),
        username=user,
        user_name=user,
        created_at=wandb_time(start / 1000.0) if start is not None else None,
        heartbeat_at=wandb_time(last_ms / 1000.0) if last_ms is not None else None,
        updated_at=wandb_time(last_ms / 1000.0) if last_ms is not None else None,
        history_line_count=projection.rows,
        events_line_count=0,
        file_count=file_count,
        last_step=projection.last_step,
        history_keys=projection.history_keys(),
        source="mlflow",
    )


def metadata_json(src: SourceRun, runtime: float | None) -> bytes:
    """``wandb-metadata.json``: where W&B shows a run's start, program, git and user."""
    doc: dict[str, Any] = {"source": "mlflow"}
    if src.start_time is not None:
        doc["startedAt"] = _iso_ms(src.start_time)
    if src.tags.get("mlflow.source.name"):
        doc["program"] = src.tags["mlflow.source.name"]
        doc["codePath"] = src.tags["mlflow.source.name"]
    git = {k: src.tags[t] for k, t in (("commit", "mlflow.source.git.commit"),
                                        ("remote", "mlflow.source.git.repoURL"),
                                        ("branch", "mlflow.source.git.branch")) if src.tags.get(t)}
    if git:
        doc["git"] = git
    user = src.tags.get("mlflow.user") or src.user_id
    if user:
        doc["username"] = user
    if runtime is not None:
        doc["runtime"] = runtime
    doc["mlflow"] = {"run_id": src.run_id, "experiment_id": src.experiment_id}
    return (dumps_wire(doc) + "\n").encode("utf-8")


def wanted_files(src: SourceRun, listing: Sequence[ArtifactFile],
                 models: Sequence[LoggedModel]) -> dict[str, tuple[str, str, int | None]]:
    """Run file name -> (artifact root URI, path under it, size) of every file to import."""
    out: dict[str, tuple[str, str, int | None]] = {}
    for a in listing:
        out[artifact_file_name(a.path)] = (src.artifact_uri or "", a.path, a.size)
    for m in models:
        for a in m.files:
            out[model_file_name(m.model_id, a.path)] = (m.artifact_location or "", a.path,
                                                        a.size)
    return out


def artifact_file_name(path: str) -> str:
    return ARTIFACTS_PREFIX + path


def model_file_name(model_id: str, path: str) -> str:
    return f"{MODELS_PREFIX}{model_id}/{path}"


def fingerprint_doc(
    src: SourceRun,
    *,
    entity: str,
    project: str,
    artifacts: Sequence[ArtifactFile] | None,
    models: Sequence[LoggedModel] | None,
    root: str | None,
) -> dict[str, Any]:
    """What a re-import compares: the source state plus the options that shape the result.

    MLflow records no last-update time, so this is built from what ``search_runs``
    returns anyway (info, params, tags, each metric's latest point, inputs, outputs) and
    the artifact listing (paths and sizes). A point added at an earlier step without a
    new latest value is the one change it cannot see; ``force=True`` refetches.
    """
    return {
        "v": MAPPING_VERSION,
        "target": [entity, project],
        "root": root,
        "info": [src.status, src.start_time, src.end_time, src.run_name, src.lifecycle_stage,
                 src.experiment_id, src.experiment_name, src.user_id, src.artifact_uri],
        "params": sorted(src.params.items()),
        "tags": sorted(src.tags.items()),
        "latest": sorted((k, p.step, p.timestamp, repr(p.value)) for k, p in src.latest.items()),
        "inputs": [src.datasets, src.model_inputs],
        "outputs": src.model_outputs,
        "artifacts": None if artifacts is None else sorted((a.path, a.size) for a in artifacts),
        "models": None if models is None else [
            [m.model_id, sorted((a.path, a.size) for a in m.files)] for m in models
        ],
    }


def _iso_ms(ms: int) -> str:
    base = wandb_time(ms / 1000.0)[:-1]
    return f"{base}.{ms % 1000:03d}000Z"


def _public_uri(uri: str | None) -> str | None:
    """An artifact/tracking URI without credentials or query (signed URLs carry tokens)."""
    if not uri:
        return uri
    parts = urlsplit(uri)
    if not parts.scheme or len(parts.scheme) == 1:
        return uri
    return urlunsplit((parts.scheme, parts.netloc.split("@")[-1], parts.path, "", ""))


# --- reports -------------------------------------------------------------------------------


@dataclass
class RunReport:
    """The outcome for one MLflow run. ``status``: imported | updated | unchanged |
    failed | skipped; ``upload``: uploaded | unchanged | pending | failed | None."""

    mlflow_run_id: str
    status: str
    reason: str | None = None
    run_name: str | None = None
    experiment_id: str | None = None
    path: str | None = None  # entity/project/run_id in the store (and on W&B)
    run_pk: int | None = None
    rows: int = 0
    points: int = 0
    files: int = 0
    seconds: float = 0.0
    upload: str | None = None
    upload_reason: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    """Every run's :class:`RunReport`, in the order the runs were given."""

    runs: list[RunReport] = field(default_factory=list)

    def __iter__(self) -> Iterator[RunReport]:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.runs:
            out[r.status] = out.get(r.status, 0) + 1
            if r.upload:
                out[f"upload_{r.upload}"] = out.get(f"upload_{r.upload}", 0) + 1
        return out

    @property
    def failed(self) -> list[RunReport]:
        return [r for r in self.runs if r.status == "failed" or r.upload == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "counts": self.counts(), "runs": [asdict(r) for r in self.runs]}


__all__ = [
    "ARTIFACTS_PREFIX",
    "CONFIG_KEY",
    "MAPPING_VERSION",
    "METADATA_FILE",
    "MLFLOW_STEP",
    "MODELS_PREFIX",
    "POINTS_FILE",
    "ArtifactFile",
    "ImportReport",
    "LoggedModel",
    "Point",
    "Projection",
    "RunReport",
    "SourceRun",
    "artifact_file_name",
    "build_config",
    "build_record",
    "build_summary",
    "exitcode_for",
    "fingerprint_doc",
    "is_remote",
    "latest_point",
    "map_state",
    "metadata_json",
    "mlflow_section",
    "model_file_name",
    "needs_renumbering",
    "normalize_tracking_uri",
    "point_line",
    "points_from_history",
    "project_for_experiment",
    "project_history",
    "restore_inf",
    "runtime_seconds",
    "same_latest",
    "wandb_run_id",
    "wandb_tags",
    "wanted_files",
]
