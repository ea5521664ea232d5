"""`mirror sync`: resolve what to sync, build the client, run each project, report.

Targets are ``entity/project`` (one project) or ``entity`` (every project of the entity);
no target means every project synced before from this base URL. Each project is one
:class:`~mirror.sync.engine.ProjectSync`; a project that fails is reported and the others
go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from mirror.errors import ConfigError, MirrorError
from mirror.records import FileRecord
from mirror.settings import Settings
from mirror.store import Store, blobs, syncstate
from mirror.sync.download_process import ChildConfig, DownloadProcess
from mirror.sync.engine import Progress, ProjectReport, ProjectSync, SyncOptions
from mirror.upstream.client import WandbClient


@dataclass
class SyncReport:
    projects: list[ProjectReport] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # "entity/project" -> why

    @property
    def ok(self) -> bool:
        return not self.errors and not any(p.failed for p in self.projects)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "projects": [p.as_dict() for p in self.projects],
            "errors": self.errors,
        }


def resolve_targets(store: Store, client: WandbClient, targets: Sequence[str],
                    settings: Settings) -> list[tuple[str, str]]:
    """``entity/project`` pairs for the given targets (see the module docstring)."""
    if not targets:
        with store.session() as s:
            known = syncstate.synced_projects(s, client.base_url)
        if not known:
            raise ConfigError(
                "nothing to sync: no project was synced before from " + client.base_url,
                hint="Name one: mirror sync ENTITY/PROJECT (or ENTITY for all its projects).",
            )
        return known
    out: list[tuple[str, str]] = []
    for target in targets:
        parts = [p for p in target.strip("/").split("/") if p]
        if len(parts) == 2:
            out.append((parts[0], parts[1]))
        elif len(parts) == 1:
            for page in client.iter_projects(parts[0]):
                out.extend((p.entity, p.name) for p in page)
        else:
            raise ConfigError(
                f"not a project path: {target!r}",
                hint="Use ENTITY/PROJECT or ENTITY.",
            )
    return out


def make_downloader(store: Store, client: WandbClient):  # type: ignore[no-untyped-def]
    """Downloads verified into the blob cache, one network pass, nothing recorded yet."""

    def download(url: str, f: FileRecord) -> blobs.BlobInfo:
        def fetch(sink: IO[bytes]) -> object:
            return client.download(url, sink)

        return blobs.put_download(store, fetch, f.size_bytes, f.md5)

    return download


def sync(
    store: Store,
    settings: Settings,
    targets: Sequence[str],
    options: SyncOptions | None = None,
    progress: Progress | None = None,
    client: WandbClient | None = None,
) -> SyncReport:
    """Sync every target project; never raises for one failing project."""
    own_client = client is None
    client = client or WandbClient(settings)
    report = SyncReport()
    # A caller's own client may carry a retry policy or limits a child could not copy:
    # then every download stays in this process.
    timeout = client.session.timeout
    config = ChildConfig(client.base_url, settings.api_key, store.url,
                         (timeout.connect, timeout.read),
                         min(8, (options or SyncOptions()).download_workers))

    def starter() -> DownloadProcess:
        return DownloadProcess(config)

    try:
        for entity, project in resolve_targets(store, client, targets, settings):
            job = ProjectSync(store, client, make_downloader(store, client), client.base_url,
                              entity, project, options, progress,
                              start_process=starter if own_client else None)
            try:
                report.projects.append(job.run())
            except MirrorError as exc:
                report.errors[f"{entity}/{project}"] = exc.message
    finally:
        if own_client:
            client.close()
    return report
