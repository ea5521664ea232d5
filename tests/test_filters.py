"""W&B run filters and order strings compiled to SQL, run against a real migrated store.

Every assertion is on the exact ids (or their exact order) the database returns: the
filter is SQL, so nothing is filtered in Python. The Hypothesis test at the end checks
the compiled SQL against a small MongoDB-like evaluator written in Python, which is where
null/missing/type-mixing bugs show up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, func, select, text
from sqlalchemy.dialects import postgresql, sqlite

from mirror.errors import FilterError
from mirror.store import Store
from mirror.store.filters import (
    RUN_FIELDS,
    compile_filters,
    compile_order,
    keyset_after,
    order_columns,
    register_sqlite_functions,
)
from mirror.store.models import Run

MISSING = object()


def _nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"state": "finished"}
    for _ in range(depth):
        doc = {"$and": [doc]}
    return doc


def _wrap(config: Mapping[str, Any]) -> dict[str, Any]:
    """Config as W&B stores it: every key wrapped as {"value": v, "desc": null}."""
    return {k: {"value": v, "desc": None} for k, v in config.items()}


# Fifteen runs, listed in created_at order (r05 has none). Each line exercises something:
# wrapped/nested/int/float/str configs, NaN and Infinity in summaries, unicode and quote
# keys, missing keys, null tags, the "null" inside a tag that makes codec write the exact
# (tab-prefixed) encoding.
RUNS: list[dict[str, Any]] = [
    dict(
        run_id="r01", display_name="foo-alpha", state="finished", tags=["baseline", "x"],
        config=_wrap({"experiment_name": "foo", "lr": 0.1, "batch": 32,
                      "opt": {"name": "adam", "beta": 0.9}, "use_bn": True}),
        summary={"loss": 0.5, "acc": 0.8, "_step": 100, "_runtime": 120.5,
                 "_timestamp": 1704103200.0, "_wandb": {"runtime": 120},
                 "model1": {"loss": 0.4}},
        created_at="2024-01-01T10:00:00Z", heartbeat_at="2024-01-01T11:00:00Z",
        updated_at="2024-01-05T00:00:00Z", group_name="g1", host="gpu-1", job_type="train",
        username="alice", sweep_name="sw1", commit="abc123", notes="first try",
        history_keys={"lastStep": 100, "keys": {"loss": {"typeCounts": []},
                                                "train/acc": {}, "eval.loss": {}}},
    ),
    dict(
        run_id="r02", display_name="foo-beta", state="finished", tags=["x"],
        config=_wrap({"experiment_name": "foo", "lr": 0.01, "batch": 64,
                      "opt": {"name": "sgd", "beta": 0.5}, "use_bn": False}),
        summary={"loss": 0.3, "acc": 0.85, "_step": 200, "_wandb": {"runtime": 300}},
        created_at="2024-01-02T10:00:00Z", heartbeat_at="2024-01-03T09:00:00Z",
        updated_at="2024-01-03T09:00:00Z", group_name="g1", host="gpu-2", job_type="train",
        username="alice", sweep_name="sw1", commit="def456",
        history_keys={"lastStep": 200, "keys": {"loss": {}}},
    ),
    dict(
        run_id="r03", display_name="bar-1", state="crashed", tags=["y"],
        config=_wrap({"experiment_name": "bar", "lr": 1, "batch": 32}),
        summary={"loss": math.nan, "acc": 0.9, "_runtime": 50},  # NaN: not JSON
        created_at="2024-01-03T10:00:00Z", heartbeat_at="2024-01-03T10:30:00Z",
        group_name="g2", host="gpu-1", job_type="eval", username="bob", sweep_name="sw1",
    ),
    dict(
        run_id="r04", display_name="baz", state="running", tags=[],
        config=_wrap({"experiment_name": "baz", "lr": "high"}),
        summary={}, created_at="2024-01-04T10:00:00Z", heartbeat_at="2024-02-01T00:00:00Z",
        group_name="g2", job_type="eval", username="bob", notes="",
    ),
    dict(run_id="r05", state="failed"),  # nothing else: every JSON column is NULL
    dict(
        run_id="r06", display_name="ünïcode run", state="finished",
        tags=["ünï", "with space"],
        config=_wrap({"λ": 2, 'quote"key': 5, "sp ace": "v", "back\\slash": 1}),
        summary={"é": 1.5, "loss": 0.7, 'q"': "yes"},
        created_at="2024-01-06T10:00:00Z", username="carol",
    ),
    dict(
        run_id="r07", display_name="strings", state="finished", tags=["nullable"],
        config=_wrap({"lr": None, "experiment_name": "foo"}),  # lr present but null
        summary={"loss": "n/a", "big": math.inf, "small": -math.inf},
        created_at="2024-01-07T10:00:00Z", username="carol",
    ),
    dict(
        run_id="r08", display_name="int-loss", state="finished", tags=["x", "y"],
        config=_wrap({"lr": 0.001, "batch": 2**70}),  # a wide integer: exact encoder
        summary={"loss": 1, "_runtime": 10},
        created_at="2024-01-08T10:00:00Z", job_type="train",
    ),
    dict(
        run_id="r09", display_name="foo-gamma", state="finished", tags=["x"],
        config=_wrap({"experiment_name": "foo", "lr": 0.05}), summary={"loss": 0.3},
        created_at="2024-02-01T10:00:00Z", sweep_name="sw2", username="dave",
    ),
    dict(
        run_id="r10", display_name="Foo-Upper", state="killed", tags=None,
        config=_wrap({"experiment_name": "Foo"}), summary={"loss": 0.9},
        created_at="2024-02-02T10:00:00Z",
    ),
    dict(
        run_id="r11", display_name="bar-2", state="finished", tags=["baseline"],
        config=_wrap({"experiment_name": "bar", "lr": 0.1}),
        summary={"loss": 0.2, "acc": 0.95, "model1": {"loss": 0.1}},
        created_at="2024-02-03T10:00:00Z", sweep_name="sw2",
    ),
    dict(
        run_id="r12", display_name="nested", state="running", tags=["z"],
        config={"opt": {"value": {"name": "adam", "beta": 0.99}}}, summary={"acc": True},
        created_at="2024-02-04T10:00:00Z",
    ),
    dict(
        run_id="r13", display_name="dup-time-a", state="finished", tags=["t"],
        config=_wrap({"lr": 0.2}), summary={"loss": 0.4},
        created_at="2024-03-01T00:00:00Z",
    ),
    dict(
        run_id="r14", display_name="dup-time-b", state="finished", tags=["t"],
        config=_wrap({"lr": 0.2}), summary={"loss": 0.4},
        created_at="2024-03-01T00:00:00Z",
    ),
    dict(
        run_id="r15", display_name="last", state="preempted", tags=["x"],
        config=_wrap({"experiment_name": "qux"}), summary={"loss": -1.5},
        created_at="2024-03-02T00:00:00Z",
    ),
]
ALL = {r["run_id"] for r in RUNS}


def _functions(store: Store) -> None:
    """Install the SQLite functions on every connection (engine.py will do it itself)."""
    event.listen(store.engine, "connect", lambda conn, _record: register_sqlite_functions(conn))
    store.engine.dispose()  # drop connections opened before the hook


def _insert(store: Store, runs: list[dict[str, Any]], project: str = "p") -> None:
    with store.transaction() as session:
        for fields in runs:
            session.add(Run(entity="e", project=project, **fields))


@pytest.fixture
def runs(store: Store) -> Iterator[Store]:
    _functions(store)
    _insert(store, RUNS)
    yield store


def ids(store: Store, filters: Any = None, order: str | None = None) -> list[str]:
    """Run ids the compiled filter selects, in the compiled order."""
    query = select(Run.__table__.c.run_id).where(compile_filters(filters))  # type: ignore[attr-defined]
    with store.session() as session:
        return list(session.execute(query.order_by(*compile_order(order))).scalars())


def idset(store: Store, filters: Any) -> set[str]:
    found = ids(store, filters)
    assert len(found) == len(set(found))
    return set(found)


# --- fields and operators ------------------------------------------------------------------

CASES: list[tuple[Any, set[str]]] = [
    # run columns, both spellings
    ({"name": "r01"}, {"r01"}),
    ({"id": "r02"}, {"r02"}),
    ({"name": {"$in": ["r01", "r03", "nope"]}}, {"r01", "r03"}),  # W&B's Go scheduler
    ({"displayName": "foo-beta"}, {"r02"}),
    ({"display_name": "foo-beta"}, {"r02"}),
    ({"display_name": None}, {"r05"}),
    ({"state": "finished"}, {"r01", "r02", "r06", "r07", "r08", "r09", "r11", "r13", "r14"}),
    ({"state": {"$ne": "finished"}}, {"r03", "r04", "r05", "r10", "r12", "r15"}),
    ({"state": {"$in": ["running", "crashed"]}}, {"r03", "r04", "r12"}),
    ({"state": {"$nin": ["finished", "running", "crashed"]}}, {"r05", "r10", "r15"}),
    ({"group": "g1"}, {"r01", "r02"}),
    ({"host": "gpu-1"}, {"r01", "r03"}),
    ({"jobType": "eval"}, {"r03", "r04"}),
    ({"job_type": "train"}, {"r01", "r02", "r08"}),
    ({"username": "alice"}, {"r01", "r02"}),
    ({"sweep": "sw2"}, {"r09", "r11"}),
    ({"sweepName": "sw1"}, {"r01", "r02", "r03"}),
    ({"commit": "abc123"}, {"r01"}),
    ({"notes": "first try"}, {"r01"}),
    ({"notes": ""}, {"r04"}),
    ({"notes": {"$exists": True}}, {"r01", "r04"}),
    ({"host": {"$exists": False}}, ALL - {"r01", "r02", "r03"}),
    ({"host": None}, ALL - {"r01", "r02", "r03"}),
    ({"host": {"$ne": None}}, {"r01", "r02", "r03"}),
    ({"host": {"$ne": "gpu-1"}}, ALL - {"r01", "r03"}),  # $ne matches missing
    ({"host": {"$in": ["gpu-2", None]}}, ALL - {"r01", "r03"}),
    # timestamps: ISO strings, compared as text
    ({"createdAt": {"$gt": "2024-03-01T00:00:00Z"}}, {"r15"}),
    ({"created_at": {"$gte": "2024-03-01T00:00:00Z"}}, {"r13", "r14", "r15"}),
    ({"created_at": {"$lt": "2024-01-02T10:00:00Z"}}, {"r01"}),
    ({"created_at": {"$lte": "2024-01-02T10:00:00Z"}}, {"r01", "r02"}),
    ({"created_at": {"$gt": "2099-01-01T00:00:00Z"}}, set()),  # future cutoff: nothing
    ({"heartbeatAt": {"$gt": "2024-01-03T00:00:00Z"}}, {"r02", "r03", "r04"}),
    ({"heartbeat_at": {"$gt": "2024-01-03T09:30:00Z"}}, {"r03", "r04"}),
    ({"updatedAt": {"$gte": "2024-01-04T00:00:00Z"}}, {"r01"}),
    ({"updated_at": {"$lt": "2024-01-04T00:00:00Z"}}, {"r02"}),
    # the import/export guide's date filter and the protocol's examples
    (
        {"$and": [{"created_at": {"$lt": "2024-01-04T00:00:00Z", "$gt": "2024-01-01T12:00:00Z"}}]},
        {"r02", "r03"},
    ),
    (
        {"$and": [{"created_at": {"$lt": "2024-02-01T00:00:00Z", "$gt": "2024-01-01T12:00:00Z"}},
                  {"state": "finished"}]},
        {"r02", "r06", "r07", "r08"},
    ),
    ({"$or": [{"config.experiment_name": "foo"}, {"config.experiment_name": "bar"}]},
     {"r01", "r02", "r03", "r07", "r09", "r11"}),
    ({"config.experiment_name": "foo"}, {"r01", "r02", "r07", "r09"}),
    ({"display_name": {"$regex": "^foo.*"}}, {"r01", "r02", "r09"}),
    ({"display_name": {"$regex": "^foo", "$options": "i"}}, {"r01", "r02", "r09", "r10"}),
    ({"display_name": {"$regex": "ïcode|int-"}}, {"r06", "r08"}),
    ({"$or": [{"tags": None}, {"tags": {"$ne": "x"}}]},
     {"r03", "r04", "r05", "r06", "r07", "r10", "r11", "r12", "r13", "r14"}),
    ({"tags": {"$in": ["baseline", "z"]}}, {"r01", "r11", "r12"}),
    ({"$and": [{"sweep": "sw1"}]}, {"r01", "r02", "r03"}),  # sweep.runs
    # tags
    ({"tags": "x"}, {"r01", "r02", "r08", "r09", "r15"}),
    ({"tags": {"$eq": "y"}}, {"r03", "r08"}),
    ({"tags": "ünï"}, {"r06"}),
    ({"tags": "with space"}, {"r06"}),
    ({"tags": "nullable"}, {"r07"}),
    ({"tags": "null"}, set()),
    ({"tags": None}, {"r04", "r05", "r10"}),  # [] and NULL both mean "no tags"
    ({"tags": {"$exists": False}}, {"r04", "r05", "r10"}),
    ({"tags": {"$exists": True}}, ALL - {"r04", "r05", "r10"}),
    ({"tags": {"$ne": None}}, ALL - {"r04", "r05", "r10"}),
    ({"tags": {"$nin": ["x", "y", "t"]}}, {"r04", "r05", "r06", "r07", "r10", "r11", "r12"}),
    ({"tags": {"$all": ["x", "y"]}}, {"r08"}),
    ({"tags": {"$all": []}}, set()),
    ({"tags": {"$in": ["z", None]}}, {"r04", "r05", "r10", "r12"}),
    ({"tags": {"$regex": "^base"}}, {"r01", "r11"}),
    ({"tags": {"$not": {"$in": ["x", "t"]}}},
     {"r03", "r04", "r05", "r06", "r07", "r10", "r11", "r12"}),
    # config: wrapped, ".value" optional, nested, typed
    ({"config.lr": 0.1}, {"r01", "r11"}),
    ({"config.lr.value": 0.1}, {"r01", "r11"}),
    ({"config.lr": {"$gt": 0.01}}, {"r01", "r03", "r09", "r11", "r13", "r14"}),
    ({"config.lr.value": {"$gte": 0.01, "$lt": 0.1}}, {"r02", "r09"}),
    ({"config.lr": 1}, {"r03"}),  # an int equals its float
    ({"config.lr": 1.0}, {"r03"}),
    ({"config.lr": "high"}, {"r04"}),
    ({"config.lr": {"$gt": "a"}}, {"r04"}),  # strings only compare with strings
    ({"config.lr": {"$lt": 100}}, {"r01", "r02", "r03", "r08", "r09", "r11", "r13", "r14"}),
    ({"config.lr": None}, ALL - {"r01", "r02", "r03", "r04", "r08", "r09", "r11", "r13", "r14"}),
    ({"config.lr": {"$exists": True}},
     {"r01", "r02", "r03", "r04", "r07", "r08", "r09", "r11", "r13", "r14"}),
    ({"config.lr": {"$exists": False}}, {"r05", "r06", "r10", "r12", "r15"}),
    ({"config.lr": {"$ne": 0.1}}, ALL - {"r01", "r11"}),  # incl. missing and null
    ({"config.lr": {"$in": [0.1, "high", None]}},
     {"r01", "r04", "r05", "r06", "r07", "r10", "r11", "r12", "r15"}),
    ({"config.lr": {"$nin": [0.1, 0.2]}}, ALL - {"r01", "r11", "r13", "r14"}),
    ({"config.batch": 32}, {"r01", "r03"}),
    ({"config.batch": {"$gt": 2**62}}, {"r08"}),  # wide integer
    ({"config.opt.name": "adam"}, {"r01", "r12"}),  # nested: opt.value.name
    ({"config.opt.value.name": "sgd"}, {"r02"}),
    ({"config.opt.beta": {"$gte": 0.9}}, {"r01", "r12"}),
    ({"config.use_bn": True}, {"r01"}),
    ({"config.use_bn": False}, {"r02"}),
    ({"config.use_bn": {"$ne": True}}, ALL - {"r01"}),
    ({"config.experiment_name": {"$regex": "^ba"}}, {"r03", "r04", "r11"}),
    ({"config.experiment_name": {"$regex": "^f", "$options": "i"}},
     {"r01", "r02", "r07", "r09", "r10"}),
    ({"config.λ": 2}, {"r06"}),  # unicode key (stored \\u-escaped by the exact encoder)
    ({'config.quote"key': {"$gte": 5}}, {"r06"}),
    ({"config.sp ace": "v"}, {"r06"}),
    ({"config.back\\slash": 1}, {"r06"}),
    ({"config.'); DROP TABLE run; --": 1}, set()),
    # summary: three spellings, nested, NaN/Infinity, history-derived fields
    ({"summary_metrics.loss": {"$lt": 0.35}}, {"r02", "r09", "r11", "r15"}),
    ({"summaryMetrics.loss": 0.3}, {"r02", "r09"}),
    ({"summary.acc": {"$gt": 0.85}}, {"r03", "r11"}),  # r03's NaN loss hides nothing else
    ({"summary_metrics.acc": True}, {"r12"}),
    ({"summary_metrics.loss": 1}, {"r08"}),
    ({"summary_metrics.loss": "n/a"}, {"r07"}),
    ({"summary_metrics.loss": None}, {"r03", "r04", "r05", "r12"}),  # NaN reads as null
    ({"summary_metrics.loss": {"$exists": True}}, ALL - {"r04", "r05", "r12"}),
    ({"summary_metrics.model1.loss": {"$lt": 0.3}}, {"r11"}),
    ({"summary_metrics.big": {"$gt": 1e300}}, {"r07"}),
    ({"summary_metrics.small": {"$lt": -1e300}}, {"r07"}),
    ({"summary_metrics.é": 1.5}, {"r06"}),
    ({'summary_metrics.q"': "yes"}, {"r06"}),
    ({"_step": {"$gte": 100}}, {"r01", "r02"}),
    ({"_runtime": {"$lt": 100}}, {"r03", "r08"}),
    ({"_timestamp": {"$exists": True}}, {"r01"}),
    ({"duration": {"$gt": 100}}, {"r01", "r02"}),  # _wandb.runtime wins over _runtime
    ({"duration": {"$lte": 50}}, {"r03", "r08"}),
    ({"duration": None}, ALL - {"r01", "r02", "r03", "r08"}),
    ({"keys_info.keys.loss": {"$exists": True}}, {"r01", "r02"}),
    ({"keys_info.keys.train/acc": {"$exists": True}}, {"r01"}),
    ({"keys_info.keys.eval.loss": {"$exists": True}}, {"r01"}),  # one key, with a dot
    ({"keys_info.keys.nope": {"$exists": False}}, ALL),
    # logic
    ({"state": "finished", "tags": "x"}, {"r01", "r02", "r08", "r09"}),  # implicit AND
    ({"$or": [{"state": "crashed"}, {"tags": "z"}]}, {"r03", "r12"}),
    ({"$nor": [{"state": "finished"}, {"tags": None}]}, {"r03", "r12", "r15"}),
    ({"$and": []}, ALL),
    ({"$or": []}, set()),
    ({"$nor": []}, ALL),
    ({"$or": [{"$and": []}]}, ALL),  # the W&B UI's empty filter
    ({"$and": [{"$or": [{"config.lr": 0.1}, {"config.lr": 0.2}]}, {"tags": "t"}]},
     {"r13", "r14"}),
    ({"config.lr": {"$not": {"$gt": 0.05}}}, ALL - {"r01", "r03", "r11", "r13", "r14"}),
    ({"state": {"$eq": "finished", "$ne": "running"}, "username": {"$regex": "^c"}},
     {"r06", "r07"}),
]


@pytest.mark.parametrize(("filters", "expected"), CASES, ids=[json.dumps(c[0]) for c in CASES])
def test_filter_selects_exactly(runs: Store, filters: Any, expected: set[str]) -> None:
    assert idset(runs, filters) == expected
    # The server receives the same filter as JSON text (json.dumps in the client).
    assert idset(runs, json.dumps(filters)) == expected


@pytest.mark.parametrize("filters", [None, {}, "", "  ", "{}", "null", b"{}"])
def test_empty_filters_match_every_run(runs: Store, filters: Any) -> None:
    assert idset(runs, filters) == ALL


def test_count_is_sql_too(runs: Store) -> None:
    """runCount(filters:) is a COUNT over the same condition."""
    query = select(func.count()).select_from(Run).where(compile_filters({"tags": "x"}))
    with runs.session() as session:
        assert session.execute(query).scalar_one() == 5


def test_every_run_field_name_works(runs: Store) -> None:
    for name in RUN_FIELDS:
        assert idset(runs, {name: {"$exists": True}}) <= ALL


def test_cached_statements_get_their_own_values(runs: Store) -> None:
    """Same-shaped filters reuse SQLAlchemy's compiled cache: values must not leak."""
    for _ in range(2):
        assert idset(runs, {"tags": "x", "config.lr": 0.1}) == {"r01"}
        assert idset(runs, {"tags": "t", "config.lr": 0.2}) == {"r13", "r14"}
        assert idset(runs, {"config.batch": 64}) == {"r02"}
        assert idset(runs, {"config.lr": 0.05}) == {"r09"}
        assert idset(runs, {"config.λ": 2}) == {"r06"}
        assert idset(runs, {'config.quote"key': 5}) == {"r06"}


def test_corrupt_json_reads_as_missing_instead_of_failing(runs: Store) -> None:
    with runs.transaction() as session:
        session.execute(text("UPDATE run SET summary = '{not json', config = 'NaN]' "
                             "WHERE run_id = 'r02'"))
    assert idset(runs, {"summary_metrics.loss": 0.3}) == {"r09"}
    assert idset(runs, {"config.lr": {"$exists": False}}) == {"r02", "r05", "r06", "r10",
                                                               "r12", "r15"}
    assert ids(runs, {"sweep": "sw1"}, "+summary_metrics.loss") == ["r01", "r02", "r03"]


def test_postgresql_sql_binds_every_user_value() -> None:
    """The PostgreSQL branch compiles (it cannot run here) and inlines no user input."""
    condition = compile_filters(
        {"config.sekrit_key": "sekrit_value", "tags": {"$regex": "sekrit_re"},
         "config.sekrit_opt.sekrit_name": "sekrit_adam",  # nested: JSON path, not run_value
         "summary_metrics.a": {"$gt": 12345}, "display_name": {"$ne": "sekrit_name"}}
    )
    query = select(Run).where(condition).order_by(*compile_order("-summary_metrics.sekrit_m"))
    sql = str(query.compile(dialect=postgresql.dialect()))
    assert "#>" in sql and "jsonb_array_elements_text" in sql and "run_value" in sql
    assert "sekrit" not in sql and "12345" not in sql


# --- order -------------------------------------------------------------------------------------

BY_CREATED = ["r01", "r02", "r03", "r04", "r06", "r07", "r08", "r09", "r10", "r11", "r12",
              "r13", "r14", "r15", "r05"]


@pytest.mark.parametrize(
    "order", [None, "", "+created_at", "created_at", "createdAt", " created_at"]
)
def test_default_and_ascending_created_at(runs: Store, order: str | None) -> None:
    assert ids(runs, None, order) == BY_CREATED  # r05 has no created_at: last


def test_descending_created_at_keeps_nulls_last_and_ties_stable(runs: Store) -> None:
    expected = [r for r in reversed(BY_CREATED) if r != "r05"] + ["r05"]
    assert ids(runs, None, "-created_at") == expected  # r14 before r13: pk breaks the tie
    assert ids(runs, None, "-createdAt") == expected


def test_order_by_summary_metric_puts_runs_without_it_last(runs: Store) -> None:
    # numbers first (ordered), then strings, then no value (missing, NaN, bool, NULL)
    assert ids(runs, None, "+summary_metrics.loss") == [
        "r15", "r11", "r02", "r09", "r13", "r14", "r01", "r06", "r10", "r08",
        "r07", "r03", "r04", "r05", "r12"]
    assert ids(runs, None, "-summary_metrics.loss") == [
        "r08", "r10", "r06", "r01", "r14", "r13", "r09", "r02", "r11", "r15",
        "r07", "r12", "r05", "r04", "r03"]
    assert ids(runs, None, "summary.loss")[:2] == ["r15", "r11"]  # the guide's spelling


def test_sweep_best_run(runs: Store) -> None:
    """sweep.best_run(): Runs(filters={"$and": [{"sweep": id}]}, order="+summary_metrics.loss")."""
    assert ids(runs, {"$and": [{"sweep": "sw1"}]}, "+summary_metrics.loss")[0] == "r02"
    assert ids(runs, {"$and": [{"sweep": "sw1"}]}, "-summary_metrics.loss") == ["r01", "r02", "r03"]


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("+config.lr", ["r08", "r02", "r09", "r01", "r11", "r13", "r14", "r03", "r04"]),
        ("-config.lr.value", ["r03", "r14", "r13", "r11", "r01", "r09", "r02", "r08", "r04"]),
        ("config.experiment_name", ["r10", "r03", "r11", "r04", "r01", "r02", "r07", "r09",
                                    "r15"]),  # binary collation: "Foo" < "bar"
        ("-duration", ["r02", "r01", "r03", "r08"]),
        ("+name", sorted(ALL)),
        ("-name", sorted(ALL, reverse=True)),
        ("+display_name", ["r10", "r03", "r11", "r04", "r13", "r14", "r01", "r02", "r09",
                           "r08", "r15", "r12", "r07", "r06"]),
        ("-heartbeatAt", ["r04", "r03", "r02", "r01"]),
        ("+updated_at", ["r02", "r01"]),
        ("-summary_metrics.model1.loss", ["r01", "r11"]),
    ],
)
def test_order_fields(runs: Store, order: str, expected: list[str]) -> None:
    assert ids(runs, None, order)[: len(expected)] == expected


@pytest.mark.parametrize(
    "order",
    ["+created_at", "-created_at", "+summary_metrics.loss", "-summary_metrics.loss",
     "+config.lr", "-config.experiment_name", "-duration", "+display_name"],
)
def test_keyset_pagination_walks_the_same_order(runs: Store, order: str) -> None:
    """Pages of 4 via keyset_after() list exactly the runs of one ORDER BY, in order."""
    columns = order_columns(order)
    table = Run.__table__  # type: ignore[attr-defined]
    keys = [c.expr.label(f"k{i}") for i, c in enumerate(columns)]
    query = select(table.c.run_id, *keys).order_by(*compile_order(order)).limit(4)
    seen: list[str] = []
    after = None
    with runs.session() as session:
        while True:
            page = query if after is None else query.where(keyset_after(columns, after))
            rows = session.execute(page).all()
            if not rows:
                break
            seen += [row[0] for row in rows]
            after = list(rows[-1][1:])
    assert seen == ids(runs, None, order)


# --- errors ------------------------------------------------------------------------------------

ERRORS: list[tuple[Any, str]] = [
    ({"state": {"$foo": 1}}, "$foo"),
    ({"$foo": [{"state": "x"}]}, "$foo"),
    ({"$where": "1"}, "$where"),
    ({"name": {"$in": "r01"}}, "$in"),
    ({"tags": {"$nin": "x"}}, "$nin"),
    ({"$and": {"state": "x"}}, "$and"),
    ({"$or": [1]}, "filters.$or[0]"),
    ({"display_name": {"$regex": "(unclosed"}}, "(unclosed"),
    ({"display_name": {"$regex": 5}}, "$regex"),
    ({"display_name": {"$regex": "a", "$options": "q"}}, "$options"),
    ({"display_name": {"$options": "i"}}, "$options"),
    ({"nonsense": 1}, "nonsense"),
    ({"inputArtifacts": 1}, "inputArtifacts"),
    ({"config.": 1}, "config."),
    ({"config..x": 1}, "config..x"),
    ({"summary_metrics": 1}, "summary_metrics"),
    ({"keys_info.keys.": {"$exists": True}}, "keys_info.keys."),
    ({"createdAt": {"$gt": 1690000000.0}}, "ISO-8601"),  # float epoch: HTTP 500 upstream
    ({"state": 1}, "state"),
    ({"config.lr": {"$gt": float("nan")}}, "finite"),
    ("{\"config.lr\": NaN}", "finite"),  # W&B answers 400
    ({"config.lr": {"$gt": None}}, "$gt"),
    ({"config.lr": {"$lt": True}}, "$lt"),
    ({"config.opt": {"name": "adam"}}, "objects or lists"),
    ({"config.opt": [1, 2]}, "objects or lists"),
    ({"config.lr": {"$gt": 1, "plain": 2}}, "mix"),
    ({"tags": {"$gt": "a"}}, "tags"),
    ({"tags": 3}, "tags are strings"),
    ({"tags": ["a", "b"]}, "tags are strings"),
    ({"state": {"$all": ["x"]}}, "$all"),
    ({"state": {"$exists": "yes"}}, "$exists"),
    ({"state": {"$not": "finished"}}, "$not"),
    ({"duration": "long"}, "duration"),
    ({"duration": {"$regex": "1"}}, "$regex"),
    ("not json", "not valid JSON"),
    ("[1, 2]", "filter object"),
    ([{"state": "x"}], "filter object"),
    ({1: "x"}, "field names are strings"),
    (_nested(40), "nested too deeply"),
]


@pytest.mark.parametrize(("filters", "fragment"), ERRORS, ids=[repr(e[0])[:60] for e in ERRORS])
def test_invalid_filters_raise_filter_error(filters: Any, fragment: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_filters(filters)
    assert fragment in str(info.value)
    assert info.value.hint  # every error says what to do
    assert info.value.terminal


@pytest.mark.parametrize(
    ("order", "fragment"),
    [("+nonsense", "nonsense"), ("-tags", "tags"), ("+config.", "config."), ("+", "''")],
)
def test_invalid_order_raises_filter_error(order: str, fragment: str) -> None:
    with pytest.raises(FilterError) as info:
        compile_order(order)
    assert fragment in str(info.value)


def test_unknown_field_error_lists_valid_fields() -> None:
    with pytest.raises(FilterError) as info:
        compile_filters({"stat": "finished"})
    assert "'stat'" in info.value.message
    assert "displayName" in info.value.hint and "config.<key>" in info.value.hint


# --- property: SQL == a MongoDB-like reference evaluator -----------------------------------

STATES = [None, "running", "finished", "crashed"]
A_VALUES: list[Any] = [MISSING, None, 0, 1, 2.5, "1"]
B_VALUES: list[Any] = [MISSING, -1, 1, 3]


def _grid() -> list[dict[str, Any]]:
    out = []
    for i, (a, b, state) in enumerate(
        (a, b, s) for a in A_VALUES for b in B_VALUES for s in STATES[:3]
    ):
        config = {k: {"value": v} for k, v in (("a", a), ("b", b)) if v is not MISSING}
        out.append({"run_id": f"g{i:03d}", "state": state, "config": config})
    return out


def _value(run: Mapping[str, Any], field: str) -> Any:
    if field == "state":
        return run["state"]
    wrapped = run["config"].get(field.split(".")[1], MISSING)
    return wrapped if wrapped is MISSING else wrapped["value"]


def _same_kind(x: Any, y: Any) -> bool:
    def kind(v: Any) -> str:
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        return "number" if number else type(v).__name__

    return kind(x) == kind(y)


def _eq(actual: Any, operand: Any) -> bool:
    if operand is None:
        return actual is MISSING or actual is None
    return actual is not MISSING and _same_kind(actual, operand) and actual == operand


def _cmp(op: Callable[[Any, Any], bool], actual: Any, operand: Any) -> bool:
    return actual not in (MISSING, None) and _same_kind(actual, operand) and op(actual, operand)


REFERENCE_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": _eq,
    "$ne": lambda a, v: not _eq(a, v),
    "$gt": lambda a, v: _cmp(lambda x, y: x > y, a, v),
    "$lt": lambda a, v: _cmp(lambda x, y: x < y, a, v),
    "$in": lambda a, vs: any(_eq(a, v) for v in vs),
    "$nin": lambda a, vs: not any(_eq(a, v) for v in vs),
}


def reference(run: Mapping[str, Any], doc: Mapping[str, Any]) -> bool:
    """MongoDB semantics for the subset the strategy generates."""
    for key, spec in doc.items():
        if key == "$and":
            ok = all(reference(run, d) for d in spec)
        elif key == "$or":
            ok = any(reference(run, d) for d in spec)
        elif key == "$nor":
            ok = not any(reference(run, d) for d in spec)
        elif isinstance(spec, dict):
            ok = all(REFERENCE_OPS[op](_value(run, key), v) for op, v in spec.items())
        else:
            ok = _eq(_value(run, key), spec)
        if not ok:
            return False
    return True


CONFIG_OPERANDS = st.one_of(st.none(), st.integers(-1, 3), st.sampled_from([0.5, 2.5, "1", "x"]))
STATE_OPERANDS = st.sampled_from(STATES)


def _condition(operands: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    ordered = operands.filter(lambda v: v is not None)
    return st.one_of(
        operands,  # bare value: equality
        st.fixed_dictionaries({"$eq": operands}),
        st.fixed_dictionaries({"$ne": operands}),
        st.fixed_dictionaries({"$gt": ordered}),
        st.fixed_dictionaries({"$lt": ordered}),
        st.fixed_dictionaries({"$gt": ordered, "$lt": ordered}),
        st.fixed_dictionaries({"$in": st.lists(operands, max_size=3)}),
        st.fixed_dictionaries({"$nin": st.lists(operands, max_size=3)}),
    )


LEAVES = st.one_of(
    st.builds(lambda c: {"config.a": c}, _condition(CONFIG_OPERANDS)),
    st.builds(lambda c: {"config.b": c}, _condition(CONFIG_OPERANDS)),
    st.builds(lambda c: {"state": c}, _condition(STATE_OPERANDS)),
)
FILTERS = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.builds(lambda op, xs: {op: xs}, st.sampled_from(["$and", "$or", "$nor"]),
                  st.lists(inner, max_size=3)),
        st.builds(lambda x, y: {**x, **y}, inner, inner),  # implicit AND (keys may merge)
    ),
    max_leaves=8,
)


def test_compiled_sql_agrees_with_reference_evaluator(store: Store) -> None:
    _functions(store)
    grid = _grid()
    _insert(store, grid, project="grid")

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(FILTERS)
    def check(filters: dict[str, Any]) -> None:
        expected = {r["run_id"] for r in grid if reference(r, filters)}
        assert idset(store, filters) == expected, filters

    check()


# --- the run_value side table ------------------------------------------------------------------


def _json_paths_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compile top-level config/summary fields with JSON functions instead of run_value."""
    from mirror.store import filters

    def json_field(name: str, doc: str, key: str) -> Any:
        keys = [key, "value"] if doc == "config" else [key]
        return filters._Json(name, Run.__table__.c[doc], keys)  # type: ignore[attr-defined]

    monkeypatch.setattr(filters, "_Indexed", json_field)


SIDE_TABLE_FILTERS: list[Any] = [
    {"config.lr": {"$gte": 0.01}}, {"config.lr": None}, {"config.lr": {"$ne": None}},
    {"config.lr": {"$in": [0.1, "high", None]}}, {"config.lr": {"$nin": [1, 0.2]}},
    {"config.batch": {"$gt": 2**62}}, {"config.use_bn": True}, {"config.use_bn": False},
    {"config.opt": {"$exists": True}}, {"config.λ": 2}, {'config.quote"key': {"$lt": 6}},
    {"config.experiment_name": {"$regex": "^[Ff]oo"}}, {"config.experiment_name": "foo"},
    {"summary_metrics.loss": None}, {"summary_metrics.loss": {"$gt": 0.3}},
    {"summary_metrics.loss": {"$lte": "z"}}, {"summary_metrics.big": {"$gt": 1e308}},
    {"summary_metrics.small": {"$lt": -1e308}}, {"summary_metrics.acc": True},
    {"summary_metrics.model1": {"$exists": True}}, {"summary_metrics.é": 1.5},
    {"_runtime": {"$gte": 50}}, {"$nor": [{"summary_metrics.loss": {"$lt": 0.5}}]},
    {"summary_metrics.loss": {"$not": {"$gt": 0.3}}},
]
SIDE_TABLE_ORDERS = ["+summary_metrics.loss", "-summary_metrics.loss", "+config.lr",
                     "-config.lr", "-config.experiment_name", "+summary_metrics.acc",
                     "-summary_metrics.big", "+_runtime"]


def test_side_table_answers_exactly_like_the_json_functions(
    runs: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every filter and order on a top-level key: run_value and JSON1 give the same runs."""
    indexed = [ids(runs, f) for f in SIDE_TABLE_FILTERS]
    ordered = [ids(runs, None, o) for o in SIDE_TABLE_ORDERS]
    _json_paths_only(monkeypatch)
    assert [ids(runs, f) for f in SIDE_TABLE_FILTERS] == indexed
    assert [ids(runs, None, o) for o in SIDE_TABLE_ORDERS] == ordered
    json_sql = str(compile_filters(SIDE_TABLE_FILTERS[0]).compile(dialect=sqlite.dialect()))
    assert "run_value" not in json_sql and "json_extract" in json_sql  # the patch took


def test_side_table_follows_every_write_of_the_store(runs: Store) -> None:
    from mirror.store import runs as store_runs

    with runs.transaction() as session:
        pk = store_runs.run_pk(session, "e", "p", "r09")
        assert pk is not None
        store_runs.update_run(session, pk, summary={"loss": 9.5, "fresh": "yes"})
    assert idset(runs, {"summary_metrics.loss": 9.5}) == {"r09"}
    assert idset(runs, {"summary_metrics.fresh": "yes"}) == {"r09"}
    assert "r09" not in idset(runs, {"summary_metrics.loss": 0.3})
    with runs.transaction() as session:
        row = session.get(Run, pk)
        assert row is not None
        row.config = {"lr": {"value": 7}}
        session.add(row)
    assert idset(runs, {"config.lr": 7}) == {"r09"}
    assert "r09" not in idset(runs, {"config.experiment_name": "foo"})
    assert idset(runs, {"summary_metrics.loss": 9.5}) == {"r09"}  # summary untouched
    with runs.transaction() as session:
        session.delete(session.get(Run, pk))
    with runs.session() as session:
        left = session.execute(text("SELECT count(*) FROM run_value WHERE run_pk = :pk"),
                               {"pk": pk}).scalar()
    assert left == 0
