"""``api.runs(path, filters, order)``: the matching runs of a project, loaded lazily.

The filter and order are compiled to SQL when ``api.runs()`` is called (a bad filter
fails there, naming the problem). On first use, ONE query filters and sorts the project
and returns the matching primary keys; runs are then read by key, at least
``READ_AHEAD`` at a time, and handed out ``per_page`` at a time.
So ``len()``, iteration and indexing agree with each other (they all see that snapshot),
and a 10,000-run project is filtered and sorted once, not once per page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from mirror.api import history as _history
from mirror.api.errors import ProjectNotFoundError
from mirror.api.paging import Paginator
from mirror.api.run import Run
from mirror.outbox import overlay
from mirror.store import reads

if TYPE_CHECKING:
    from mirror.api.api import Api

HistoryFormat = Literal["default", "pandas", "polars"]

READ_AHEAD = 500


class Runs(Paginator[Run]):
    """A lazy list of :class:`Run` (iterate, ``len()``, index, slice)."""

    def __init__(
        self,
        api: Api,
        entity: str,
        project: str,
        filters: Mapping[str, Any] | None = None,
        order: str = "+created_at",
        per_page: int = 50,
    ) -> None:
        super().__init__(per_page)
        self._api = api
        self.entity = entity
        self.project = project
        self.filters = dict(filters or {})
        self.order = order or "+created_at"
        self._query = reads.compile_runs_query(self.filters, self.order)
        self._pks: list[int] | None = None
        self._ahead: list[reads.StoredRun] = []  # read, not yet handed out as Run objects

    def _matching(self) -> list[int]:
        """The matching runs' keys in order, read once (the snapshot pages come from)."""
        if self._pks is None:
            with self._api._session() as s:
                pks = reads.run_pks(s, self.entity, self.project, self._query)
                if not pks and not reads.project_known(s, self.entity, self.project):
                    raise ProjectNotFoundError(f"Could not find project {self.project}")
            self._pks = pks
        return self._pks

    def _load_next_page(self) -> list[Run]:
        page: list[Run] = []
        while len(page) < self.per_page:
            if not self._ahead and not self._read_ahead(handed=len(page)):
                break
            take = self._ahead[: self.per_page - len(page)]
            del self._ahead[: len(take)]
            page.extend(Run(self._api, stored) for stored in take)
        return page

    def _read_ahead(self, handed: int) -> bool:
        """Read (and overlay) the next runs of the snapshot; False when none are left.

        At least ``READ_AHEAD`` runs per read, whatever ``per_page`` is: a read costs a
        query for the runs and one for their pending edits, and wandb's default page of
        50 would pay that 200 times over 10,000 runs. Runs deleted since the snapshot are
        dropped from it, so ``len()`` and indexes stay consistent. ``handed``: runs of the
        page being built (taken from the read-ahead, not yet in ``objects``).
        """
        pks = self._matching()
        start = len(self.objects) + handed + len(self._ahead)
        wanted = pks[start : start + max(self.per_page, READ_AHEAD)]
        if not wanted:
            return False
        with self._api._session() as s:
            records = reads.runs_by_pk(s, wanted)
            overlay.overlay_stored(s, records)
        if len(records) < len(wanted):  # deleted since the snapshot: forget their keys
            kept = {stored.record.pk for stored in records}
            rest = pks[start + len(wanted) :]
            self._pks = pks[:start] + [pk for pk in wanted if pk in kept] + rest
        self._ahead.extend(records)
        return True

    def _more_after(self, page: list[Run]) -> bool:
        return len(self.objects) < len(self._matching())

    def _length(self) -> int:
        return len(self._matching())

    def histories(
        self,
        samples: int = 500,
        keys: list[str] | None = None,
        x_axis: str = "_step",
        format: HistoryFormat = "default",
        stream: str = "default",
    ) -> Any:
        """Sampled history of every run, for bulk export (wandb's ``Runs.histories``).

        Each row gets a ``run_id``. ``format="default"`` gives a list of dicts,
        ``"pandas"`` one DataFrame with columns sorted by name, ``"polars"`` a polars
        DataFrame (if polars is installed); runs without matching rows are skipped.
        """
        if format not in ("default", "pandas", "polars"):
            raise ValueError(
                f"Invalid format: {format}. Must be one of 'default', 'pandas', 'polars'"
            )
        rows: list[dict[str, Any]] = []
        for run in self:
            for row in _history.sampled_rows(run, samples, keys, x_axis, stream):
                row["run_id"] = run.id
                rows.append(row)
        if format == "default":
            return rows
        if format == "pandas":
            frame = _history.to_frame(rows)
            return frame[sorted(frame.columns)].reset_index(drop=True)
        try:
            import polars as pl
        except ImportError as exc:
            raise ImportError("format='polars' needs polars: pip install polars") from exc
        if not rows:
            return pl.DataFrame()
        frame_pl = pl.from_dicts(rows, infer_schema_length=None)
        return frame_pl.select(sorted(frame_pl.columns))

    def upgrade_to_full(self) -> None:
        """Kept for wandb compatibility: mirror runs are always complete."""

    def __repr__(self) -> str:
        return f"<Runs {self.entity}/{self.project}>"
