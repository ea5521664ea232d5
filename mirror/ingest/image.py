"""What the records of an offline run say about it, folded record by record.

A :class:`RunImage` starts empty (first ingest) or from what the store already holds
(the run row, plus the small carry-over kept in the ingest cursor), and each
:meth:`RunImage.apply` folds one ``Record`` in, the way the SDK's sender would have
turned it into server state:

* ``run``: ids, entity/project, display name, group, job type, notes, tags, host, git
  commit, sweep, start time, the initial config;
* ``history``: one full row (nested keys rebuilt, ``_step`` from the record if missing);
* ``summary`` / ``config``: updates and removals by (nested) key, in order;
* ``stats``: one system-metrics row (``system.<key>``, ``_timestamp``, ``_runtime``,
  ``_wandb: true``), as the events stream spells it;
* ``output_raw`` / ``output``: console text, cut into ``output.log`` lines as the SDK
  streams them (``<UTC time> text``, ``ERROR <UTC time> text`` for stderr; a ``\\r``
  rewrites the line being written);
* ``telemetry`` / ``metric`` / ``environment``: ``config._wandb`` (``t``, ``m``, ``e``,
  versions) and ``wandb-metadata.json``;
* ``files``: which files of ``files/`` the run saved (paths or globs);
* ``exit`` / ``preempting``: the state.

Values are JSON texts in the records; they are decoded exactly (bare ``NaN`` and
``Infinity`` included) by :func:`mirror.store.codec.loads_wire`: a history row's values
are joined into one JSON object text and decoded once, and summary updates (the SDK
writes one per step) are kept as text until :meth:`RunImage.fold_summary`, which decodes
only the last value of each key. New history rows, events and output lines accumulate
until the caller drains them into the store.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mirror.ingest.records import encode_proto, message_dict
from mirror.store.codec import loads_wire

__all__ = ["RunImage", "state_of"]

_RECORDS_SEEN = ("run", "history", "summary", "config", "stats", "output_raw", "output",
                 "telemetry", "metric", "environment", "exit", "preempting", "files",
                 "header", "footer", "final", "request")


def _path(item: Any) -> tuple[str, ...]:
    # tuple(): reading a repeated field builds a wrapper; this is its cheapest copy
    return tuple(item.nested_key) or (item.key,)


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        nxt = doc.get(key)
        if not isinstance(nxt, dict):
            nxt = doc[key] = {}
        doc = nxt
    doc[path[-1]] = value


def _remove(doc: dict[str, Any], path: tuple[str, ...]) -> None:
    for key in path[:-1]:
        nxt = doc.get(key)
        if not isinstance(nxt, dict):
            return
        doc = nxt
    doc.pop(path[-1], None)


_KEY_TEXT: dict[str, str] = {}


def _key_text(key: str) -> str:
    text = _KEY_TEXT.get(key)
    if text is None:
        text = json.dumps(key)
        if len(_KEY_TEXT) < 100_000:
            _KEY_TEXT[key] = text
    return text


def _object_text(node: dict[str, Any]) -> str:
    return "{" + ",".join(
        f"{_key_text(k)}:{v if isinstance(v, str) else _object_text(v)}"
        for k, v in node.items()) + "}"


def _items(items: Any) -> dict[str, Any]:
    """A history row from its items: one JSON text decoded once (not one per value)."""
    raw: dict[str, Any] = {}
    for item in items:
        path = _path(item)
        if len(path) == 1:
            raw[path[0]] = item.value_json
        else:
            _set(raw, path, item.value_json)
    value = loads_wire(_object_text(raw))
    return value if isinstance(value, dict) else {}


_REMOVED = object()


def _seconds(ts: Any) -> float | None:
    """A protobuf Timestamp as epoch seconds (None when unset)."""
    if not ts.seconds and not ts.nanos:
        return None
    return float(ts.seconds) + ts.nanos / 1e9


def _console_time(ts: Any) -> str:
    seconds = _seconds(ts)
    when = datetime.fromtimestamp(seconds if seconds is not None else time.time(),
                                  tz=timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f")


def state_of(exit_code: int | None, preempting: bool) -> str:
    """The run state the server would give: from the exit record, else still running."""
    if exit_code is not None:
        return "finished" if exit_code == 0 else "failed"
    return "preempting" if preempting else "running"


@dataclass
class RunImage:
    """An offline run as folded so far; see the module docstring."""

    run_id: str | None = None
    entity: str | None = None
    project: str | None = None
    display_name: str | None = None
    group: str | None = None
    job_type: str | None = None
    notes: str | None = None
    tags: list[str] = field(default_factory=list)
    host: str | None = None
    commit: str | None = None
    sweep: str | None = None
    start_time: float | None = None
    config: dict[str, Any] = field(default_factory=dict)  # plain values, _wandb included
    summary: dict[str, Any] = field(default_factory=dict)  # see fold_summary()
    _pending: dict[tuple[str, ...], Any] = field(default_factory=dict, repr=False)
    environment: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    exit_runtime: float | None = None
    preempting: bool = False
    last_time: float | None = None  # the newest record timestamp seen
    history_count: int = 0
    last_step: int | None = None
    events_count: int = 0
    output_lines: int = 0
    partial: list[Any] | None = None  # [stderr?, time, text] of the line being written
    saved: list[str] = field(default_factory=list)  # paths/globs of `files` records
    new_history: list[dict[str, Any]] = field(default_factory=list)
    new_events: list[dict[str, Any]] = field(default_factory=list)
    latest_event: dict[str, Any] | None = None  # the newest events row read by this pass
    new_output: list[str] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)

    @property
    def state(self) -> str:
        return state_of(self.exit_code, self.preempting)

    # --- the carry-over kept in the ingest cursor ------------------------------------------

    def carry(self) -> dict[str, Any]:
        """What the next incremental ingest needs and the run row does not hold."""
        return {
            "run_id": self.run_id, "entity": self.entity, "project": self.project,
            "start_time": self.start_time, "environment": self.environment,
            "history_count": self.history_count, "last_step": self.last_step,
            "events_count": self.events_count, "output_lines": self.output_lines,
            "partial": self.partial, "saved": self.saved, "exit_code": self.exit_code,
            "exit_runtime": self.exit_runtime, "preempting": self.preempting,
            "last_time": self.last_time,
        }

    def restore(self, carry: dict[str, Any]) -> None:
        for key, value in carry.items():
            if hasattr(self, key) and not key.startswith(("new_", "latest_", "_")):
                setattr(self, key, value)

    # --- folding ------------------------------------------------------------------------

    def apply(self, record: Any) -> None:
        kind = record.WhichOneof("record_type")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            if kind not in _RECORDS_SEEN:
                self.ignored[str(kind)] = self.ignored.get(str(kind), 0) + 1
            return
        handler(getattr(record, kind))

    def _on_run(self, run: Any) -> None:
        self.run_id = run.run_id or self.run_id
        self.entity = run.entity or self.entity
        self.project = run.project or self.project
        self.display_name = run.display_name or self.display_name
        self.group = run.run_group or self.group
        self.job_type = run.job_type or self.job_type
        self.notes = run.notes or self.notes
        if len(run.tags):
            self.tags = list(run.tags)
        self.host = run.host or self.host
        self.sweep = run.sweep_id or self.sweep
        if run.git.commit:
            self.commit = run.git.commit
        start = _seconds(run.start_time)
        if start is not None and self.start_time is None:
            self.start_time = start
        self._config_update(run.config)
        self._on_summary(run.summary)

    def _config_update(self, rec: Any) -> None:
        for item in rec.update:
            path = _path(item)
            value = loads_wire(item.value_json)
            if path == ("_wandb",) and isinstance(value, dict):
                current = self.config.get("_wandb")
                value = {**value, **current} if isinstance(current, dict) else value
            _set(self.config, path, value)
        for item in rec.remove:
            _remove(self.config, _path(item))

    def _on_config(self, rec: Any) -> None:
        self._config_update(rec)

    def _on_summary(self, rec: Any) -> None:
        # The SDK writes a summary update for every step; only the last operation on each
        # key matters, so values are kept as JSON text and decoded once, by fold_summary()
        # (re-inserting a key keeps the order of last operations, which is equivalent).
        pending = self._pending
        for item in rec.update:
            path = _path(item)
            pending.pop(path, None)
            pending[path] = item.value_json
        for item in rec.remove:
            path = _path(item)
            pending.pop(path, None)
            pending[path] = _REMOVED

    def fold_summary(self) -> dict[str, Any]:
        """The summary with every update read so far applied, in order."""
        for path, raw in self._pending.items():
            if raw is _REMOVED:
                _remove(self.summary, path)
            else:
                _set(self.summary, path, loads_wire(raw))
        self._pending.clear()
        return self.summary

    def _on_history(self, rec: Any) -> None:
        row = _items(rec.item)
        step = row.get("_step")
        if not isinstance(step, int) or isinstance(step, bool):
            step = int(step) if isinstance(step, float) and step == int(step) \
                else int(rec.step.num)
            row["_step"] = step
        ts = row.get("_timestamp")
        if isinstance(ts, int | float):
            self.last_time = float(ts)
        self.new_history.append(row)
        self.history_count += 1
        self.last_step = step if self.last_step is None else max(self.last_step, step)

    def _on_stats(self, rec: Any) -> None:
        row: dict[str, Any] = {f"system.{item.key}": loads_wire(item.value_json)
                               for item in rec.item}
        ts = _seconds(rec.timestamp)
        if ts is not None:
            row["_timestamp"] = ts
            self.last_time = ts
            if self.start_time is not None:
                row["_runtime"] = max(0.0, ts - self.start_time)
        row["_wandb"] = True
        self.new_events.append(row)
        self.latest_event = row
        self.events_count += 1

    def _on_output_raw(self, rec: Any) -> None:
        stderr = rec.output_type == 0  # OutputType.STDERR
        for i, text in enumerate(rec.line.replace("\r\n", "\n").split("\n")):
            if i > 0:  # a newline ended the line being written
                self._end_line(stderr, rec.timestamp)
            if not text:
                continue
            if self.partial is None:
                self.partial = [stderr, _console_time(rec.timestamp), ""]
            if "\r" in text:  # a carriage return rewrites the line
                text = text.rsplit("\r", 1)[1]
                self.partial[2] = ""
            self.partial[2] += text

    _on_output = _on_output_raw

    def _end_line(self, stderr: bool, ts: Any) -> None:
        if self.partial is None:  # an empty line
            self.partial = [stderr, _console_time(ts), ""]
        is_err, when, text = self.partial
        self.new_output.append(f"ERROR {when} {text}" if is_err else f"{when} {text}")
        self.output_lines += 1
        self.partial = None

    def flush_output(self) -> None:
        """The run ended: its unfinished console line is a line too."""
        if self.partial is not None and self.partial[2]:
            self._end_line(self.partial[0], None)
        self.partial = None

    def _on_telemetry(self, rec: Any) -> None:
        wb = self._wandb_config()
        wb["t"] = encode_proto(rec)
        if rec.cli_version:
            wb["cli_version"] = rec.cli_version
        if rec.python_version:
            wb["python_version"] = rec.python_version

    def _on_metric(self, rec: Any) -> None:
        wb = self._wandb_config()
        metrics = wb.setdefault("m", [])
        metrics.append(encode_proto(rec))

    def _on_environment(self, rec: Any) -> None:
        doc = message_dict(rec)
        writer = doc.get("writerId") or ""
        self.environment.update(doc)
        wb = self._wandb_config()
        per_writer = wb.setdefault("e", {})
        per_writer[writer] = {**per_writer.get(writer, {}), **doc}
        wb.setdefault("m", [])

    def _on_files(self, rec: Any) -> None:
        for item in rec.files:
            if item.path and item.path not in self.saved:
                self.saved.append(item.path)

    def _on_exit(self, rec: Any) -> None:
        self.exit_code = int(rec.exit_code)
        self.exit_runtime = float(rec.runtime)
        self.flush_output()

    def _on_preempting(self, rec: Any) -> None:
        self.preempting = True

    def _wandb_config(self) -> dict[str, Any]:
        wb = self.config.get("_wandb")
        if not isinstance(wb, dict):
            wb = self.config["_wandb"] = {}
        return wb

    # --- draining -------------------------------------------------------------------------

    def take_history(self) -> list[dict[str, Any]]:
        rows, self.new_history = self.new_history, []
        return rows

    def take_events(self) -> list[dict[str, Any]]:
        rows, self.new_events = self.new_events, []
        return rows

