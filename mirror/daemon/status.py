"""What the daemon is doing, for ``mirror status``: a small JSON file next to the store.

Why a file and not a row in the store: the daemon updates its status after every tick,
and a database write per tick would wake every process watching the database for local
edits (the daemon included) and grow the WAL for nothing. The file is replaced atomically
(write a temp file, rename), so a reader never sees half of it and a SIGKILL mid-write
leaves the previous version. Whether the daemon *runs* is never read from this file: it
is the OS lock (:mod:`mirror.daemon.lock`), which dies with the process.

:func:`daemon_status` is the one entry point for ``mirror status``::

    >>> info = daemon_status(settings)
    >>> info["running"], info["pid"], info["last_error"]
    (True, 4242, {'at': 1700000000.0, 'where': 'push', 'message': '...'})
    >>> for line in format_status(info): print(line)
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mirror.daemon.lock import holder_pid, lock_path, state_base
from mirror.settings import Settings

__all__ = ["StatusBoard", "daemon_status", "format_status", "log_path", "status_path"]


def status_path(settings: Settings) -> Path:
    base = state_base(settings)
    return base.with_name(base.name + ".daemon.json")


def log_path(settings: Settings) -> Path:
    """The daemon's log file (rotated): ``$MIRROR_HOME/logs/daemon.log``."""
    return settings.home / "logs" / "daemon.log"


class StatusBoard:
    """The live status: sections of plain JSON values, written through to the file.

    Thread-safe; each :meth:`update` rewrites the file (it is small, a few hundred bytes).
    """

    def __init__(self, path: Path, initial: Mapping[str, Any] | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, Any] = dict(initial or {})

    def update(self, section: str | None = None, /, **fields: Any) -> None:
        """Merge ``fields`` into ``section`` (a dict), or at the top level."""
        with self._lock:
            if section is None:
                self._data.update(fields)
            else:
                current = self._data.get(section)
                merged = dict(current) if isinstance(current, dict) else {}
                merged.update(fields)
                self._data[section] = merged
            self._write()

    def replace(self, section: str, value: Any) -> None:
        with self._lock:
            self._data[section] = value
            self._write()

    def error(self, where: str, message: str, *, at: float | None = None) -> None:
        """Remember the last error (shown by ``mirror status`` until a later success)."""
        self.update(last_error={"at": at or time.time(), "where": where, "message": message})

    def clear_error(self, where: str) -> None:
        """A success of ``where`` clears the last error if ``where`` caused it."""
        with self._lock:
            err = self._data.get("last_error")
            if isinstance(err, dict) and err.get("where") == where:
                self._data["last_error"] = None
                self._write()

    def get(self) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self._data, default=str))

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._data, indent=1, default=str, allow_nan=False),
                           encoding="utf-8")
            os.replace(tmp, self.path)
        except (OSError, ValueError):  # status is best effort; the log has the details
            try:
                tmp.unlink()
            except OSError:
                pass


def read_status_file(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def daemon_status(settings: Settings, *, now: float | None = None) -> dict[str, Any]:
    """Whether a daemon serves the store of ``settings``, and what it did last.

    Keys (all present; values None when unknown): ``running`` (bool, from the OS lock),
    ``pid``, ``started_at``, ``stopped_at``, ``clean_stop`` (False when the last daemon
    died without stopping, e.g. SIGKILL: harmless, the next start recovers), ``online``,
    ``offline_since``, ``last_pull``, ``last_push``, ``last_import``, ``last_ingest`` (dicts
    with ``at``, ``ok`` and counts), ``next_attempt`` (epoch seconds of the next network
    attempt) and ``next_attempt_in`` (seconds), ``last_error`` (``{at, where, message}``),
    ``uploads`` (drop folder: ``dir``, ``ingested``, ``unknown`` and ``rejected`` files),
    ``log_file``, ``status_file``, ``lock_file``. Times are epoch seconds.
    """
    now = time.time() if now is None else now
    path = status_path(settings)
    lock = lock_path(settings)
    pid = holder_pid(lock)
    data = read_status_file(path) or {}
    running = pid is not None
    out: dict[str, Any] = {
        "running": running,
        "pid": (pid or data.get("pid")) if running else None,
        "started_at": data.get("started_at"),
        "stopped_at": None if running else data.get("stopped_at"),
        "clean_stop": None,
        "online": data.get("online") if running else None,
        "offline_since": data.get("offline_since") if running else None,
        "last_pull": data.get("last_pull"),
        "last_push": data.get("last_push"),
        "last_import": data.get("last_import"),
        "last_ingest": data.get("last_ingest"),
        "next_attempt": None,
        "next_attempt_in": None,
        "last_error": data.get("last_error"),
        "uploads": data.get("uploads"),
        "log_file": data.get("log_file") or str(log_path(settings)),
        "status_file": str(path),
        "lock_file": str(lock),
    }
    if not running and data:
        out["clean_stop"] = bool(data.get("stopped_at"))
    if running:
        nexts = [v for v in (data.get("next_attempt") or {}).values()
                 if isinstance(v, int | float)]
        if nexts:
            out["next_attempt"] = min(nexts)
            out["next_attempt_in"] = round(max(0.0, min(nexts) - now), 1)
    return out


def _when(ts: Any, now: float) -> str:
    if not isinstance(ts, int | float):
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    delta = now - ts
    if abs(delta) < 1:
        rel = "now"
    elif delta > 0:
        rel = f"{_span(delta)} ago"
    else:
        rel = f"in {_span(-delta)}"
    return f"{stamp} ({rel})"


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def format_status(info: Mapping[str, Any], *, now: float | None = None) -> list[str]:
    """Human lines for ``mirror status`` (one fact per line, no colour)."""
    now = time.time() if now is None else now
    lines: list[str] = []
    if info.get("running"):
        state = "online" if info.get("online") else (
            f"offline since {_when(info.get('offline_since'), now)}"
            if info.get("online") is False else "starting")
        lines.append(f"daemon: running (pid {info.get('pid')}), {state}")
    else:
        how = ""
        if info.get("clean_stop") is False:
            how = " (last run ended without a clean stop; the next start recovers)"
        elif info.get("stopped_at"):
            how = f" (stopped {_when(info.get('stopped_at'), now)})"
        lines.append(f"daemon: not running{how}")
    pull = info.get("last_pull") or {}
    push = info.get("last_push") or {}
    imp = info.get("last_import")
    pull_note = "" if pull.get("ok", True) else f" ({pull.get('error') or 'with errors'})"
    push_note = "" if push.get("ok", True) else f" ({push.get('error') or 'not all acknowledged'})"
    lines.append(f"last pull: {_when(pull.get('at'), now)}{pull_note}")
    lines.append(f"last push: {_when(push.get('at'), now)}{push_note}")
    if isinstance(imp, dict):
        lines.append(f"last mlflow import: {_when(imp.get('at'), now)}")
    ingest = info.get("last_ingest")
    if isinstance(ingest, dict):
        lines.append(f"last wandb offline ingest: {_when(ingest.get('at'), now)}")
    if info.get("running"):
        lines.append(f"next attempt: {_when(info.get('next_attempt'), now)}")
    err = info.get("last_error")
    if isinstance(err, dict) and err.get("message"):
        lines.append(f"last error: [{err.get('where')}] {err.get('message')} "
                     f"({_when(err.get('at'), now)})")
    uploads = info.get("uploads") or {}
    unknown = uploads.get("unknown") or []
    rejected = uploads.get("rejected") or []
    if unknown:
        lines.append(f"drop folder: {len(unknown)} file(s) for unknown runs wait in "
                     f"{uploads.get('dir')}: {', '.join(unknown[:5])}"
                     + (" ..." if len(unknown) > 5 else ""))
    if rejected:
        lines.append(f"drop folder: {len(rejected)} file(s) refused: "
                     + "; ".join(f"{r.get('path')}: {r.get('reason')}" for r in rejected[:3]))
    lines.append(f"log: {info.get('log_file')}")
    return lines
