"""Plain typed records passed between the boundaries.

``mirror/upstream`` yields these page by page, ``mirror/store`` saves and returns them,
the server and the ``Api`` read them. They carry no database or HTTP objects, so each
side can be tested alone. Field names follow the store; values are exactly as the server
sent them (timestamps are the server's strings; ``config`` is W&B's wrapped form
``{"key": {"value": v, "desc": d}}``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProjectRecord:
    entity: str
    name: str
    upstream_id: str | None = None
    internal_id: str | None = None
    description: str | None = None
    created_at: str | None = None
    is_benchmark: bool = False
    read_only: bool = False
    run_count: int | None = None


@dataclass
class RunRecord:
    entity: str
    project: str
    run_id: str
    storage_id: str | None = None
    display_name: str | None = None
    state: str | None = None
    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    system_metrics: dict[str, Any] | None = None
    tags: list[str] = field(default_factory=list)
    notes: str | None = None
    description: str | None = None
    group_name: str | None = None
    job_type: str | None = None
    commit: str | None = None
    host: str | None = None
    username: str | None = None
    user_name: str | None = None
    read_only: bool = False
    created_at: str | None = None
    heartbeat_at: str | None = None
    updated_at: str | None = None
    history_line_count: int | None = None
    events_line_count: int | None = None
    file_count: int | None = None
    last_step: int | None = None
    history_keys: dict[str, Any] | None = None
    sweep_name: str | None = None
    source: str = "wandb"
    tombstoned: bool = False
    pk: int | None = None  # set when read from the store

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.run_id}"


@dataclass
class FileRecord:
    name: str
    size_bytes: int | None = None
    md5: str | None = None  # base64 of the raw digest, as W&B reports it
    mimetype: str | None = None
    updated_at: str | None = None
    url: str | None = None
    direct_url: str | None = None
    upstream_id: str | None = None
    blob_hash: str | None = None
    tombstoned: bool = False


@dataclass
class SweepRecord:
    entity: str
    project: str
    sweep_id: str
    upstream_id: str | None = None
    display_name: str | None = None
    method: str | None = None
    state: str | None = None
    description: str | None = None
    config: str | None = None  # YAML text
    best_loss: float | None = None
    created_at: str | None = None
    updated_at: str | None = None
    run_count: int | None = None
    run_count_expected: int | None = None
