"""``Project``, ``Sweep``, ``User`` and ``Entity`` objects of the GraphQL API.

``Project.runs``/``runCount`` take W&B's Mongo-style ``filters`` (a JSON string) and
``+field``/``-field`` ``order``, compiled by :mod:`mirror.store.filters` (nulls last, so
``sweep.best_run()`` picks a run that has the metric). Run pages use keyset cursors (the
last run's sort-key values, pk included), so paging survives runs being deleted or added
meanwhile; projects and sweeps, small and rarely edited, use positional cursors.
"""

from __future__ import annotations

import math
from typing import Any

import yaml
from graphql import GraphQLError

from mirror.records import ProjectRecord, SweepRecord
from mirror.server.resolvers import run as run_mod
from mirror.server.resolvers.common import (
    EPOCH,
    Connection,
    RequestContext,
    b64,
    offset_connection,
    page_limit,
    parse_json_input,
    parse_run_cursor,
    run_cursor,
)
from mirror.store import queries
from mirror.store import runs as store_runs

# --- users and entities -------------------------------------------------------------------


class UserNode:
    """A user. The viewer is the server's one user; run owners are named by the run."""

    def __init__(self, rc: RequestContext, *, username: str, name: str | None = None,
                 viewer: bool = False) -> None:
        self.rc = rc
        self.username = username
        self.name = name or username
        self.id = b64(f"User:{username}")
        self.email = f"{username}@localhost"
        self.entity = rc.server.entity if viewer else username
        self.admin = False
        self.flags = "{}"  # a JSON string, never null: wandb 0.22.3 json.loads() it
        self.deleted_at = None

    def api_keys(self) -> dict[str, Any]:
        """One key entry, described but never shown (the key itself is never sent)."""
        return {"edges": [{"node": {"id": b64("ApiKey:mirror"), "name": "mirror-serve",
                                    "description": "API key of this mirror server"}}]}

    def teams(self, before: str | None = None, after: str | None = None,
              first: int | None = None, last: int | None = None) -> dict[str, Any]:
        return {"edges": []}


def viewer(rc: RequestContext) -> UserNode:
    return UserNode(rc, username=rc.server.username, viewer=True)


class EntityNode:
    def __init__(self, rc: RequestContext, name: str) -> None:
        self.rc = rc
        self.name = name
        self.id = b64(f"Entity:{name}")
        self.is_team = False

    def projects(self, before: str | None = None, after: str | None = None,
                 first: int | None = None, last: int | None = None,
                 order: str | None = None) -> Connection:
        return project_connection(self.rc, self.name, after, first)


def project_connection(rc: RequestContext, entity: str, after: str | None,
                       first: int | None) -> Connection:
    """The projects of an entity by name (``models`` / ``Entity.projects``)."""

    def fetch(offset: int, limit: int | None) -> list[ProjectNode]:
        rows = queries.list_projects_with_pk(rc.session, entity, offset=offset, limit=limit)
        return [ProjectNode(rc, pk, rec) for pk, rec in rows]

    return offset_connection(
        fetch, after, first,
        count=lambda: len(queries.list_projects_with_pk(rc.session, entity)),
    )


# --- projects -----------------------------------------------------------------------------


def _project_lookup(rc: RequestContext, entity: str, name: str) -> tuple[int, ProjectRecord] | None:
    key = ("project", entity, name)
    if key not in rc.cache:
        rc.cache[key] = queries.get_project_with_pk(rc.session, entity, name)
    found: tuple[int, ProjectRecord] | None = rc.cache[key]
    return found


def project_node(rc: RequestContext, entity: str, name: str) -> ProjectNode | None:
    found = _project_lookup(rc, entity, name)
    return None if found is None else ProjectNode(rc, found[0], found[1])


def project_int_id(rc: RequestContext, entity: str, name: str) -> int:
    """Upstream's numeric ``internalId`` when known and numeric, else our pk (0 if none)."""
    found = _project_lookup(rc, entity, name)
    if found is None:
        return 0
    pk, rec = found
    return int(rec.internal_id) if rec.internal_id and rec.internal_id.isdigit() else pk


def _filters(raw: Any) -> Any:
    """The ``filters`` argument: a JSON string (or, leniently, an object); ``{}`` = none."""
    value = parse_json_input(raw, "filters")
    if value is not None and not isinstance(value, dict):
        raise GraphQLError("filters must be a JSON object")
    return value or None


def runs_connection(rc: RequestContext, entity: str, project: str, filters: Any,
                    order: str | None, after: str | None, first: int | None) -> Connection:
    """A page of runs with keyset cursors (the run's sort-key values, opaque to clients).

    Positional ``cursor:N`` cursors (what simple stubs hand out) are accepted too.
    """
    values, offset = parse_run_cursor(after)
    limit = page_limit(first)
    try:
        rows = queries.run_page(rc.session, entity, project, filters=filters, order=order,
                                after=values, offset=offset,
                                limit=None if limit is None else limit + 1)
    except ValueError as exc:  # a cursor made for another order
        raise GraphQLError(f"invalid cursor {after!r} for order {order!r}") from exc
    has_next = limit is not None and len(rows) > limit
    if has_next:
        rows = rows[:limit]
    return Connection(
        [run_mod.RunNode(rc, rec) for rec, _ in rows],
        [run_cursor(keys) for _, keys in rows],
        has_next,
        after is not None,
        count=lambda: queries.count_project_runs(rc.session, entity, project, filters),
    )


class ProjectNode:
    """One project (``Project`` type)."""

    def __init__(self, rc: RequestContext, pk: int, rec: ProjectRecord) -> None:
        self.rc = rc
        self.pk = pk
        self.rec = rec
        self.id = rec.upstream_id or b64(f"Project:{pk}")
        self.internal_id = (
            rec.internal_id if rec.internal_id and rec.internal_id.isdigit() else str(pk)
        )
        self.name = rec.name
        self.entity_name = rec.entity
        self.description = rec.description
        self.created_at = rec.created_at or EPOCH
        self.updated_at = None
        self.is_benchmark = bool(rec.is_benchmark)
        self.read_only = bool(rec.read_only)

    def entity(self) -> EntityNode:
        return EntityNode(self.rc, self.rec.entity)

    def user(self) -> UserNode:
        return viewer(self.rc)

    def run_count(self, filters: Any = None) -> int:
        return queries.count_project_runs(self.rc.session, self.rec.entity, self.rec.name,
                                          _filters(filters))

    def runs(self, filters: Any = None, order: str | None = None, before: str | None = None,
             after: str | None = None, first: int | None = None,
             last: int | None = None) -> Connection:
        return runs_connection(self.rc, self.rec.entity, self.rec.name, _filters(filters),
                               order, after, first)

    def run(self, name: str) -> run_mod.RunNode | None:
        return run_mod.run_node(self.rc, self.rec.entity, self.rec.name, name)

    def bucket(self, name: str, missing_ok: bool | None = None) -> run_mod.RunNode | None:
        return self.run(name)

    def total_sweeps(self) -> int:
        return len(store_runs.list_sweeps(self.rc.session, self.rec.entity, self.rec.name))

    def sweeps(self, filters: Any = None, order: str | None = None, before: str | None = None,
               after: str | None = None, first: int | None = None,
               last: int | None = None) -> Connection:
        """Sweeps oldest first. ``filters`` is not applied (SWEEPS_QUERY_FILTERING is off)."""
        rc, entity, name = self.rc, self.rec.entity, self.rec.name

        def fetch(offset: int, limit: int | None) -> list[SweepNode]:
            recs = store_runs.list_sweeps(rc.session, entity, name)
            end = None if limit is None else offset + limit
            return [SweepNode(rc, r) for r in recs[offset:end]]

        return offset_connection(fetch, after, first, count=self.total_sweeps)

    def sweep(self, sweep_name: str) -> SweepNode | None:
        return sweep_node(self.rc, self.rec.entity, self.rec.name, sweep_name)


# --- sweeps -------------------------------------------------------------------------------


def sweep_node(rc: RequestContext, entity: str, project: str, sweep_id: str) -> SweepNode | None:
    rec = store_runs.get_sweep(rc.session, entity, project, sweep_id)
    return None if rec is None else SweepNode(rc, rec)


class SweepNode:
    """One sweep (``Sweep`` type); ``config`` is the YAML text, as W&B sends it."""

    def __init__(self, rc: RequestContext, rec: SweepRecord) -> None:
        self.rc = rc
        self.rec = rec
        self.id = rec.upstream_id or b64(f"Sweep:{rec.entity}:{rec.project}:{rec.sweep_id}")
        self.name = rec.sweep_id
        self.display_name = rec.display_name
        self.state = rec.state or "FINISHED"
        self.description = rec.description
        self.config = rec.config or ""
        self.created_at = rec.created_at or EPOCH
        self.updated_at = rec.updated_at
        self.run_count_expected = rec.run_count_expected

    def _parsed(self) -> dict[str, Any]:
        try:
            doc = yaml.safe_load(self.config) if self.config else None
        except yaml.YAMLError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def method(self) -> str:
        if self.rec.method:
            return self.rec.method
        method = self._parsed().get("method")
        return str(method) if method else "grid"

    def run_count(self) -> int:
        r = self.rec
        return queries.count_sweep_runs(self.rc.session, r.entity, r.project, r.sweep_id)

    def best_loss(self) -> float | None:
        """The stored value, else the best ``metric.name`` summary value over the runs."""
        if self.rec.best_loss is not None:
            return self.rec.best_loss
        metric = self._parsed().get("metric")
        if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
            return None
        r = self.rec
        values = []
        for run in queries.runs_of_sweep(self.rc.session, r.entity, r.project, r.sweep_id):
            v = (run.summary or {}).get(metric["name"])
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                values.append(float(v))
        if not values:
            return None
        return max(values) if metric.get("goal") == "maximize" else min(values)

    def runs(self, filters: Any = None, order: str | None = None, before: str | None = None,
             after: str | None = None, first: int | None = None,
             last: int | None = None) -> Connection:
        extra = _filters(filters)
        clauses: list[Any] = [{"sweep": self.rec.sweep_id}]
        if extra:
            clauses.append(extra)
        return runs_connection(self.rc, self.rec.entity, self.rec.project,
                               {"$and": clauses}, order, after, first)
