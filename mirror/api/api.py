"""``Api``: the entry point, a drop-in for ``wandb.Api`` that reads the local store.

A script changes ``import wandb; api = wandb.Api()`` into ``from mirror import Api;
api = Api()`` and keeps working offline: the same paths, arguments, objects and
attribute names, answered from SQLite instead of W&B's servers.

``Api()`` is the edge of the program (DESIGN.md): it builds the :class:`Settings` from
the environment once (``MIRROR_HOME``/``MIRROR_DB_URL`` say where the store is,
``WANDB_ENTITY``/``WANDB_PROJECT`` give default path parts, ``WANDB_BASE_URL`` the host
that run URLs name) and nothing below it reads ``os.environ``. It does no I/O: the store
is opened on the first read, so constructing an ``Api`` never fails for lack of one.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, NoReturn

from mirror.api.errors import (
    NotMirroredError,
    OfflineEditUnavailable,
    RunNotFoundError,
    SweepNotFoundError,
)
from mirror.api.projects import Project, Projects
from mirror.api.run import Run
from mirror.api.runs import Runs
from mirror.api.sweeps import Sweep
from mirror.errors import ConfigError
from mirror.outbox import overlay
from mirror.records import SweepRecord
from mirror.settings import Settings
from mirror.store import Store, open_store, reads
from mirror.store import runs as store_runs

UNCATEGORIZED = "uncategorized"


class Api:
    """Query the local mirror the way ``wandb.Api`` queries W&B.

    Args:
        overrides: ``base_url``, ``entity`` and ``project`` as in wandb (defaults for
            paths that leave them out), plus ``store``: the path of the store file to
            read instead of the one ``MIRROR_HOME``/``MIRROR_DB_URL`` name.
        timeout: accepted for compatibility; reads are local and do not time out.
        api_key: accepted for compatibility (kept for fetching uncached files later).
        settings: explicit settings instead of the environment (tests, embedding).
        store: an already open store to read (it is not closed by :meth:`close`).

    Objects are cached per ``Api`` like wandb's (a run read twice is the same object);
    :meth:`flush` drops the cache so the next read sees what sync wrote meanwhile.

    Example::

        from mirror import Api

        api = Api()
        run = api.run("my-team/my-project/1a2b3c4d")
        print(run.summary["loss"], run.history(keys=["loss"]).tail())
    """

    def __init__(
        self,
        overrides: Mapping[str, Any] | None = None,
        timeout: int | None = None,
        api_key: str | None = None,
        *,
        settings: Settings | None = None,
        store: Store | None = None,
    ) -> None:
        base = settings if settings is not None else Settings.from_env()
        extra = dict(overrides or {})
        store_path = extra.pop("store", None)
        base = replace(
            base,
            base_url=str(extra.get("base_url") or base.base_url).rstrip("/"),
            entity=extra.get("entity") or base.entity,
            project=extra.get("project") or base.project,
            api_key=api_key or base.api_key,
        )
        if store_path is not None:
            base = base.with_store(store_path)
        self._settings = base
        # wandb.Api keeps its settings as a plain dict that scripts read; so do we.
        self.settings: dict[str, Any] = {
            **extra,
            "base_url": base.base_url,
            "entity": base.entity,
            "project": base.project,
        }
        self.api_key = base.api_key
        self._timeout = timeout
        self._store = store
        self._owns_store = store is None
        self._runs: dict[str, Any] = {}
        self._sweeps: dict[str, Sweep] = {}
        self._projects: dict[str, Projects] = {}
        self._default_entity: str | None = None

    # --- plumbing shared by the objects ------------------------------------------------

    @property
    def store(self) -> Store:
        """The store this ``Api`` reads, opened on first use (never created by a read)."""
        if self._store is None:
            self._store = open_store(self._settings, create=False)
        return self._store

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """One short read transaction: a consistent snapshot for one answer."""
        with self.store.session() as session:
            yield session

    @property
    def app_url(self) -> str:
        """The W&B web app URL (with a trailing slash) that run and sweep URLs start with."""
        return app_url(self._settings.base_url) + "/"

    def close(self) -> None:
        """Close the store if this ``Api`` opened it."""
        if self._store is not None and self._owns_store:
            self._store.close()
            self._store = None

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        # Never the full URL: a database URL can carry a password before the "@".
        where = self._store.where if self._store is not None else self._settings.db_url
        return f"<mirror.Api {where.split('@')[-1]}>"

    # --- defaults and paths ------------------------------------------------------------

    @property
    def default_entity(self) -> str | None:
        """The entity used when a path leaves it out.

        wandb asks the server whose key this is; offline, ``WANDB_ENTITY`` (or the
        ``entity`` override) says it, else the store's only entity if it holds just one.
        """
        if self._settings.entity:
            return self._settings.entity
        if self._default_entity is None:
            with self._session() as s:
                entities = reads.known_entities(s)
            if len(entities) == 1:
                self._default_entity = entities[0]
        return self._default_entity

    def _parse_project_path(self, path: str | None) -> tuple[str, str]:
        """``(entity, project)`` of ``"entity/project"`` or ``"project"`` (wandb's rules)."""
        project = self._settings.project or UNCATEGORIZED
        entity: str | None = None
        if path:
            parts = path.strip("/ ").split("/", 1)
            if len(parts) == 1:
                project = parts[0]
            else:
                entity, project = parts[0], parts[1]
        entity = entity or self.default_entity
        if not entity:
            raise ConfigError(
                f"no entity in {path!r} and no default entity",
                hint="Pass 'entity/project', set WANDB_ENTITY, or Api(overrides={'entity': ...}).",
            )
        return entity, project

    def _parse_path(self, path: str) -> tuple[str, str, str]:
        """``(entity, project, id)`` of a run or sweep path, accepting wandb's spellings:
        ``entity/project/id``, ``entity/project/runs/id`` (a URL path),
        ``entity/project:id``, ``project/id``, ``project:id`` and ``id``."""
        try:
            return parse_path(path, self._settings.entity, self._settings.project)
        except ValueError:
            # Only a path without an entity needs the default one (which reads the store).
            default = None if self._settings.entity else self.default_entity
            if default is None:
                raise
            return parse_path(path, default, self._settings.project)

    # --- the API ----------------------------------------------------------------------

    def runs(
        self,
        path: str | None = None,
        filters: Mapping[str, Any] | None = None,
        order: str = "+created_at",
        per_page: int = 50,
        include_sweeps: bool = False,
        lazy: bool = True,
    ) -> Runs:
        """The runs of a project matching ``filters``, in ``order``, loaded lazily.

        Args:
            path: ``"entity/project"`` (or ``"project"`` with a default entity).
            filters: MongoDB-style, as wandb: ``{"state": "finished"}``,
                ``{"config.lr": {"$gt": 0.01}}``, ``{"$or": [...]}``; operators
                ``$and $or $nor $eq $ne $gt $gte $lt $lte $in $nin $exists $regex``;
                fields ``name``, ``displayName``, ``state``, ``tags``, ``createdAt``,
                ``heartbeatAt``, ``group``, ``jobType``, ``username``, ``sweep``,
                ``config.<key>``, ``summary_metrics.<key>`` (nested keys dotted). They
                run in SQL; an unknown field or operator raises ``FilterError`` here.
            order: ``"+field"`` ascending or ``"-field"`` descending, on the same
                fields (``created_at``, ``summary_metrics.acc``...); runs without a
                value come last.
            per_page: how many runs one page loads.
            include_sweeps, lazy: accepted for compatibility (runs are always complete).

        Returns:
            A :class:`Runs`: iterate it, ``len()`` it, index or slice it.
        """
        entity, project = self._parse_project_path(path)
        key = (path or "") + str(filters or {}) + str(order)
        cached = self._runs.get(key)
        if isinstance(cached, Runs):
            return cached
        runs = Runs(self, entity, project, filters=filters, order=order, per_page=per_page)
        self._runs[key] = runs
        return runs

    def run(self, path: str = "") -> Run:
        """The run at ``"entity/project/run_id"``.

        Raises:
            RunNotFoundError: a ``CommError`` (and ``ValueError``), as wandb raises, when
                the store does not hold the run.
        """
        entity, project, run_id = self._parse_path(path)
        cached = self._runs.get(path)
        if isinstance(cached, Run):
            return cached
        run = Run(self, self._load_run(entity, project, run_id))
        self._runs[path] = run
        return run

    def _load_run(self, entity: str, project: str, run_id: str) -> reads.StoredRun:
        """The stored run with the user's unsettled edits laid over it (read-your-writes)."""
        with self._session() as s:
            stored = reads.get_run(s, entity, project, run_id)
            if stored is not None:
                overlay.overlay_stored(s, [stored])
        if stored is None or stored.record.tombstoned:
            quoted = "/".join(urllib.parse.quote(p, safe="") for p in (entity, project, run_id))
            raise RunNotFoundError(f"Could not find run <Run {quoted} (not found)>")
        return stored

    def sweep(self, path: str = "") -> Sweep:
        """The sweep at ``"entity/project/sweep_id"``, with ``.runs`` and ``.best_run()``.

        Raises:
            SweepNotFoundError: a ``CommError`` (and ``ValueError``) when not stored.
        """
        entity, project, sweep_id = self._parse_path(path)
        cached = self._sweeps.get(path)
        if cached is not None:
            return cached
        sweep = Sweep(self, self._load_sweep(entity, project, sweep_id))
        self._sweeps[path] = sweep
        return sweep

    def _load_sweep(self, entity: str, project: str, sweep_id: str) -> SweepRecord:
        with self._session() as s:
            rec = store_runs.get_sweep(s, entity, project, sweep_id)
        if rec is None:
            quoted = "/".join(urllib.parse.quote_plus(p) for p in (entity, project, sweep_id))
            raise SweepNotFoundError(f"Could not find sweep <Sweep {quoted} (Unknown State)>")
        return rec

    def projects(self, entity: str | None = None, per_page: int = 200) -> Projects:
        """The projects of ``entity`` (default: the default entity) the store holds."""
        if entity is None:
            entity = self.default_entity
            if entity is None:
                raise ValueError("entity must be passed as a parameter, or set in settings")
        if entity not in self._projects:
            self._projects[entity] = Projects(self, entity, per_page=per_page)
        return self._projects[entity]

    def project(self, name: str, entity: str | None = None) -> Project:
        """The project ``entity/name``; like wandb, nothing is read until it is used."""
        if entity is None:
            entity = self.default_entity
        if entity is None:
            raise ValueError("entity must be passed as a parameter, or set in settings")
        return Project(self, entity, name)

    def from_path(self, path: str) -> Project | Run | Sweep:
        """A project, run or sweep from its path or URL path, as wandb's ``from_path``."""
        parts = path.strip("/ ").split("/")
        if len(parts) == 1:
            return self.project(parts[0])
        if len(parts) == 2:
            return self.project(parts[1], parts[0])
        if len(parts) == 3:
            return self.run(path)
        if len(parts) == 4 and parts[2].startswith("run"):
            return self.run(path)
        if len(parts) == 4 and parts[2].startswith("sweep"):
            return self.sweep(path)
        raise ValueError(
            "Invalid path, should be TEAM/PROJECT/TYPE/ID where TYPE is runs or sweeps"
        )

    def flush(self) -> None:
        """Forget cached runs, sweeps and projects: the next reads see the store anew."""
        self._runs.clear()
        self._sweeps.clear()
        self._projects.clear()
        self._default_entity = None

    # --- writes and what the mirror does not hold ---------------------------------------

    def create_run(self, **kwargs: Any) -> NoReturn:
        raise OfflineEditUnavailable("api.create_run()")

    def create_project(self, name: str, entity: str) -> NoReturn:
        raise OfflineEditUnavailable("api.create_project()")

    def artifact(self, name: str, type: str | None = None) -> NoReturn:
        raise NotMirroredError("artifacts")

    def artifacts(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotMirroredError("artifacts")

    def reports(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotMirroredError("reports")


def parse_path(path: str, entity: str | None, project: str | None) -> tuple[str, str, str]:
    """wandb's ``Api._parse_path``: ``(entity, project, id)``, defaults filling the gaps.

    Raises ``ValueError("Invalid path: ...")`` with wandb's wording when a part is missing.
    """
    input_path = path
    run_id: str | None = None
    path = path.replace("/runs/", "/").replace("/sweeps/", "/").strip("/ ")
    parts = path.split("/")
    if len(parts) == 4 and parts[2] == "runs":
        entity, project, run_id = parts[0], parts[1], parts[3]
    elif len(parts) == 3:
        entity, project, run_id = parts
    elif len(parts) == 2:
        if ":" in parts[1]:
            entity = parts[0]
            project, run_id = parts[1].split(":", maxsplit=1)
        else:
            project, run_id = parts
    elif len(parts) == 1 and parts[0]:
        if ":" in parts[0]:
            project, run_id = parts[0].split(":", maxsplit=1)
        else:
            run_id = parts[0]
    entity = entity and entity.strip()
    project = project and project.strip()
    run_id = run_id and run_id.strip()
    if not entity:
        raise ValueError(f"Invalid path: {input_path!r} (missing entity)")
    if not project:
        raise ValueError(f"Invalid path: {input_path!r} (missing project)")
    if not run_id:
        raise ValueError(f"Invalid path: {input_path!r}")
    return entity, project, run_id


def app_url(base_url: str) -> str:
    """The web app URL of an API URL, by wandb's classic rules (no trailing slash).

    ``https://api.wandb.ai`` -> ``https://wandb.ai``; ``https://api.corp.com`` ->
    ``https://app.corp.com``; anything else (a local server) is its own app URL.
    """
    if "://api.wandb." in base_url:
        return base_url.replace("://api.", "://", 1).rstrip("/")
    if "://api." in base_url:
        return base_url.replace("://api.", "://app.", 1).rstrip("/")
    return base_url.rstrip("/")

