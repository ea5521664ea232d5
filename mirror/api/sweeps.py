"""``api.sweep(path)``: a sweep, its runs, and its best run by the sweep's own metric.

``best_run()`` orders the sweep's runs the way wandb does (wandb-protocol.md 4.14): by
the config's ``metric.name``, ascending for ``goal: minimize`` (the default) and
descending for ``maximize``, through wandb's ``QueryGenerator.format_order_key`` rules
(a bare name means ``summary_metrics.<name>``), and runs lacking the metric come last.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any, NoReturn

import yaml

from mirror.api.errors import OfflineEditUnavailable
from mirror.api.run import Run
from mirror.api.runs import Runs
from mirror.records import SweepRecord

if TYPE_CHECKING:
    from mirror.api.api import Api

_RUN_COLUMNS = ("createdAt", "updatedAt", "name", "sweep")
_KNOWN_PREFIXES = ("config", "summary_metrics", "tags")


def format_order_key(key: str) -> str | None:
    """wandb's ``QueryGenerator.format_order_key``, quirks included.

    ``"loss"`` -> ``"-summary_metrics.loss"`` (no sign means descending),
    ``"+val.loss"`` -> ``"+summary_metrics.val.loss"``, ``"-config.lr"`` unchanged. A bare
    run column (``"+createdAt"``) gives None, which wandb then sends as no order at all,
    i.e. the default ``+created_at``.
    """
    direction = "-"
    if key.startswith(("+", "-")):
        direction, key = key[0], key[1:]
    parts = key.split(".")
    if len(parts) == 1:
        if parts[0] not in _RUN_COLUMNS:
            return f"{direction}summary_metrics.{parts[0]}"
        return None
    if parts[0] not in _KNOWN_PREFIXES:
        return direction + ".".join(["summary_metrics", *parts])
    return direction + ".".join(parts)


class Sweep:
    """A sweep of the local store, shaped like ``wandb.apis.public.Sweep``."""

    def __init__(self, api: Api, record: SweepRecord) -> None:
        self._api = api
        self._record = record
        self.id = record.sweep_id
        self.entity = record.entity
        self.project = record.project
        self._attrs: dict[str, Any] = {
            "id": record.upstream_id,
            "name": record.sweep_id,
            "displayName": record.display_name,
            "method": record.method,
            "state": record.state,
            "description": record.description,
            "bestLoss": record.best_loss,
            "config": record.config,
            "createdAt": record.created_at,
            "updatedAt": record.updated_at,
            "runCount": record.run_count,
            "runCountExpected": record.run_count_expected,
        }
        self.runs = self._runs(order="+created_at", per_page=10)

    def _runs(self, order: str | None, per_page: int) -> Runs:
        return Runs(
            self._api,
            self.entity,
            self.project,
            filters={"$and": [{"sweep": self.id}]},
            order=order or "+created_at",
            per_page=per_page,
        )

    @property
    def config(self) -> dict[str, Any]:
        """The sweep configuration (its YAML, parsed)."""
        text = self._record.config
        doc = yaml.safe_load(text) if text else None
        return doc if isinstance(doc, dict) else {}

    @property
    def order(self) -> str | None:
        """The order ``best_run()`` uses: from the config's ``metric`` name and goal."""
        metric = self.config.get("metric")
        if not isinstance(metric, dict) or "name" not in metric:
            return None
        prefix = "+" if metric.get("goal", "minimize") == "minimize" else "-"
        return format_order_key(prefix + str(metric["name"]))

    def best_run(self, order: str | None = None) -> Run | None:
        """The sweep's best run by ``order`` (default: the config's metric), or None.

        Without an order and without a metric in the config, the oldest run (wandb's
        behaviour, whatever its warning says).
        """
        key = self.order if order is None else format_order_key(order)
        try:
            return self._runs(order=key, per_page=1)[0]
        except IndexError:
            return None

    @property
    def name(self) -> str:
        """Display name, else the config's ``name``, else the sweep id."""
        return str(self._attrs["displayName"] or self.config.get("name") or self.id)

    @property
    def state(self) -> str | None:
        return self._record.state

    @property
    def expected_run_count(self) -> int | None:
        return self._record.run_count_expected

    @property
    def path(self) -> list[str]:
        return [urllib.parse.quote_plus(p) for p in (self.entity, self.project, self.id)]

    @property
    def url(self) -> str:
        path = self.path
        path.insert(2, "sweeps")
        return self._api.app_url + "/".join(path)

    def enqueue_run(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise OfflineEditUnavailable(f"sweep.enqueue_run() of sweep {'/'.join(self.path)}")

    def __getattr__(self, name: str) -> Any:
        attrs = self.__dict__.get("_attrs")
        if attrs is not None and not name.startswith("__"):
            head, *rest = name.split("_")
            for key in (head + "".join(p.title() for p in rest), name):
                if key in attrs:
                    return attrs[key]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"<Sweep {'/'.join(self.path)} ({self.state or 'Unknown State'})>"
