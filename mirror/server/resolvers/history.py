"""History, events, sampledHistory, parquetHistory and historyKeys of a run.

Semantics (``wandb-protocol.md`` sections 4.5-4.7 and 7):

* ``history(samples, minStep, maxStep)``: rows with ``minStep <= _step < maxStep``
  (maxStep EXCLUSIVE), each a JSON string, at most ``samples`` of them, chosen by
  :func:`~mirror.sampling.sample_evenly`. wandb-core's ``scan_history`` pages
  with ``samples = maxStep - minStep``, so a page is never thinned.
* ``sampledHistory(specs)``: per spec ``{keys, samples, minStep?, maxStep?}`` (maxStep
  INCLUSIVE: wandb-core sends ``page_end - 1``), one inline list of the rows that hold
  every key, each reduced to exactly those keys. wandb-core repeats ``_step`` in the keys
  (``["_step", *keys, "_step"]``); duplicates are harmless.
* ``parquetHistory(liveKeys)``: no exported files (``parquetUrls: []``) and one
  ``liveData`` object per row holding ``_step`` (plus any other live key the row has).
  wandb-core takes the smallest live ``_step`` as the start of live data, so every page
  of ``scan_history`` is then fetched through ``history``/``sampledHistory``.
* ``historyKeys``: ``{"lastStep": int, "keys": {key: {"typeCounts": [...]}}}``, inline.

Rows are served as the stored text (already W&B's wire JSON) wherever they need no
projection, so a 1000-row page costs no JSON decoding at all.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from graphql import GraphQLError

from mirror.records import RunRecord
from mirror.sampling import sample_evenly
from mirror.server.resolvers.common import RequestContext, parse_json_input
from mirror.store import history as store_history
from mirror.store import queries

_STATS_CACHE: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()
_STATS_LOCK = threading.Lock()
_STATS_CACHE_SIZE = 256


def bounds(rc: RequestContext, run_pk: int) -> tuple[int, int | None, int | None]:
    """``(row count, first step, last step)`` of the stored history, memoised per request."""
    key = ("bounds", run_pk)
    if key not in rc.cache:
        rc.cache[key] = store_history.history_bounds(rc.session, run_pk)
    result: tuple[int, int | None, int | None] = rc.cache[key]
    return result


def history_line_count(rc: RequestContext, rec: RunRecord) -> int:
    """The stored line count, else the rows we hold.

    The stored value is what file_stream maintains ("highest line index written + 1",
    where the SDK resumes its history stream) or what upstream reported; it is never
    derived from rows, which are keyed by step and may be fewer than lines.
    """
    assert rec.pk is not None
    if rec.history_line_count is not None:
        return rec.history_line_count
    n, _, _ = bounds(rc, rec.pk)
    return n


def history_keys(rc: RequestContext, rec: RunRecord) -> dict[str, Any]:
    """``historyKeys`` with the ``lastStep`` of the rows we hold.

    The stored document (kept current by file_stream, or as upstream sent it) is served
    when its ``lastStep`` matches our rows; otherwise the key statistics are computed from
    the rows (cached while the rows do not change). Without rows, upstream's stored
    document (or an empty one with ``lastStep`` -1, which makes ``scan_history`` read
    nothing) stands in.
    """
    assert rec.pk is not None
    first, last = queries.history_step_range(rc.session, rec.pk)
    stored = rec.history_keys
    if last is None:
        if isinstance(stored, dict):
            return stored
        return {"keys": {}, "lastStep": rec.last_step if rec.last_step is not None else -1}
    if isinstance(stored, dict) and stored.get("lastStep") == last and "keys" in stored:
        return stored
    n, _, _ = bounds(rc, rec.pk)
    cache_key = (rc.server.store.url, rec.pk, n, first, last)
    with _STATS_LOCK:
        cached = _STATS_CACHE.get(cache_key)
        if cached is not None:
            _STATS_CACHE.move_to_end(cache_key)
            return cached
    stats = queries.history_key_stats(rc.session, rec.pk)
    doc = {
        "keys": {
            key: {"typeCounts": [{"type": t, "count": c} for t, c in sorted(kinds.items())]}
            for key, kinds in sorted(stats.items())
        },
        "lastStep": last,
    }
    with _STATS_LOCK:
        _STATS_CACHE[cache_key] = doc
        while len(_STATS_CACHE) > _STATS_CACHE_SIZE:
            _STATS_CACHE.popitem(last=False)
    return doc


def history(
    rc: RequestContext,
    run_pk: int,
    samples: int | None,
    min_step: int | None,
    max_step: int | None,
) -> list[str]:
    """Rows in ``[min_step, max_step)``, at most ``samples`` (all when ``samples`` is null)."""
    if samples is not None and samples <= 0:
        return []
    # Steps are unique integers, so a window no wider than ``samples`` needs no thinning
    # (the scan_history case: samples = maxStep - minStep).
    if samples is None or (
        min_step is not None and max_step is not None and max_step - min_step <= samples
    ):
        return queries.history_texts(rc.session, run_pk, min_step, max_step)
    steps = queries.history_steps_in(rc.session, run_pk, min_step, max_step)
    if len(steps) <= samples:
        return queries.history_texts(rc.session, run_pk, min_step, max_step)
    chosen = [steps[i] for i in sample_evenly(len(steps), samples)]
    return queries.history_texts_at(rc.session, run_pk, chosen)


def events(rc: RequestContext, run_pk: int, samples: int | None) -> list[str]:
    """System-metrics rows in order, at most ``samples`` (evenly, first and last kept)."""
    if samples is not None and samples <= 0:
        return []
    if samples is None:
        return queries.event_texts(rc.session, run_pk)
    n = queries.event_count(rc.session, run_pk)
    if n <= samples:
        return queries.event_texts(rc.session, run_pk)
    return queries.event_texts_at(rc.session, run_pk, sample_evenly(n, samples))


def _spec(raw: Any) -> tuple[list[str], int | None, int | None, int | None]:
    spec = parse_json_input(raw, "sampledHistory spec")
    if not isinstance(spec, dict):
        raise GraphQLError("a sampledHistory spec must be a JSON object")
    keys = spec.get("keys") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise GraphQLError("sampledHistory spec keys must be a list of strings")
    out: list[int | None] = []
    for name in ("samples", "minStep", "maxStep"):
        value = spec.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise GraphQLError(f"sampledHistory spec {name} must be a number")
        out.append(None if value is None else int(value))
    return list(dict.fromkeys(keys)), out[0], out[1], out[2]


def sampled_history(rc: RequestContext, run_pk: int, specs: list[Any]) -> list[list[Any]]:
    """One list per spec of the rows holding all its keys, reduced to those keys."""
    result: list[list[Any]] = []
    for raw in specs:
        keys, samples, lo, hi = _spec(raw)
        upper = None if hi is None else hi + 1  # the spec's maxStep is inclusive
        rows: list[dict[str, Any]] = []
        for row in queries.iter_history_rows(rc.session, run_pk, lo, upper):
            if all(k in row for k in keys):
                rows.append({k: row[k] for k in keys} if keys else row)
        if samples is not None and len(rows) > samples:
            rows = [rows[i] for i in sample_evenly(len(rows), samples)]
        result.append(rows)
    return result


def parquet_history(rc: RequestContext, run_pk: int, live_keys: list[str]) -> dict[str, Any]:
    """No parquet exports; every row is live, so scan_history pages through ``history``."""
    extra = [k for k in dict.fromkeys(live_keys) if k != "_step"]
    live: list[dict[str, Any]]
    if not extra:
        live = [{"_step": s} for s in queries.history_steps_in(rc.session, run_pk)]
    else:
        live = [
            {"_step": row.get("_step"), **{k: row[k] for k in extra if k in row}}
            for row in queries.iter_history_rows(rc.session, run_pk)
        ]
    return {"parquetUrls": [], "liveData": live}


def history_tail(rc: RequestContext, run_pk: int, n: int = 10) -> str:
    """``historyTail``: a JSON array (as a string) of the last ``n`` history line strings."""
    steps = queries.history_steps_in(rc.session, run_pk)[-n:]
    return json.dumps(queries.history_texts_at(rc.session, run_pk, steps))


def events_tail(rc: RequestContext, run_pk: int, n: int = 10) -> str:
    """``eventsTail``: a JSON array (as a string) of the last ``n`` events line strings."""
    return json.dumps(queries.event_texts(rc.session, run_pk)[-n:])
