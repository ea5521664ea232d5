"""``Run``: one run of the store, with wandb's attributes and read methods.

A ``Run`` wraps the stored record, read in one row (there is no lazy "upgrade to full"
as in wandb: the config and summary are decoded from that row when first touched), and
answers history, files and sweep questions with further reads. Attribute names and
value shapes follow ``wandb.apis.public.Run`` (wandb-protocol.md 4.4): ``run.id`` is
the short run id, ``run.name`` the display name, ``run.config`` the unwrapped values
without ``_wandb``, ``run.path`` a list, and any GraphQL field is also reachable in
snake_case or camelCase (``run.history_line_count``, ``run.sweepName``) as wandb's
``Attrs`` allows.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NoReturn, overload

from mirror.api import history as _history
from mirror.api.errors import NotMirroredError, OfflineEditUnavailable, SweepNotFoundError
from mirror.api.files import File, Files
from mirror.api.summary import Summary
from mirror.outbox import edits
from mirror.outbox.ops import doc_patch, meta_patch, tags_patch
from mirror.paths import validate_run_file_name
from mirror.records import RunRecord
from mirror.store import blobs, codec, queries, reads
from mirror.store import history as store_history
from mirror.store.reads import StoredRun

if TYPE_CHECKING:
    import pandas as pd

    from mirror.api.api import Api
    from mirror.api.sweeps import Sweep

WANDB_INTERNAL_KEYS = frozenset({"_wandb", "wandb_version"})
"""Config keys wandb keeps out of ``run.config`` (they stay in ``run.rawconfig``)."""

METADATA_FILE = "wandb-metadata.json"


def unwrap_config(wrapped: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config, rawconfig)`` from W&B's stored ``{"k": {"value": v, "desc": d}}``.

    A value that is a dict holding ``"value"`` is unwrapped, anything else is kept as is;
    ``_wandb`` and ``wandb_version`` go to ``rawconfig`` only, which also holds the rest.
    """
    config: dict[str, Any] = {}
    internal: dict[str, Any] = {}
    if isinstance(wrapped, dict):
        for key, value in wrapped.items():
            target = internal if key in WANDB_INTERNAL_KEYS else config
            target[key] = value["value"] if isinstance(value, dict) and "value" in value else value
    return config, {**internal, **config}


def storage_id(rec: RunRecord) -> str:
    """W&B's opaque ``Run.id``: as stored, else computed by W&B's own formula."""
    if rec.storage_id:
        return rec.storage_id
    raw = f"Run:v1:{rec.run_id}:{rec.project}:{rec.entity}".encode()
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class RunUser:
    """``run.user``: who created the run."""

    name: str | None
    username: str | None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class Run:
    """A run of the local store, shaped like ``wandb.apis.public.Run``."""

    def __init__(self, api: Api, stored: StoredRun) -> None:
        self._api = api
        self._set_record(stored)

    def _set_record(self, stored: StoredRun) -> None:
        # The big JSON documents (config, summary...) stay text until first used, so
        # listing runs costs no decoding; ``_doc`` decodes one on demand.
        self._stored = stored
        self._record = rec = stored.record
        self._configs: tuple[dict[str, Any], dict[str, Any]] | None = None
        self._summary: Summary | None = None
        self._metadata: dict[str, Any] | None = None
        self._sweep: Sweep | None = None
        self._display_name = rec.display_name
        # What the user saw, per document, when first handed out: an edit's base values,
        # and the reference ``update()`` diffs against to find what changed.
        self._seen: dict[str, Any] = {"meta": self._meta(), "tags": list(rec.tags)}
        # wandb's attribute dict (GraphQL field names), for camelCase/snake_case access.
        self._attrs: dict[str, Any] = {
            "id": storage_id(rec),
            "name": rec.run_id,
            "displayName": rec.display_name,
            "sweepName": rec.sweep_name,
            "state": rec.state,
            "group": rec.group_name,
            "jobType": rec.job_type,
            "commit": rec.commit,
            "readOnly": rec.read_only,
            "createdAt": rec.created_at,
            "heartbeatAt": rec.heartbeat_at,
            "updatedAt": rec.updated_at,
            "description": rec.description,
            "notes": rec.notes,
            "tags": list(rec.tags),
            "host": rec.host,
            "historyLineCount": rec.history_line_count,
            "eventsLineCount": rec.events_line_count,
            "fileCount": rec.file_count,
        }

    def _doc(self, name: str) -> Any:
        """The decoded JSON document ``name`` of the record (see ``reads.LAZY_JSON``)."""
        return self._stored.document(name)

    def _record_with(self, *names: str) -> RunRecord:
        """The record with the documents ``names`` decoded, for store reads that use them."""
        for name in names:
            self._doc(name)
        return self._record

    # --- identity ------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The short run id (``1a2b3c4d``), as in the run's URL."""
        return self._record.run_id

    @property
    def storage_id(self) -> str:
        return str(self._attrs["id"])

    @property
    def entity(self) -> str:
        return self._record.entity

    @property
    def project(self) -> str:
        return self._record.project

    @property
    def username(self) -> str:
        """Deprecated in wandb (it returns the entity); kept for old scripts."""
        return self._record.entity

    @property
    def name(self) -> str | None:
        """The display name (``eager-fox-1``)."""
        return self._display_name

    @name.setter
    def name(self, value: str) -> None:
        """Rename locally; committing it (``run.update()``) is an offline edit."""
        self._display_name = value
        self._attrs["displayName"] = value

    display_name = name

    @property
    def path(self) -> list[str]:
        """``[entity, project, run_id]``, each URL-quoted, as wandb returns it."""
        return [urllib.parse.quote(str(p), safe="") for p in (self.entity, self.project, self.id)]

    @property
    def url(self) -> str:
        path = self.path
        path.insert(2, "runs")
        return self._api.app_url + "/".join(path)

    @property
    def user(self) -> RunUser:
        return RunUser(name=self._record.user_name, username=self._record.username)

    # --- state and metadata --------------------------------------------------------

    @property
    def state(self) -> str | None:
        """``finished``, ``running``, ``crashed``, ``failed``, ``killed``, ``pending``..."""
        return self._record.state

    @property
    def tags(self) -> list[str]:
        tags: list[str] = self._attrs["tags"]
        return tags

    @tags.setter
    def tags(self, value: list[str]) -> None:
        self._attrs["tags"] = list(value)

    @property
    def notes(self) -> str | None:
        return self._record.notes

    @notes.setter
    def notes(self, value: str | None) -> None:
        self._set_meta("notes", "notes", value)

    @property
    def description(self) -> str | None:
        return self._record.description

    @description.setter
    def description(self, value: str | None) -> None:
        self._set_meta("description", "description", value)

    @property
    def group(self) -> str | None:
        return self._record.group_name

    @group.setter
    def group(self, value: str | None) -> None:
        self._set_meta("group_name", "group", value)

    @property
    def job_type(self) -> str | None:
        return self._record.job_type

    @job_type.setter
    def job_type(self, value: str | None) -> None:
        self._set_meta("job_type", "jobType", value)

    def _set_meta(self, field: str, attr: str, value: str | None) -> None:
        """Set locally, as wandb does; ``run.update()`` commits it."""
        setattr(self._record, field, value)
        self._attrs[attr] = value

    @property
    def commit(self) -> str | None:
        """The git commit of the code the run ran (also in ``wandb-metadata.json``)."""
        return self._record.commit

    @property
    def created_at(self) -> str | None:
        """When the run started, as the server wrote it (``2024-01-01T00:00:00Z``)."""
        return self._record.created_at

    @property
    def heartbeat_at(self) -> str | None:
        return self._record.heartbeat_at

    @property
    def sweep_name(self) -> str | None:
        return self._record.sweep_name

    @property
    def sweep(self) -> Sweep | None:
        """The run's sweep (None if it is not part of one, or the sweep is not stored)."""
        if self._sweep is None and self.sweep_name:
            try:
                self._sweep = self._api.sweep(f"{self.entity}/{self.project}/{self.sweep_name}")
            except SweepNotFoundError:
                return None
        return self._sweep

    # --- config and summary ----------------------------------------------------------

    def _unwrapped(self) -> tuple[dict[str, Any], dict[str, Any]]:
        if self._configs is None:
            self._configs = unwrap_config(self._doc("config"))
            self._seen["config"] = copy.deepcopy(self._configs[0])
        return self._configs

    @property
    def config(self) -> dict[str, Any]:
        """Hyperparameters: unwrapped values, without W&B's internal ``_wandb`` key."""
        return self._unwrapped()[0]

    @property
    def rawconfig(self) -> dict[str, Any]:
        """The config including ``_wandb`` (and ``wandb_version``), values unwrapped."""
        return self._unwrapped()[1]

    @property
    def json_config(self) -> str:
        """The config re-wrapped for W&B, as ``run.update()`` would send it."""
        doc: dict[str, Any] = {}
        if "_wandb" in self.rawconfig:
            doc["_wandb"] = {"value": self.rawconfig["_wandb"], "desc": None}
        for key, value in self.config.items():
            doc[key] = {"value": value, "desc": None}
        return json.dumps(doc)

    @property
    def summary(self) -> Summary:
        """The run's summary, dict-like (``run.summary["loss"]``, ``._json_dict``)."""
        if self._summary is None:
            self._summary = Summary(self.summary_metrics, "/".join(self.path),
                                    commit=self._commit_summary)
        return self._summary

    @property
    def summary_metrics(self) -> dict[str, Any]:
        """The summary as a plain dict (the same object ``summary._json_dict`` is)."""
        return self._dict_doc("summary")

    @property
    def system_metrics(self) -> dict[str, Any]:
        """The last system metrics (CPU, memory, GPU...) upstream recorded."""
        return self._dict_doc("system_metrics")

    def _dict_doc(self, name: str) -> dict[str, Any]:
        doc = self._doc(name)
        if not isinstance(doc, dict):
            doc = {}
            setattr(self._record, name, doc)
        if name == "summary" and "summary" not in self._seen:
            self._seen["summary"] = self._stored.pristine(name)
        return doc

    @property
    def metadata(self) -> dict[str, Any] | None:
        """``wandb-metadata.json`` (program, args, host, git...) from the file cache.

        None when the run has no such file or its bytes are not cached, as wandb returns
        None when it cannot get it.
        """
        if self._metadata is None:
            try:
                with self.file(METADATA_FILE)._open_cached() as fh:
                    doc = codec.loads_wire(fh.read())
            except Exception:  # wandb's contract: None on any failure (missing, unreadable)
                return None
            self._metadata = doc if isinstance(doc, dict) else None
        return self._metadata

    # --- history ---------------------------------------------------------------------

    @property
    def lastHistoryStep(self) -> int:
        """The last stored history step (-1 without history): where ``scan_history`` stops."""
        pk = self._record.pk
        assert pk is not None
        with self._api._session() as s:
            last = reads.history_edge(s, pk, last=True)
        if last is not None:
            return last
        keys = self._doc("history_keys")
        if isinstance(keys, dict) and isinstance(keys.get("lastStep"), int):
            return int(keys["lastStep"])
        return self._record.last_step if self._record.last_step is not None else -1

    @property
    def history_keys(self) -> dict[str, Any]:
        """``{"lastStep": n, "keys": {key: {"typeCounts": [...]}}}`` of the stored rows.

        Upstream's document when it describes the rows held (same last step), else
        counted from the rows, as ``mirror serve`` answers ``historyKeys``.
        """
        rec = self._record_with("history_keys")
        assert rec.pk is not None
        stored = rec.history_keys if isinstance(rec.history_keys, dict) else None
        with self._api._session() as s:
            n, _first, last = store_history.history_bounds(s, rec.pk)
            if n == 0:
                if stored is not None:
                    return stored
                return {"keys": {}, "lastStep": rec.last_step if rec.last_step is not None else -1}
            if stored is not None and stored.get("lastStep") == last and "keys" in stored:
                return stored
            stats = queries.history_key_stats(s, rec.pk)
        return {
            "keys": {
                key: {"typeCounts": [{"type": t, "count": c} for t, c in sorted(kinds.items())]}
                for key, kinds in sorted(stats.items())
            },
            "lastStep": last,
        }

    @overload
    def history(
        self,
        samples: int = ...,
        keys: list[str] | None = ...,
        x_axis: str = ...,
        pandas: Literal[True] = ...,
        stream: str = ...,
    ) -> pd.DataFrame: ...
    @overload
    def history(
        self,
        samples: int = ...,
        keys: list[str] | None = ...,
        x_axis: str = ...,
        *,
        pandas: Literal[False],
        stream: str = ...,
    ) -> list[dict[str, Any]]: ...
    @overload
    def history(
        self,
        samples: int = ...,
        keys: list[str] | None = ...,
        x_axis: str = ...,
        pandas: bool = ...,
        stream: str = ...,
    ) -> pd.DataFrame | list[dict[str, Any]]: ...

    def history(
        self,
        samples: int = 500,
        keys: list[str] | None = None,
        x_axis: str = "_step",
        pandas: bool = True,
        stream: str = "default",
    ) -> pd.DataFrame | list[dict[str, Any]]:
        """Sampled history: at most ``samples`` rows, evenly spaced, first and last kept.

        Args:
            samples: how many rows at most.
            keys: only rows holding all of these (and ``x_axis``), reduced to them.
            x_axis: the key kept next to ``keys`` (``_step`` by default).
            pandas: a ``pandas.DataFrame`` (default) or a list of dicts.
            stream: ``"default"`` for metrics; ``"events"``/``"system"`` for system
                metrics (CPU, memory, GPU...), which cannot be combined with ``keys``.
        """
        rows = _history.sampled_rows(self, samples, keys, x_axis, stream)
        return _history.to_frame(rows) if pandas else rows

    def scan_history(
        self,
        keys: list[str] | None = None,
        page_size: int = 1000,
        min_step: int | None = None,
        max_step: int | None = None,
        use_cache: bool = True,
    ) -> _history.HistoryScan:
        """Every history row in step order (unsampled), streamed a page at a time.

        Args:
            keys: only rows holding all of these, each reduced to ``_step`` and them.
            page_size: rows per read.
            min_step: first step (inclusive).
            max_step: end step (exclusive), capped at ``lastHistoryStep + 1``.
            use_cache: accepted for compatibility (everything is local).
        """
        wanted = _history.check_keys(keys)
        last = self.lastHistoryStep
        if max_step is None or max_step > last:
            max_step = last + 1
        return _history.HistoryScan(
            self, min_step=min_step, max_step=max_step, keys=wanted, page_size=page_size
        )

    # --- files -----------------------------------------------------------------------

    def files(
        self, names: list[str] | None = None, pattern: str | None = None, per_page: int = 50
    ) -> Files:
        """The run's files: all, the exact ``names``, or those matching a LIKE ``pattern``
        (``"%.json"``); giving both is an error, as in wandb."""
        return Files(self, names or [], pattern=pattern, per_page=per_page)

    def file(self, name: str) -> File:
        """The run file called ``name`` (raises ``RunFileNotFoundError`` if it has none)."""
        return Files(self, [name]).one(name)

    # --- reload, wait -------------------------------------------------------------------

    def load(self, force: bool = False) -> dict[str, Any]:
        """Re-read the run from the store when ``force`` (e.g. after a sync)."""
        if force:
            self._set_record(self._api._load_run(self.entity, self.project, self.id))
        return self._attrs

    def wait_until_finished(self, poll_seconds: float = 5.0) -> None:
        """Re-read the run until its state is final (sync must be running to see it)."""
        while self.state not in ("finished", "crashed", "failed"):
            time.sleep(poll_seconds)
            self.load(force=True)

    # --- edits: applied locally at once, pushed by the outbox ------------------------------

    def _meta(self) -> dict[str, Any]:
        rec = self._record
        return {"display_name": self._display_name, "notes": rec.notes,
                "description": rec.description, "group_name": rec.group_name,
                "job_type": rec.job_type}

    def _patches(self, *, summary_only: bool = False) -> list[tuple[str, Any]]:
        """What changed since the user first saw each document: ``(kind, patch)`` pairs."""
        out: list[tuple[str, Any]] = []
        if self._summary is not None:
            out.append(("summary", doc_patch(self._seen["summary"], self._summary._json_dict)))
        if summary_only:
            return out
        if self._configs is not None:
            out.append(("config", doc_patch(self._seen["config"], self._configs[0])))
        out.append(("meta", meta_patch(self._seen["meta"], self._meta())))
        out.append(("tags", tags_patch(self._seen["tags"], self.tags)))
        return out

    def _commit(self, patches: list[tuple[str, Any]]) -> None:
        """Write the changed keys as outbox ops, all in one transaction.

        The view changes at once (the ops are overlaid on every read); the edits reach
        W&B with ``mirror push``. Each key carries the value the user saw as its base, so
        the push can tell a change made upstream meanwhile (a conflict) from its own.
        """
        pk = self._record.pk
        assert pk is not None
        todo = [(kind, patch) for kind, patch in patches if patch is not None]
        if not todo:
            return
        with self._api.store.transaction() as s:
            for kind, patch in todo:
                edits.enqueue_patch(s, pk, kind, patch)
        self._seen["meta"] = self._meta()
        self._seen["tags"] = list(self.tags)
        if self._configs is not None:
            self._seen["config"] = copy.deepcopy(self._configs[0])
        if self._summary is not None:
            self._seen["summary"] = copy.deepcopy(self._summary._json_dict)
        self._attrs["tags"] = list(self.tags)

    def _commit_summary(self) -> None:
        self._commit(self._patches(summary_only=True))

    def update(self) -> None:
        """Commit local changes to config, tags, name, notes, group, job type and summary.

        As with wandb: ``run.config["lr"] = 0.1; run.tags.append("x"); run.update()``.
        Offline, the change shows at once in every read of this store and is queued for
        ``mirror push`` (per key, with the value it replaces, for a safe merge upstream).
        """
        self._commit(self._patches())

    def save(self) -> None:
        """wandb's older name for :meth:`update`."""
        self.update()

    def upload_file(self, path: str, root: str = ".") -> File:
        """Attach a local file to the run as ``relpath(path, root)`` (offline: queued).

        The bytes are copied into the store's blob cache at once (so the file can be
        listed and downloaded offline, and the local file may change or vanish), and the
        upload is queued for ``mirror push``. Returns the new :class:`File`.
        """
        pk = self._record.pk
        assert pk is not None
        name = upload_name(path, root)
        store = self._api.store
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            info = blobs.put_stream(store, fh, expected_size=size, record=False)
        with store.transaction() as s:
            rec = edits.enqueue_file_put(s, pk, name, info)
        return File(rec, self)

    def delete(self, delete_artifacts: bool = False) -> NoReturn:
        raise OfflineEditUnavailable(f"run.delete() of run {'/'.join(self.path)}")

    def update_state(self, state: str) -> NoReturn:
        raise OfflineEditUnavailable(f"run.update_state() of run {'/'.join(self.path)}")

    def stop(self) -> NoReturn:
        raise OfflineEditUnavailable(f"run.stop() of run {'/'.join(self.path)}")

    def logged_artifacts(self, per_page: int = 100) -> NoReturn:
        raise NotMirroredError("artifacts")

    def used_artifacts(self, per_page: int = 100) -> NoReturn:
        raise NotMirroredError("artifacts")

    def log_artifact(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotMirroredError("artifacts")

    def use_artifact(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotMirroredError("artifacts")

    # --- wandb's generic attribute access -------------------------------------------------

    _ALIASES: ClassVar[dict[str, str]] = {
        "summaryMetrics": "summary_metrics",
        "systemMetrics": "system_metrics",
        "historyKeys": "history_keys",
    }

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not attributes: GraphQL fields by either spelling.
        if name in self._ALIASES:
            return getattr(self, self._ALIASES[name])
        attrs = self.__dict__.get("_attrs")
        if attrs is not None and not name.startswith("__"):
            for key in (_camel(name), name):
                if key in attrs:
                    return attrs[key]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"<Run {'/'.join(self.path)} ({self.state})>"


def upload_name(path: str, root: str = ".") -> str:
    """The run file name ``run.upload_file(path, root)`` gives, by wandb's rules.

    ``relpath(path, abspath(root))`` with ``.``/``..`` segments turned into ``_``/``__``
    (wandb's ``make_file_path_upload_safe``), then checked like any name from outside.
    """
    name = os.path.relpath(path, os.path.abspath(root))
    parts = [p.replace(".", "_") if p in (os.curdir, os.pardir) else p
             for p in name.lstrip(os.sep).split(os.sep)]
    return validate_run_file_name("/".join(parts))
