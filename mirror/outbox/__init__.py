"""Queued local edits: enqueue, coalesce, 3-way merge, replay, dead letters."""
