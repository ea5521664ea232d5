"""The ``Query`` root: viewer, projects, legacy aliases and server info."""

from __future__ import annotations

from typing import Any

import mirror
from mirror.server.resolvers import project as proj
from mirror.server.resolvers.common import Connection, RequestContext

SERVER_FEATURES: tuple[tuple[str, bool], ...] = (
    # wandb 0.31 commits uploads of a finished run with markRunFilesUploaded only when
    # this is on; without it the file would never be registered by the client.
    ("MARK_RUN_FILES_UPLOADED", True),
    # Off: wandb-core then strips $filters from GetSweeps; we do not filter sweeps.
    ("SWEEPS_QUERY_FILTERING", False),
    # Off: the file_stream endpoint is not promised to accept gzip bodies.
    ("FILESTREAM_GZIP", False),
)
"""``serverInfo.features``: names of ``ServerFeature`` in wandb's protobuf enum."""


class QueryRoot:
    """Root value of queries; each method is a field of ``type Query``."""

    def __init__(self, rc: RequestContext) -> None:
        self.rc = rc

    def viewer(self, entity_name: str | None = None) -> proj.UserNode:
        """The key's owner. Reaching a resolver means the HTTP layer accepted the key."""
        return proj.viewer(self.rc)

    def project(self, name: str | None = None,
                entity_name: str | None = None) -> proj.ProjectNode | None:
        if not name:
            return None
        return proj.project_node(self.rc, entity_name or self.rc.server.entity, name)

    def model(self, name: str | None = None,
              entity_name: str | None = None) -> proj.ProjectNode | None:
        return self.project(name, entity_name)

    def models(self, entity_name: str | None = None, before: str | None = None,
               after: str | None = None, first: int | None = None, last: int | None = None,
               order: str | None = None, anonymous: bool | None = None) -> Connection:
        """``api.projects(entity)``: the entity's projects by name."""
        return proj.project_connection(self.rc, entity_name or self.rc.server.entity,
                                       after, first)

    def entity(self, name: str | None = None, login: bool | None = None) -> proj.EntityNode:
        return proj.EntityNode(self.rc, name or self.rc.server.entity)

    def server_info(self) -> dict[str, Any]:
        version = mirror.__version__
        return {
            # wandb 0.22.3 reads max_cli_version from it; {} means "no constraint".
            "cliVersionInfo": {},
            "latestLocalVersionInfo": {
                "outOfDate": False,
                "latestVersionString": version,
                "versionOnThisInstanceString": version,
            },
            "features": [{"name": n, "isEnabled": on} for n, on in SERVER_FEATURES],
        }
