"""Deterministic, evenly spaced downsampling of history rows.

W&B's ``history(samples=...)``, ``sampledHistory`` and ``events(samples=...)`` return at
most ``samples`` rows; which rows is not part of the client contract, and the real
server's algorithm is unknown. We pick ours so that it is *useful* and *testable*:

* deterministic: the same rows for the same request, so re-fetching a chart, a test or
  a cached page gives identical answers;
* evenly spaced over the row index, so a downsampled curve keeps its shape;
* keeps the first and the last row, so a plot starts and ends where the data does and
  ``summary``-style "last value" reads stay correct.

The offline ``Api`` reuses :func:`sample_evenly`, so both paths agree row for row.
"""

from __future__ import annotations

__all__ = ["sample_evenly"]


def sample_evenly(n: int, k: int) -> list[int]:
    """Indices of ``k`` rows out of ``n``: sorted, unique, evenly spaced, first+last kept.

    Returns ``range(n)`` when ``k >= n`` (nothing to drop), ``[]`` when ``k <= 0`` or
    ``n <= 0``, and ``[0]`` when ``k == 1`` (the first row: one row cannot be both ends).
    Otherwise index ``i`` maps to ``round(i * (n - 1) / (k - 1))``, computed in exact
    integer arithmetic (no float drift on huge runs). Because the spacing
    ``(n - 1) / (k - 1)`` is at least 1 when ``k <= n``, the rounded indices are strictly
    increasing, hence unique, and there are exactly ``k`` of them.
    """
    if n <= 0 or k <= 0:
        return []
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    span, parts = n - 1, k - 1
    half = parts // 2
    return [(i * span + half) // parts for i in range(k)]
