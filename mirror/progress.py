"""Progress bars for long work (rich), on stderr so ``--json`` output stays clean."""

from __future__ import annotations

import threading
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)


class SyncProgress:
    """Implements :class:`mirror.sync.engine.Progress`: runs bar, rows and bytes counters."""

    def __init__(self, console: Console, *, enabled: bool = True) -> None:
        self._lock = threading.Lock()
        self._rows = 0
        self._bytes = 0
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not enabled,
        )
        self._task = self._bar.add_task("runs", total=0, detail="")

    def __enter__(self) -> SyncProgress:
        self._bar.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._bar.stop()

    def _detail(self) -> str:
        return f"{self._rows:,} rows, {self._bytes / 1e6:,.1f} MB"

    def runs(self, n: int) -> None:
        with self._lock:
            total = (self._bar.tasks[0].total or 0) + n
            self._bar.update(self._task, total=total, detail=self._detail())

    def run_done(self) -> None:
        with self._lock:
            self._bar.update(self._task, advance=1, detail=self._detail())

    def rows(self, n: int) -> None:
        with self._lock:
            self._rows += n
            self._bar.update(self._task, detail=self._detail())

    def bytes(self, n: int) -> None:
        with self._lock:
            self._bytes += n
            self._bar.update(self._task, detail=self._detail())
