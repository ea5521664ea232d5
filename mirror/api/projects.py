"""``api.projects(entity)`` and ``api.project(name, entity)`` over the projects the store holds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mirror.api.paging import Paginator
from mirror.api.sweeps import Sweep
from mirror.records import ProjectRecord
from mirror.store import runs as store_runs

if TYPE_CHECKING:
    from mirror.api.api import Api


class Project:
    """A project (``entity/name``); reads nothing until an attribute needs the store."""

    def __init__(self, api: Api, entity: str, name: str, record: ProjectRecord | None = None):
        self._api = api
        self.entity = entity
        self.name = name
        self._record = record

    def _rec(self) -> ProjectRecord:
        if self._record is None:
            with self._api._session() as s:
                found = store_runs.get_project(s, self.entity, self.name)
            self._record = found or ProjectRecord(entity=self.entity, name=self.name)
        return self._record

    @property
    def id(self) -> str | None:
        return self._rec().upstream_id

    @property
    def created_at(self) -> str | None:
        return self._rec().created_at

    @property
    def description(self) -> str | None:
        return self._rec().description

    @property
    def is_benchmark(self) -> bool:
        return self._rec().is_benchmark

    @property
    def read_only(self) -> bool:
        return self._rec().read_only

    @property
    def path(self) -> list[str]:
        return [self.entity, self.name]

    @property
    def url(self) -> str:
        return self._api.app_url + "/".join([*self.path, "workspace"])

    def sweeps(self, per_page: int = 50) -> list[Sweep]:
        """The project's sweeps, oldest first."""
        with self._api._session() as s:
            records = store_runs.list_sweeps(s, self.entity, self.name)
        return [Sweep(self._api, rec) for rec in records]

    def runs(self, **kwargs: Any) -> Any:
        """Shortcut for ``api.runs("entity/name", ...)``."""
        return self._api.runs(f"{self.entity}/{self.name}", **kwargs)

    def __repr__(self) -> str:
        return f"<Project {self.entity}/{self.name}>"


class Projects(Paginator[Project]):
    """The projects of an entity, by name."""

    def __init__(self, api: Api, entity: str, per_page: int = 200) -> None:
        super().__init__(per_page)
        self._api = api
        self.entity = entity
        self._all: list[ProjectRecord] | None = None

    def _records(self) -> list[ProjectRecord]:
        if self._all is None:
            with self._api._session() as s:
                self._all = store_runs.list_projects(s, self.entity)
        return self._all

    def _load_next_page(self) -> list[Project]:
        start = len(self.objects)
        page = self._records()[start : start + self.per_page]
        return [Project(self._api, rec.entity, rec.name, rec) for rec in page]

    def _length(self) -> int:
        return len(self._records())

    def __repr__(self) -> str:
        return f"<Projects {self.entity}>"
