"""Queued local edits: enqueue, coalesce, 3-way merge, replay, dead letters.

Modules: :mod:`~mirror.outbox.ops` (payloads and their algebra), :mod:`~mirror.outbox.edits`
(making edits), :mod:`~mirror.outbox.overlay` (read-your-writes),
:mod:`~mirror.outbox.merge` (the 3-way merge), :mod:`~mirror.outbox.replay` (`mirror push`),
:mod:`~mirror.outbox.settle` (leaving the overlay after a pull),
:mod:`~mirror.outbox.resolve` (conflicts and dead letters), :mod:`~mirror.outbox.status`.
The rows themselves live in :mod:`mirror.store.outbox`.
"""
