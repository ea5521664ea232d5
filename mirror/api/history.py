"""``run.history()`` and ``run.scan_history()``: metric rows, sampled or streamed.

Semantics are wandb's (wandb-protocol.md 4.5-4.7), with the server's choices where
wandb leaves them open, so that ``mirror.Api`` and the official client pointed at
``mirror serve`` return the same rows:

* ``history(samples=N)`` returns at most N rows picked by
  :func:`~mirror.sampling.sample_evenly` (evenly spaced over the row index, first
  and last kept, deterministic). W&B's own server picks "some" N rows; that choice is not
  part of its contract, so only the mirror and ``mirror serve`` are guaranteed to agree.
* With ``keys``, only rows that hold every key and ``x_axis`` (a present ``null``
  counts, as in ``mirror serve``) are sampled, and each keeps only those keys.
* ``stream="events"`` (any stream but ``"default"``) reads the system-metrics rows.
* ``scan_history`` streams every row in step order, ``min_step`` inclusive, ``max_step``
  exclusive and capped at ``lastHistoryStep + 1``, one short read per page, so memory
  stays at one page however long the run is. With ``keys``, rows hold ``_step`` plus
  the keys (what wandb-core asks the server for).
* Deliberate difference: ``keys`` that are not a list of strings, or ``keys`` with a
  non-default stream, raise ``ValueError``; wandb's ``history()`` prints an error and
  returns ``[]``, which silently turns a typo into an empty export.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from mirror.sampling import sample_evenly
from mirror.store import reads

if TYPE_CHECKING:
    import pandas as pd

    from mirror.api.run import Run

Row = dict[str, Any]


def check_keys(keys: Any) -> list[str] | None:
    """``keys`` as a list of strings (wandb accepts a list only; we also take a tuple)."""
    if keys is None:
        return None
    if isinstance(keys, (str, bytes)) or not isinstance(keys, (list, tuple)):
        raise ValueError("keys must be specified in a list")
    if not all(isinstance(k, str) for k in keys):
        raise ValueError("keys argument must be a list of strings")
    return list(keys)


def sampled_rows(
    run: Run,
    samples: int | None = 500,
    keys: Sequence[str] | None = None,
    x_axis: str = "_step",
    stream: str = "default",
) -> list[Row]:
    """The rows ``run.history(..., pandas=False)`` returns."""
    keys = check_keys(keys)
    if keys and stream != "default":
        raise ValueError("stream must be default when specifying keys")
    if samples is not None and samples <= 0:
        return []
    if stream != "default":
        return _sampled_events(run, samples)
    if not keys:
        return _sampled_history(run, samples, ())
    wanted = list(dict.fromkeys([x_axis, *keys]))
    return [{k: row[k] for k in wanted} for row in _sampled_history(run, samples, wanted)]


def _sampled_history(run: Run, samples: int | None, keys: Sequence[str]) -> list[Row]:
    """Full rows chosen among those holding ``keys``: from metadata if it proves the run
    is complete and contiguous (no scan), else from the listed steps (exact)."""
    rec = run._record_with("history_keys")  # the metadata the fast path checks
    assert rec.pk is not None
    with run._api._session() as s:
        if samples is not None:
            span = reads.complete_step_range(s, rec, keys)
            if span is not None:
                steps = [span.first + i for i in sample_evenly(span.count, samples)]
                rows = reads.history_rows_at(s, rec.pk, steps)
                if len(rows) == len(steps) and all(_holds(row, keys) for row in rows):
                    return rows
        steps = reads.history_steps(s, rec.pk, keys)
        if samples is not None and len(steps) > samples:
            steps = [steps[i] for i in sample_evenly(len(steps), samples)]
        return reads.history_rows_at(s, rec.pk, steps)


def _sampled_events(run: Run, samples: int | None) -> list[Row]:
    pk = run._record.pk
    assert pk is not None
    with run._api._session() as s:
        n = reads.event_count(s, pk)
        if samples is None or n <= samples:
            return reads.events_at(s, pk)
        return reads.events_at(s, pk, sample_evenly(n, samples))


def _holds(row: Row, keys: Sequence[str]) -> bool:
    return all(k in row for k in keys)


def to_frame(rows: list[Row]) -> pd.DataFrame:
    """Rows as a DataFrame, exactly as wandb builds it (``DataFrame.from_records``)."""
    import pandas as pd  # imported on use: it takes a while and many reads never need it

    return pd.DataFrame.from_records(rows)


class HistoryScan(Iterable[Row]):
    """Every history row of a run in step order, fetched a page at a time.

    Each ``for`` loop starts over (as with wandb's ``HistoryScan``); ``next(scan)`` also
    works. Pages are keyset reads (``step >= next``) of ``page_size`` rows, each in its
    own short transaction, so a long scan neither holds a snapshot open nor keeps more
    than one page in memory.
    """

    def __init__(
        self,
        run: Run,
        *,
        min_step: int | None,
        max_step: int,
        keys: list[str] | None,
        page_size: int,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self.run = run
        self.min_step = min_step
        self._stop_step = max_step
        self.keys = keys
        self.page_size = page_size
        self._rows: Iterator[Row] | None = None

    @property
    def max_step(self) -> int:
        """The highest step this scan can yield."""
        return self._stop_step - 1

    def __iter__(self) -> Iterator[Row]:
        # A plain generator, not ``self``: no wrapper call per row on the hot path.
        return self._scan()

    def __next__(self) -> Row:
        if self._rows is None:
            self._rows = self._scan()
        return next(self._rows)

    def _scan(self) -> Iterator[Row]:
        pk = self.run._record.pk
        assert pk is not None
        wanted = list(dict.fromkeys(["_step", *self.keys])) if self.keys else None
        start = self.min_step
        while start is None or start < self._stop_step:
            with self.run._api._session() as s:
                page = reads.history_page(
                    s,
                    pk,
                    min_step=start,
                    max_step=self._stop_step,
                    limit=self.page_size,
                    keys=wanted or (),
                )
            if wanted is None:
                yield from page.rows()
            else:
                for row in page.rows():
                    yield {k: row[k] for k in wanted}
            if page.last_step is None or len(page) < self.page_size:
                return
            start = page.last_step + 1

    def __repr__(self) -> str:
        return f"<HistoryScan {'/'.join(self.run.path)} steps<{self._stop_step}>"
