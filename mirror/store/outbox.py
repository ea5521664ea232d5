"""The outbox's rows: local edits waiting for upstream, and the conflicts they met.

Why a table and not a file: an edit is written in the SAME transaction as whatever else the
caller changes locally (a blob row for an upload, a run created by the drop-in server), so a
crash leaves either the edit and its effects or neither (the transactional outbox). The
functions here take the caller's session and never commit; :mod:`mirror.outbox` holds the
logic (payload algebra, 3-way merge, replay) and calls them.

The state machine (style guide item 10; ``models.OUTBOX_STATES``)::

    pending ──claim──> in_flight ──ack──────> done ──a pull shows it──> (row deleted)
       ^                  │  │ └──transient──> retry ──due──> (claimed again)
       │                  │  └──terminal────> failed   (dead letter, kept with its reason)
       │                  ├──every key conflicted──> conflict (kept with Conflict rows)
       │                  └──run is running upstream──> held (claimed again next push)
       └── a process died with ops in_flight: recovered to retry, read back first

``pending``/``in_flight``/``retry``/``held`` are *unacknowledged*; ``done`` is acknowledged
by the server but still overlaid on reads until a pull shows the value (then the row goes);
``failed`` and ``conflict`` are parked for the user and never overlaid. Ops are processed
in ``id`` order per run; terminal states never block later ops of the run.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, case, delete, func, select, update
from sqlmodel import Session, col

from mirror.store import syncstate
from mirror.store.models import Conflict, OutboxOp, Project, Run

__all__ = [
    "ACTIVE_STATES",
    "FIELD_KINDS",
    "FILE_KINDS",
    "OVERLAY_STATES",
    "ConflictRecord",
    "Mark",
    "OpRecord",
    "RunRef",
    "add_conflict",
    "count_unresolved_conflicts",
    "delete_ops",
    "due_ops",
    "enqueue",
    "get_last_push",
    "get_op",
    "list_conflicts",
    "list_ops",
    "mark",
    "mark_many",
    "next_due",
    "oldest_active",
    "op_counts",
    "ops_for_runs",
    "recover_in_flight",
    "release_held",
    "resolve_conflicts",
    "run_refs",
    "set_last_push",
    "update_payload",
    "update_payloads",
]

ACTIVE_STATES = ("pending", "in_flight", "retry", "held")
"""Not yet acknowledged by the server: replay still owes them."""
OVERLAY_STATES = (*ACTIVE_STATES, "done")
"""Shown on reads (read-your-writes) until a pull shows the value."""
FIELD_KINDS = ("summary", "config", "meta", "tags")
FILE_KINDS = ("file_put", "file_delete")

_LAST_PUSH = ("outbox", "", "", "outbox.last_push")
"""Where the last push's outcome is kept: a ``sync_cursor`` row no project can collide with
(``synced_projects`` skips project ``""``)."""


@dataclass
class OpRecord:
    """One ``outbox_op`` row as plain values (ORM rows stay in this package)."""

    id: int
    run_pk: int
    kind: str
    payload: dict[str, Any]
    base: dict[str, Any]
    state: str
    attempts: int = 0
    next_attempt_at: float | None = None
    last_error: str | None = None
    idempotency_key: str | None = None
    created_at: float = 0.0
    updated_at: float | None = None

    @property
    def slot(self) -> str:
        """What the op changes: ops in one slot coalesce, ops in different slots commute.

        A field kind is one slot (its keys merge inside it); each file name is one slot,
        whether put or deleted (last op wins).
        """
        if self.kind in FILE_KINDS:
            return "file:" + str(self.payload.get("name"))
        return self.kind


@dataclass
class ConflictRecord:
    """A key changed both locally and upstream since the edit's base."""

    id: int
    op_id: int | None
    run_pk: int
    kind: str
    key: str
    base: Any
    local: Any
    remote: Any
    created_at: float
    resolved_at: float | None = None
    resolution: str | None = None


@dataclass(frozen=True)
class RunRef:
    """What replay needs to address a run upstream."""

    pk: int
    entity: str
    project: str
    run_id: str
    source: str = "wandb"
    project_internal_id: str | None = None

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.run_id}"


def _record(row: OutboxOp) -> OpRecord:
    assert row.id is not None
    return OpRecord(
        id=row.id,
        run_pk=row.run_pk,
        kind=row.kind,
        payload=dict(row.payload or {}),
        base=dict(row.base or {}),
        state=row.state,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_error=row.last_error,
        idempotency_key=row.idempotency_key,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _op_rows(session: Session, stmt: Any) -> list[OpRecord]:
    """Run a Core ``select`` of ``outbox_op`` rows and return them as records.

    Core rows, not ORM instances: a push reads every op it claims, and building (and
    identity-mapping) a thousand ORM objects costs more than the rest of the claim.
    """
    return [
        OpRecord(
            id=r.id, run_pk=r.run_pk, kind=r.kind, payload=dict(r.payload or {}),
            base=dict(r.base or {}), state=r.state, attempts=r.attempts,
            next_attempt_at=r.next_attempt_at, last_error=r.last_error,
            idempotency_key=r.idempotency_key, created_at=r.created_at,
            updated_at=r.updated_at,
        )
        for r in session.connection().execute(stmt)
    ]


def _conflict(row: Conflict) -> ConflictRecord:
    assert row.id is not None
    return ConflictRecord(
        id=row.id, op_id=row.op_id, run_pk=row.run_pk, kind=row.kind, key=row.key,
        base=row.base, local=row.local, remote=row.remote, created_at=row.created_at,
        resolved_at=row.resolved_at, resolution=row.resolution,
    )


# --- writing ops ---------------------------------------------------------------------


def enqueue(
    session: Session,
    run_pk: int,
    kind: str,
    payload: dict[str, Any],
    base: dict[str, Any] | None = None,
    *,
    now: float | None = None,
) -> int:
    """Add a pending op in the caller's transaction; returns its id.

    The idempotency key is a fresh UUID: W&B offers no idempotency keys, so it only names
    the op in logs and lets a reader tell two equal-looking ops apart.
    """
    stamp = time.time() if now is None else now
    row = OutboxOp(
        run_pk=run_pk, kind=kind, payload=payload, base=base or {}, state="pending",
        attempts=0, idempotency_key=uuid.uuid4().hex, created_at=stamp, updated_at=stamp,
    )
    session.add(row)
    session.flush()
    assert row.id is not None
    return row.id


def mark(
    session: Session,
    op_id: int,
    state: str,
    *,
    error: str | None = None,
    next_attempt_at: float | None = None,
    attempts_delta: int = 0,
    payload: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
    now: float | None = None,
) -> None:
    """Move one op to ``state`` (its error, next due time and payload with it).

    ``done`` clears the error; every other state keeps the reason the caller gives, so a
    dead letter or a held op always says why.
    """
    row = session.get(OutboxOp, op_id)
    if row is None:
        return
    row.state = state
    row.last_error = None if state == "done" else error
    row.next_attempt_at = next_attempt_at
    row.attempts = max(0, row.attempts + attempts_delta)
    if payload is not None:
        row.payload = payload
    if base is not None:
        row.base = base
    row.updated_at = time.time() if now is None else now
    session.add(row)
    session.flush()


@dataclass(frozen=True)
class Mark:
    """One op's new state, for :func:`mark_many`."""

    op_id: int
    state: str
    error: str | None = None
    next_attempt_at: float | None = None
    attempts_delta: int = 0


_OP_TABLE = OutboxOp.__table__  # type: ignore[attr-defined]


def mark_many(session: Session, marks: Sequence[Mark], *, now: float | None = None) -> None:
    """:func:`mark` for many ops in one ``executemany`` (no payload changes).

    A push marks every op it takes at least twice (in flight, then its outcome); one
    statement per batch instead of an ORM round trip per op is what keeps a 1,000-op push
    fast.
    """
    if not marks:
        return
    stamp = time.time() if now is None else now
    t = _OP_TABLE
    attempts = t.c.attempts + bindparam("delta")
    stmt = (
        update(t)
        .where(t.c.id == bindparam("op_id"))
        .values(
            state=bindparam("new_state"),
            last_error=bindparam("error"),
            next_attempt_at=bindparam("next_at"),
            attempts=case((attempts < 0, 0), else_=attempts),
            updated_at=stamp,
        )
        .execution_options(synchronize_session=False)
    )
    session.connection().execute(stmt, [
        {"op_id": m.op_id, "new_state": m.state,
         "error": None if m.state == "done" else m.error,
         "next_at": m.next_attempt_at, "delta": m.attempts_delta}
        for m in marks
    ])
    session.expire_all()  # ORM copies of these rows are stale now


def update_payloads(
    session: Session, items: Sequence[tuple[int, str, dict[str, Any], dict[str, Any]]]
) -> None:
    """:func:`update_payload` for many ops: ``(op_id, kind, payload, base)`` each."""
    if not items:
        return
    t = _OP_TABLE
    stmt = (
        update(t)
        .where(t.c.id == bindparam("op_id"))
        .values(kind=bindparam("new_kind"), payload=bindparam("new_payload"),
                base=bindparam("new_base"))
    )
    session.connection().execute(stmt, [
        {"op_id": i, "new_kind": k, "new_payload": p, "new_base": b} for i, k, p, b in items
    ])
    session.expire_all()


def update_payload(
    session: Session, op_id: int, kind: str, payload: dict[str, Any], base: dict[str, Any]
) -> None:
    """Replace an op's kind, payload and base (a coalesced survivor), keeping its state."""
    row = session.get(OutboxOp, op_id)
    if row is not None:
        row.kind = kind
        row.payload = payload
        row.base = base
        session.add(row)
        session.flush()


def delete_ops(session: Session, op_ids: Iterable[int]) -> int:
    """Delete ops (merged into another, settled by a pull, or discarded by the user)."""
    ids = list(op_ids)
    if not ids:
        return 0
    session.execute(
        update(Conflict).where(col(Conflict.op_id).in_(ids)).values(op_id=None)
    )
    result = session.execute(delete(OutboxOp).where(col(OutboxOp.id).in_(ids)))
    session.flush()
    return int(getattr(result, "rowcount", 0) or 0)


# --- reading ops ---------------------------------------------------------------------


def get_op(session: Session, op_id: int) -> OpRecord | None:
    row = session.get(OutboxOp, op_id)
    return None if row is None else _record(row)


def list_ops(
    session: Session,
    *,
    states: Sequence[str] | None = None,
    run_pk: int | None = None,
    kinds: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[OpRecord]:
    """Ops in replay order (``id``), optionally only some states, one run, some kinds."""
    t = _OP_TABLE
    stmt = select(t).order_by(t.c.id)
    if states is not None:
        stmt = stmt.where(t.c.state.in_(list(states)))
    if run_pk is not None:
        stmt = stmt.where(t.c.run_pk == run_pk)
    if kinds is not None:
        stmt = stmt.where(t.c.kind.in_(list(kinds)))
    if limit is not None:
        stmt = stmt.limit(limit)
    return _op_rows(session, stmt)


def ops_for_runs(
    session: Session,
    run_pks: Sequence[int],
    *,
    states: Sequence[str] = OVERLAY_STATES,
    kinds: Sequence[str] | None = None,
) -> dict[int, list[OpRecord]]:
    """``run_pk -> ops`` (id order) of the given runs: the overlay of a page of runs.

    One query per 500 runs; runs without ops are absent from the result, so the caller's
    common case (no pending edits) costs one indexed lookup and no decoding.
    """
    out: dict[int, list[OpRecord]] = {}
    pks = list(dict.fromkeys(run_pks))
    t = _OP_TABLE
    for i in range(0, len(pks), 500):
        stmt = (
            select(t)
            .where(t.c.run_pk.in_(pks[i : i + 500]))
            .where(t.c.state.in_(list(states)))
            .order_by(t.c.id)
        )
        if kinds is not None:
            stmt = stmt.where(t.c.kind.in_(list(kinds)))
        for op in _op_rows(session, stmt):
            out.setdefault(op.run_pk, []).append(op)
    return out


def due_ops(session: Session, now: float) -> dict[int, list[OpRecord]]:
    """Per run, the ops a replay may take now: the due *prefix* of its unacknowledged ops.

    Strict order per run: ops are walked in id order and the walk stops at the first op
    that is in flight, held (its run is running upstream; :func:`release_held` frees it at
    the start of the next push) or waiting out a backoff, so a later edit never overtakes
    an earlier one. Parked ops (``failed``, ``conflict``) and acknowledged ones are not in
    the walk, so they never block a run.
    """
    t = _OP_TABLE
    stmt = select(t).where(t.c.state.in_(list(ACTIVE_STATES))).order_by(t.c.run_pk, t.c.id)
    out: dict[int, list[OpRecord]] = {}
    blocked: set[int] = set()
    for op in _op_rows(session, stmt):
        if op.run_pk in blocked:
            continue
        waiting = op.state in ("in_flight", "held") or (
            op.state == "retry" and op.next_attempt_at is not None and op.next_attempt_at > now
        )
        if waiting:
            blocked.add(op.run_pk)
            continue
        out.setdefault(op.run_pk, []).append(op)
    return out


def release_held(session: Session, *, now: float | None = None) -> int:
    """Held ops become pending again: each push re-checks whether their run still runs."""
    result = session.execute(
        update(OutboxOp)
        .where(col(OutboxOp.state) == "held")
        .values(state="pending", updated_at=time.time() if now is None else now)
    )
    session.flush()
    return int(getattr(result, "rowcount", 0) or 0)


def next_due(session: Session) -> float | None:
    """When the earliest op waiting out a backoff becomes due (None: nothing waits)."""
    value = session.execute(
        select(func.min(col(OutboxOp.next_attempt_at))).where(col(OutboxOp.state) == "retry")
    ).scalar()
    return None if value is None else float(value)


def recover_in_flight(session: Session, *, now: float | None = None) -> int:
    """Ops left ``in_flight`` by a process that died: due again, to be read back first.

    Call only while holding the push lock (then every ``in_flight`` op belongs to a dead
    process). Replay always reads the run's fresh state and merges before writing, so a
    write that did land is acknowledged without being sent again.
    """
    stamp = time.time() if now is None else now
    result = session.execute(
        update(OutboxOp)
        .where(col(OutboxOp.state) == "in_flight")
        .values(
            state="retry",
            next_attempt_at=stamp,
            last_error="interrupted while in flight; read back before any resend",
            updated_at=stamp,
        )
    )
    session.flush()
    return int(getattr(result, "rowcount", 0) or 0)


def op_counts(session: Session) -> dict[str, int]:
    """``state -> number of ops``."""
    rows = session.execute(
        select(col(OutboxOp.state), func.count()).group_by(col(OutboxOp.state))
    ).all()
    return {str(state): int(n) for state, n in rows}


def oldest_active(session: Session) -> float | None:
    """``created_at`` of the oldest unacknowledged op (for "oldest pending age")."""
    value = session.execute(
        select(func.min(col(OutboxOp.created_at))).where(
            col(OutboxOp.state).in_(list(ACTIVE_STATES))
        )
    ).scalar()
    return None if value is None else float(value)


# --- runs ------------------------------------------------------------------------------


def run_refs(session: Session, run_pks: Iterable[int]) -> dict[int, RunRef]:
    """How to address each run upstream (entity/project/run id, source, projectId)."""
    pks = list(dict.fromkeys(run_pks))
    out: dict[int, RunRef] = {}
    for i in range(0, len(pks), 500):
        rows = session.execute(
            select(
                col(Run.pk), col(Run.entity), col(Run.project), col(Run.run_id),
                col(Run.source), col(Project.internal_id),
            )
            .join(Project, col(Project.pk) == col(Run.project_pk), isouter=True)
            .where(col(Run.pk).in_(pks[i : i + 500]))
        ).all()
        for pk, entity, project, run_id, source, internal in rows:
            out[int(pk)] = RunRef(int(pk), entity, project, run_id, source or "wandb",
                                  internal)
    return out


# --- conflicts -------------------------------------------------------------------------


def add_conflict(
    session: Session,
    *,
    op_id: int | None,
    run_pk: int,
    kind: str,
    key: str,
    base: Any,
    local: Any,
    remote: Any,
    now: float | None = None,
) -> int:
    """Record a conflict with both values (and the base they diverged from)."""
    row = Conflict(
        op_id=op_id, run_pk=run_pk, kind=kind, key=key, base=base, local=local,
        remote=remote, created_at=time.time() if now is None else now,
    )
    session.add(row)
    session.flush()
    assert row.id is not None
    return row.id


def list_conflicts(
    session: Session,
    *,
    op_id: int | None = None,
    run_pk: int | None = None,
    unresolved: bool = True,
) -> list[ConflictRecord]:
    stmt = select(Conflict).order_by(col(Conflict.id))
    if op_id is not None:
        stmt = stmt.where(col(Conflict.op_id) == op_id)
    if run_pk is not None:
        stmt = stmt.where(col(Conflict.run_pk) == run_pk)
    if unresolved:
        stmt = stmt.where(col(Conflict.resolved_at).is_(None))
    return [_conflict(r) for r in session.execute(stmt).scalars()]


def resolve_conflicts(
    session: Session, conflict_ids: Iterable[int], resolution: str, *, now: float | None = None
) -> None:
    """Mark conflicts resolved (``local``, ``remote`` or ``discarded``)."""
    ids = list(conflict_ids)
    if ids:
        session.execute(
            update(Conflict)
            .where(col(Conflict.id).in_(ids))
            .values(resolved_at=time.time() if now is None else now, resolution=resolution)
        )
        session.flush()


def count_unresolved_conflicts(session: Session) -> int:
    return int(
        session.execute(
            select(func.count()).select_from(Conflict).where(col(Conflict.resolved_at).is_(None))
        ).scalar_one()
    )


# --- the last push ---------------------------------------------------------------------


def set_last_push(session: Session, value: dict[str, Any]) -> None:
    """Remember the outcome of the last push (time, counts, a pause reason) for `status`."""
    syncstate.set_cursor(session, *_LAST_PUSH, value)


def get_last_push(session: Session) -> dict[str, Any] | None:
    value = syncstate.get_cursor(session, *_LAST_PUSH)
    return value if isinstance(value, dict) else None

