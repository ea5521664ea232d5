"""``api.runs(path, filters, order)``: the matching runs of a project, loaded lazily.

The filter and order are compiled to SQL when ``api.runs()`` is called (a bad filter
fails there, naming the problem). On first use, ONE query filters and sorts the project
and returns the matching primary keys; pages of ``per_page`` runs are then read by key.
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
        while True:
            pks = self._matching()
            start = len(self.objects)
            wanted = pks[start : start + self.per_page]
            if not wanted:
                return []
            with self._api._session() as s:
                records = reads.runs_by_pk(s, wanted)
                overlay.overlay_stored(s, records)
            if len(records) < len(wanted):  # deleted since the snapshot: forget their keys
                kept = {stored.record.pk for stored in records}
                rest = pks[start + len(wanted) :]
                self._pks = pks[:start] + [pk for pk in wanted if pk in kept] + rest
            if records:
                return [Run(self._api, rec) for rec in records]

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
