"""The outbox in figures, for `mirror status` and `mirror outbox list`.

PowerSync's ``getUploadQueueStats`` and Replicache's pending-mutation list are the model:
the user must be able to see at a glance that edits are waiting, how old the oldest is,
and whether anything needs them (a conflict, a dead letter, a paused queue).
"""

from __future__ import annotations

import time
from typing import Any

from mirror.store import Store
from mirror.store import outbox as outbox_store
from mirror.store.outbox import ACTIVE_STATES

__all__ = ["outbox_status"]


def outbox_status(store: Store, *, now: float | None = None) -> dict[str, Any]:
    """Pending ops, oldest age, conflicts, dead letters and the last push, as plain values.

    Keys: ``pending`` (ops not yet acknowledged: pending, retry, in flight or held),
    ``by_state``, ``oldest_pending_age_s`` (None when nothing is pending),
    ``conflicts`` (unresolved), ``dead_letters``, ``held``, ``acknowledged`` (confirmed,
    still overlaid until a pull shows them), ``last_push`` (None before the first push:
    ``at``, ``ok``, ``acked``, ``conflicts``, ``dead``, ``retrying``, ``paused``...).
    """
    stamp = time.time() if now is None else now
    with store.session() as s:
        counts = outbox_store.op_counts(s)
        oldest = outbox_store.oldest_active(s)
        conflicts = outbox_store.count_unresolved_conflicts(s)
        last = outbox_store.get_last_push(s)
    return {
        "pending": sum(counts.get(state, 0) for state in ACTIVE_STATES),
        "by_state": dict(sorted(counts.items())),
        "oldest_pending_age_s": None if oldest is None else round(max(0.0, stamp - oldest), 1),
        "conflicts": conflicts,
        "dead_letters": counts.get("failed", 0),
        "held": counts.get("held", 0),
        "acknowledged": counts.get("done", 0),
        "last_push": last,
    }
