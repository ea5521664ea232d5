"""``Run`` and ``File`` objects of the GraphQL API.

A :class:`RunNode` wraps one :class:`~mirror.records.RunRecord`; each GraphQL field is a
method or attribute (``summaryMetrics`` -> ``summary_metrics``). Values follow W&B's wire
conventions (``wandb-protocol.md`` 4.4 and 7): ``config``/``summaryMetrics``/
``systemMetrics`` are JSON *strings* (config in W&B's wrapped ``{"k": {"value", "desc"}}``
form, exactly as stored), ``historyKeys`` is inline JSON, and non-finite floats are written
as bare ``NaN``/``Infinity`` as the SDK writes them.
"""

from __future__ import annotations

from typing import Any

from mirror.outbox import overlay
from mirror.paths import run_storage_id
from mirror.records import FileRecord, RunRecord
from mirror.server.resolvers import history as hist
from mirror.server.resolvers import project as proj
from mirror.server.resolvers.common import (
    EPOCH,
    Connection,
    RequestContext,
    file_id,
    json_string,
    name_after,
    name_cursor,
    page_limit,
    pick_keys,
)
from mirror.store import blobs, queries
from mirror.store import runs as store_runs


class RunNode:
    """One run (``Run`` type)."""

    def __init__(self, rc: RequestContext, rec: RunRecord) -> None:
        assert rec.pk is not None
        if not rc.server.authoritative:  # the drop-in shows its user's pending edits
            overlay.overlay_records(rc.session, [rec])
        self.rc = rc
        self.rec = rec
        self.pk: int = rec.pk
        self.name = rec.run_id
        self.display_name = rec.display_name
        self.description = rec.description
        self.notes = rec.notes
        self.tags = list(rec.tags or [])
        self.state = rec.state
        self.group = rec.group_name
        self.job_type = rec.job_type
        self.commit = rec.commit
        self.host = rec.host
        self.sweep_name = rec.sweep_name
        self.read_only = rec.read_only
        self.stopped = False
        self.created_at = rec.created_at or EPOCH
        self.updated_at = rec.updated_at
        self.heartbeat_at = rec.heartbeat_at
        self.compute_seconds = None

    # --- identity ---------------------------------------------------------------------

    def id(self) -> str:
        """Upstream's storage id when we have it, else W&B's own formula (decodable)."""
        r = self.rec
        return r.storage_id or run_storage_id(r.entity, r.project, r.run_id)

    def project_id(self) -> int:
        """``Project.internalId`` as an int (the client ``int()``s it for deleteFiles)."""
        return proj.project_int_id(self.rc, self.rec.entity, self.rec.project)

    def project(self) -> Any:
        return proj.project_node(self.rc, self.rec.entity, self.rec.project)

    def user(self) -> proj.UserNode:
        r, server = self.rec, self.rc.server
        username = r.username or server.username
        return proj.UserNode(self.rc, username=username, name=r.user_name or username)

    def sweep(self) -> Any:
        if not self.rec.sweep_name:
            return None
        return proj.sweep_node(self.rc, self.rec.entity, self.rec.project, self.rec.sweep_name)

    # --- documents --------------------------------------------------------------------

    def config(self, keys: list[str] | None = None) -> str:
        return json_string(pick_keys(self.rec.config or {}, keys))

    def summary_metrics(self, keys: list[str] | None = None) -> str:
        return json_string(pick_keys(self.rec.summary or {}, keys))

    def system_metrics(self) -> str | None:
        """``null`` when we hold none, so a pull copies exactly what the store had.

        (``config`` and ``summaryMetrics`` answer ``"{}"`` instead: resume needs them.)
        """
        value = self.rec.system_metrics
        return None if value is None else json_string(value)

    def wandb_config(self, keys: list[str] | None = None) -> str:
        """The listed keys of ``config._wandb.value`` (resume reads ``t``)."""
        wb = (self.rec.config or {}).get("_wandb")
        value = wb.get("value", wb) if isinstance(wb, dict) else {}
        return json_string(pick_keys(value if isinstance(value, dict) else {}, keys))

    # --- history ----------------------------------------------------------------------

    def history_line_count(self) -> int | None:
        return hist.history_line_count(self.rc, self.rec)

    def events_line_count(self) -> int:
        """Stored line count (file_stream keeps it at "highest index + 1"), else rows held."""
        if self.rec.events_line_count is not None:
            return self.rec.events_line_count
        return queries.event_count(self.rc.session, self.pk)

    def log_line_count(self) -> int:
        """Lines of ``output.log`` (resume continues the console stream there)."""
        rec = store_runs.get_file(self.rc.session, self.pk, "output.log")
        store = self.rc.server.store
        if rec is None or rec.tombstoned or not rec.blob_hash:
            return 0
        if not blobs.has_blob(store, rec.blob_hash):
            return 0
        return blobs.read_blob(store, rec.blob_hash).count(b"\n")

    def history_keys(self) -> dict[str, Any]:
        return hist.history_keys(self.rc, self.rec)

    def history(
        self, samples: int | None = None, min_step: int | None = None, max_step: int | None = None
    ) -> list[str]:
        return hist.history(self.rc, self.pk, samples, min_step, max_step)

    def events(self, samples: int | None = None) -> list[str]:
        return hist.events(self.rc, self.pk, samples)

    def sampled_history(self, specs: list[Any]) -> list[list[Any]]:
        return hist.sampled_history(self.rc, self.pk, specs)

    def parquet_history(self, live_keys: list[str]) -> dict[str, Any]:
        return hist.parquet_history(self.rc, self.pk, live_keys)

    def history_tail(self) -> str:
        return hist.history_tail(self.rc, self.pk)

    def events_tail(self) -> str:
        return hist.events_tail(self.rc, self.pk)

    # --- files ------------------------------------------------------------------------

    def file_count(self) -> int:
        if not self.rc.server.authoritative and overlay.file_ops(self.rc.session, self.pk):
            return len(overlay.view_files(self.rc.session, self.pk))
        return queries.count_files(self.rc.session, self.pk)

    def files(
        self,
        names: list[str | None] | None = None,
        pattern: str | None = None,
        before: str | None = None,
        after: str | None = None,
        first: int | None = None,
        last: int | None = None,
    ) -> Connection:
        """Files by name; ``names`` exact (empty = all), ``pattern`` SQL LIKE.

        Keyset-paged by name, so deleting files while iterating (the guide's "delete all
        .png files" loop) neither skips nor repeats one.
        """
        wanted = [n for n in (names or []) if n is not None]
        limit = page_limit(first)
        session = self.rc.session
        pending = [] if self.rc.server.authoritative else overlay.file_ops(session, self.pk)
        if pending:  # the drop-in lists its user's pending uploads and deletes too
            every = overlay.file_listing(session, self.pk, pending, names=wanted or None,
                                         pattern=pattern)
            start = name_after(after)
            listed = [f for f in every if start is None or f.name > start]
            more = limit is not None and len(listed) > limit
            shown = listed[:limit] if limit is not None else listed
            return Connection(
                [FileNode(self.rc, self.rec, f) for f in shown],
                [name_cursor(f.name) for f in shown], more, after is not None,
                count=lambda: len(every),
            )
        recs = queries.file_page(
            session,
            self.pk,
            names=wanted,
            pattern=pattern,
            after_name=name_after(after),
            limit=None if limit is None else limit + 1,
        )
        has_next = limit is not None and len(recs) > limit
        if has_next:
            recs = recs[:limit]
        nodes = [FileNode(self.rc, self.rec, f) for f in recs]
        return Connection(
            nodes,
            [name_cursor(f.name) for f in recs],
            has_next,
            after is not None,
            count=lambda: queries.count_files(session, self.pk, wanted, pattern),
        )


class FileNode:
    """One run file (``File`` type). URLs are signed by the server's :class:`UrlSigner`."""

    def __init__(self, rc: RequestContext, run: RunRecord, rec: FileRecord) -> None:
        assert run.pk is not None
        self.rc = rc
        self.run = run
        self.rec = rec
        self.name = rec.name
        self.mimetype = rec.mimetype
        self.updated_at = rec.updated_at
        self.md5 = rec.md5
        self.size_bytes = rec.size_bytes or 0
        self.id = rec.upstream_id or file_id(run.pk, rec.name)

    def _url(self, method: str) -> str:
        r, signer = self.run, self.rc.server.signer
        make = signer.upload_url if method == "PUT" else signer.download_url
        return make(r.entity, r.project, r.run_id, self.name)

    def url(self, upload: bool | None = None) -> str:
        return self._url("PUT" if upload else "GET")

    def direct_url(self) -> str:
        return self._url("GET")

    def upload_url(self) -> str:
        return self._url("PUT")


def run_node(rc: RequestContext, entity: str, project: str, run_id: str) -> RunNode | None:
    """The live run ``entity/project/run_id`` or ``None`` (W&B answers ``run: null``)."""
    rec = store_runs.get_run(rc.session, entity, project, run_id)
    if rec is None or rec.tombstoned:
        return None
    return RunNode(rc, rec)
