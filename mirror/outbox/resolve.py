"""What the user does with parked ops: retry a dead letter, discard an op, settle a conflict.

A conflict is never settled silently (wandb#4377 is what silent last-writer-wins looks
like). The user picks a side per op (or per key):

* ``ours``: the local value is queued again as a NEW op whose base is the remote value
  the conflict recorded, so the next push applies it unless upstream changed once more
  (then it is a conflict again: nothing is ever overwritten unseen);
* ``theirs``: the local value is dropped; the view shows upstream's.
"""

from __future__ import annotations

from typing import Any

from mirror.errors import MirrorError
from mirror.store import Store
from mirror.store import outbox as outbox_store
from mirror.store.outbox import FILE_KINDS

__all__ = ["OutboxActionError", "discard_ops", "resolve_conflict", "retry_ops"]


class OutboxActionError(MirrorError):
    """An outbox command named an op that does not exist or is in the wrong state."""

    default_hint = "List ops with `mirror outbox list` (or `--state conflict|failed`)."


def retry_ops(store: Store, op_ids: list[int] | None = None) -> int:
    """Dead letters (all of them, or ``op_ids``) and waiting ops become due now.

    Conflicts are refused: retrying one would meet the same upstream value again; resolve
    it instead.
    """
    with store.transaction() as s:
        if op_ids is None:
            ops = outbox_store.list_ops(s, states=["failed"])
        else:
            ops = []
            for op_id in op_ids:
                op = outbox_store.get_op(s, op_id)
                if op is None:
                    raise OutboxActionError(f"no outbox op {op_id}")
                if op.state == "conflict":
                    raise OutboxActionError(
                        f"op {op_id} is a conflict",
                        hint=f"Pick a side: `mirror outbox resolve {op_id} --ours|--theirs`.",
                    )
                if op.state in ("done", "in_flight"):
                    raise OutboxActionError(f"op {op_id} is {op.state}; nothing to retry")
                ops.append(op)
        for op in ops:
            outbox_store.mark(s, op.id, "pending", attempts_delta=-op.attempts)
    return len(ops)


def discard_ops(store: Store, op_ids: list[int]) -> int:
    """Drop ops for good (their edits are not pushed; their conflicts close as discarded)."""
    with store.transaction() as s:
        for op_id in op_ids:
            op = outbox_store.get_op(s, op_id)
            if op is None:
                raise OutboxActionError(f"no outbox op {op_id}")
            if op.state == "in_flight":
                raise OutboxActionError(
                    f"op {op_id} is being pushed right now",
                    hint="Wait for the push to finish, then discard it.",
                )
            conflicts = outbox_store.list_conflicts(s, op_id=op_id)
            outbox_store.resolve_conflicts(s, [c.id for c in conflicts], "discarded")
        return outbox_store.delete_ops(s, op_ids)


def resolve_conflict(
    store: Store, op_id: int, side: str, *, key: str | None = None
) -> dict[str, Any]:
    """Settle the unresolved conflicts of op ``op_id`` (only ``key``'s, if given).

    Returns ``{"resolved": n, "requeued_op": id or None}``.
    """
    if side not in ("ours", "theirs"):
        raise ValueError("side is 'ours' or 'theirs'")
    with store.transaction() as s:
        op = outbox_store.get_op(s, op_id)
        if op is None:
            raise OutboxActionError(f"no outbox op {op_id}")
        conflicts = [c for c in outbox_store.list_conflicts(s, op_id=op_id)
                     if key is None or c.key == key]
        if not conflicts:
            raise OutboxActionError(f"op {op_id} has no unresolved conflict"
                                    + (f" on {key!r}" if key else ""))
        new_id: int | None = None
        if side == "ours":
            if op.kind in FILE_KINDS:
                new_id = outbox_store.enqueue(s, op.run_pk, op.kind, dict(op.payload),
                                              {"md5": conflicts[0].remote})
            else:
                payload = {"keys": {c.key: c.local for c in conflicts}}
                base = {"keys": {c.key: c.remote for c in conflicts}}
                new_id = outbox_store.enqueue(s, op.run_pk, op.kind, payload, base)
        outbox_store.resolve_conflicts(s, [c.id for c in conflicts],
                                       "local" if side == "ours" else "remote")
        if op.state == "conflict" and not outbox_store.list_conflicts(s, op_id=op_id):
            outbox_store.delete_ops(s, [op_id])
    return {"resolved": len(conflicts), "requeued_op": new_id}
