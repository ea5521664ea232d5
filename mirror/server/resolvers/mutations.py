"""The ``Mutation`` root: run upserts, run files, run state, projects.

In authoritative mode (the server plays W&B for tests, benchmarks and the demo) every edit
is applied to the store at once, in one ``store.transaction()`` per mutation field.

In the default local mode the server is the offline drop-in: the official client's edits of
a run that exists upstream become outbox ops of the store (:mod:`mirror.outbox.edits`),
exactly as ``mirror.Api`` edits do, to be replayed by ``mirror push``. The whole documents
``upsertBucket`` carries are diffed against the user's view (upstream row + pending ops) in
the write transaction, so only the keys the client changed are queued, each with the value
it replaced. Runs that exist only locally (created here, not uploaded yet) are local truth:
their edits apply to the row directly and the run's upload carries them. A run logged here
stays so after its upload: resumed by the SDK, it is queued for a new upload (which sends
only the lines upstream lacks) instead of as edits. Deleting, stopping or re-stating a
run, and creating projects, are not queued: they need ``--authoritative``.

``upsertBucket`` carries FULL documents (``wandb-protocol.md`` 4.8/4.9): every input field
with a value replaces the stored one; ``config``, ``summaryMetrics`` and ``tags`` are whole
new values, never patches. That is why renaming a summary key works: the client sends the
summary without the old key. A field that is absent or ``null`` keeps its stored value
(``wandb-logging-protocol.md`` 4.4: the SDK always declares all 19 variables and leaves
the unused ones ``null``; its config-only updates must not wipe tags or notes). The
public API's ``run.update()`` sends the current values, so nothing is lost either way.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

from graphql import GraphQLError

from mirror.errors import MirrorError, NotFoundError
from mirror.outbox import edits
from mirror.outbox.ops import META_FIELDS
from mirror.paths import run_storage_id, validate_run_file_name
from mirror.records import FileRecord, ProjectRecord, RunRecord
from mirror.server.resolvers import project as proj
from mirror.server.resolvers.common import (
    RequestContext,
    now_iso,
    parse_file_id,
    parse_json_input,
    parse_run_storage_id,
)
from mirror.server.resolvers.run import FileNode, RunNode
from mirror.store import outbox as outbox_store
from mirror.store import queries
from mirror.store import runs as store_runs

_RUN_ID_ALPHABET = string.ascii_lowercase + string.digits

# upsertBucket input field -> RunRecord field, for plain string values.
_SCALAR_FIELDS = {
    "displayName": "display_name",
    "description": "description",
    "notes": "notes",
    "commit": "commit",
    "host": "host",
    "jobType": "job_type",
    "groupName": "group_name",
    "state": "state",
    "sweep": "sweep_name",
}


def new_run_id() -> str:
    """An 8-character run id like the SDK's (``[a-z0-9]{8}``)."""
    return "".join(secrets.choice(_RUN_ID_ALPHABET) for _ in range(8))


def _run_by_storage_id(session: Any, storage_id: str) -> RunRecord | None:
    """A live run by ``Run.id``: upstream's stored id first, then our computed form."""
    rec = queries.find_run_by_storage_id(session, storage_id)
    if rec is not None:
        return rec
    parsed = parse_run_storage_id(storage_id)
    if parsed is None:
        return None
    rec = store_runs.get_run(session, *parsed)
    return None if rec is None or rec.tombstoned else rec


def _require_run_by_id(session: Any, storage_id: str) -> RunRecord:
    rec = _run_by_storage_id(session, storage_id)
    if rec is None:
        raise NotFoundError(f"run {storage_id!r} not found")
    return rec


def _require_run(session: Any, entity: str, project: str, run_id: str) -> RunRecord:
    rec = store_runs.get_run(session, entity, project, run_id)
    if rec is None or rec.tombstoned:
        raise NotFoundError(f"run {entity}/{project}/{run_id} not found")
    return rec


class MutationRoot:
    """Root value of mutations; each method is a field of ``type Mutation``."""

    def __init__(self, rc: RequestContext) -> None:
        self.rc = rc

    def _require_authoritative(self, what: str) -> None:
        if not self.rc.server.authoritative:
            raise MirrorError(
                f"{what} is not queued offline by the mirror: it needs `mirror serve "
                "--authoritative`",
                hint="Run it with wandb while online, or start the server with "
                "--authoritative to apply it to this store directly.",
            )

    # --- runs -------------------------------------------------------------------------

    def upsert_bucket(self, input: dict[str, Any]) -> dict[str, Any]:
        """Create a run (no ``id``, no existing ``name``) or replace the given fields.

        A new run gets ``running`` state, timestamps, the viewer as owner, a generated id
        when ``name`` is missing, and its id as display name when none is given (the SDK
        prints it). The answer's ``historyLineCount`` is 0 for a new run: the SDK starts
        its history stream at that offset. In local mode, a new run is a local run with a
        ``create_run`` op, and edits of a run known upstream become outbox ops.
        """
        rc = self.rc
        given = {k: v for k, v in input.items() if v is not None}
        config = parse_json_input(given["config"], "config") if "config" in given else None
        summary = (parse_json_input(given["summaryMetrics"], "summaryMetrics")
                   if "summaryMetrics" in given else None)
        now = now_iso()
        local = not rc.server.authoritative
        with rc.write() as s:
            if given.get("id"):
                rec = _require_run_by_id(s, given["id"])
                inserted = False
            else:
                entity = given.get("entityName") or rc.server.entity
                project = given.get("modelName") or "uncategorized"
                run_id = given.get("name") or new_run_id()
                found = store_runs.get_run(s, entity, project, run_id)
                if found is not None and found.tombstoned:
                    raise GraphQLError(
                        f"run {entity}/{project}/{run_id} was deleted; use a new run id"
                    )
                inserted = found is None
                rec = found or RunRecord(
                    entity=entity, project=project, run_id=run_id, state="running",
                    storage_id=run_storage_id(entity, project, run_id),
                    created_at=now, heartbeat_at=now, username=rc.server.username,
                    user_name=rc.server.username, display_name=run_id, source="local",
                )
            # A run logged here (source "local") stays local truth after an upload too: a
            # resumed run's new fields and lines go up as a new upload of the whole run
            # (which sends only the lines upstream lacks), not as edits of an upstream run.
            logged_here = local and rec.source == "local"
            queued = (local and not inserted and not logged_here and rec.pk is not None
                      and edits.pending_create(s, rec.pk) is None)
            if queued:
                assert rec.pk is not None
                pk = rec.pk
                meta = {name: given[key] for name, key in META_FIELDS.items() if key in given}
                edits.edit_documents(s, pk, summary=summary, config=config,
                                     tags=given.get("tags"), meta=meta)
            else:
                pk = _apply_upsert(s, rec, given, config, summary, now)
                if (local and (inserted or logged_here)
                        and (inserted or edits.pending_create(s, pk) is None)):
                    outbox_store.enqueue(s, pk, "create_run", {})
        rec.pk = pk  # the row as written (a new run had no pk yet): no read-back needed
        return {"bucket": RunNode(rc, rec), "inserted": inserted,
                "serverSettings": {"serverMessages": []},
                "clientMutationId": input.get("clientMutationId")}

    def delete_run(self, input: dict[str, Any]) -> dict[str, Any]:
        """Tombstone the run: it disappears from every read, its data is kept."""
        self._require_authoritative("deleteRun")
        with self.rc.write() as s:
            rec = _require_run_by_id(s, input["id"])
            assert rec.pk is not None
            store_runs.update_run(s, rec.pk, tombstoned=True, updated_at=now_iso())
        return {"clientMutationId": input.get("clientMutationId")}

    def update_run_state(self, input: dict[str, Any]) -> dict[str, Any]:
        self._require_authoritative("updateRunState")
        with self.rc.write() as s:
            rec = _require_run_by_id(s, input["id"])
            assert rec.pk is not None
            store_runs.update_run(s, rec.pk, state=input["state"], updated_at=now_iso())
        return {"success": True, "clientMutationId": input.get("clientMutationId")}

    def stop_run(self, input: dict[str, Any]) -> dict[str, Any]:
        """A running (or pending) run becomes ``killed``; a finished run is left alone."""
        self._require_authoritative("stopRun")
        with self.rc.write() as s:
            rec = _require_run_by_id(s, input["id"])
            assert rec.pk is not None
            if rec.state in ("running", "pending", None):
                store_runs.update_run(s, rec.pk, state="killed", updated_at=now_iso())
        return {"success": True, "clientMutationId": input.get("clientMutationId")}

    # --- files ------------------------------------------------------------------------

    def create_run_files(self, input: dict[str, Any]) -> dict[str, Any]:
        """Signed upload URLs; the HTTP layer registers each file when its PUT lands.

        A missing run gives an empty ``runID``, which the client turns into its own
        "Check that this project exists" error. (In local mode the PUT queues the upload.)
        """
        rc = self.rc
        names = [validate_run_file_name(n) for n in input["files"]]
        rec = store_runs.get_run(rc.session, input["entityName"], input["projectName"],
                                 input["runName"])
        if rec is None or rec.tombstoned:
            return {"runID": "", "uploadHeaders": [], "files": [],
                    "clientMutationId": input.get("clientMutationId")}
        node = RunNode(rc, rec)
        return {
            "runID": node.id(),
            "uploadHeaders": [],
            "files": [FileNode(rc, rec, FileRecord(name=n)) for n in names],
            "clientMutationId": input.get("clientMutationId"),
        }

    def mark_run_files_uploaded(self, input: dict[str, Any]) -> dict[str, Any]:
        """Nothing to commit: the PUT already registered the file (0.22.3 never calls this)."""
        rc = self.rc
        for name in input["files"]:
            validate_run_file_name(name)
        _require_run(rc.session, input["entityName"], input["projectName"], input["runName"])
        return {"success": True, "clientMutationId": input.get("clientMutationId")}

    def delete_files(self, input: dict[str, Any]) -> dict[str, Any]:
        """Delete run files by ``File.id``. Idempotent: an already deleted file is fine.

        An id is upstream's stored ``File.id`` or our ``File:{run_pk}:{name}`` form; an id
        that is neither is an error (it cannot name any file). The row is tombstoned, not
        dropped: it vanishes from every listing, a retried delete (say, after a dropped
        connection) still finds it, the cached blob stays, and a new upload revives it.
        In local mode the delete of a file of a run known upstream is queued instead.
        """
        rc = self.rc
        local = not rc.server.authoritative
        with rc.write() as s:
            for fid in input["files"]:
                target = queries.find_file_by_upstream_id(s, fid) or parse_file_id(fid)
                if target is None:
                    raise GraphQLError(f"{fid!r} is not a file id")
                run_pk, name = target
                if local and edits.pending_create(s, run_pk) is None:
                    edits.enqueue_file_delete(s, run_pk, name)
                    continue
                rec = store_runs.get_file(s, run_pk, name)
                if rec is not None and not rec.tombstoned:
                    rec.tombstoned = True
                    rec.updated_at = now_iso()
                    store_runs.save_file(s, run_pk, rec)
        return {"success": True, "clientMutationId": input.get("clientMutationId")}

    # --- projects ---------------------------------------------------------------------

    def upsert_model(self, input: dict[str, Any]) -> dict[str, Any]:
        """Create or update a project (``name`` + ``entityName``)."""
        rc = self.rc
        self._require_authoritative("upsertModel")
        name = input.get("name")
        if not name:
            raise GraphQLError("upsertModel needs a project name")
        entity = input.get("entityName") or rc.server.entity
        with rc.write() as s:
            existing = store_runs.get_project(s, entity, name)
            rec = existing or ProjectRecord(entity=entity, name=name, created_at=now_iso())
            if "description" in input:
                rec.description = input["description"]
            if input.get("isBenchmark") is not None:
                rec.is_benchmark = bool(input["isBenchmark"])
            store_runs.save_project(s, rec)
        node = proj.project_node(rc, entity, name)
        return {"project": node, "model": node, "inserted": existing is None,
                "clientMutationId": input.get("clientMutationId")}


def _apply_upsert(
    session: Any,
    rec: RunRecord,
    given: dict[str, Any],
    config: Any,
    summary: Any,
    now: str,
) -> int:
    """Write the given fields into the run's row (authoritative mode, or a local run)."""
    for key, attr in _SCALAR_FIELDS.items():
        if key in given:
            setattr(rec, attr, given[key])
    if "tags" in given:
        rec.tags = list(given["tags"])
    if "config" in given:
        rec.config = config
    if "summaryMetrics" in given:
        rec.summary = summary
    rec.updated_at = now
    return store_runs.save_run(session, rec)
