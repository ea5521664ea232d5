"""``mirror.Api``: paths, ``api.runs`` (filters in SQL, order, paging), runs, sweeps, projects.

The store is filled through the store's own functions with runs shaped like W&B's
(wrapped config with ``_wandb``, summaries with ``_wandb`` and nested values, tags,
groups, sweeps), and every assertion is on values as wandb would return them.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mirror.api import (
    Api,
    CommError,
    Histogram,
    ProjectNotFoundError,
    Run,
    RunNotFoundError,
    SweepNotFoundError,
)
from mirror.api import runs as api_runs
from mirror.api.api import app_url, parse_path
from mirror.api.sweeps import format_order_key
from mirror.errors import ConfigError, FilterError, NotFoundError, StoreError
from mirror.records import ProjectRecord, RunRecord, SweepRecord
from mirror.store import Store, history, open_store, reads
from mirror.store import codec as history_codec
from mirror.store import runs as store_runs
from mirror.store.models import Run as RunRow

E, P = "team", "vision"
WANDB_META = {"cli_version": "0.31.0", "python_version": "3.11.7", "t": {"1": [1, 55]}}


def wrap(config: dict[str, Any]) -> dict[str, Any]:
    """A config as W&B stores it: every value wrapped, plus ``_wandb``."""
    out = {k: {"value": v, "desc": None} for k, v in config.items()}
    out["_wandb"] = {"value": WANDB_META, "desc": None}
    return out


RUNS: list[dict[str, Any]] = [
    dict(run_id="a1", hour=1, state="finished",
         config={"lr": 0.1, "opt": "adam", "arch": {"depth": 18}},
         summary={"acc": 0.71, "loss": 0.9}, tags=["baseline"], group="g1", job_type="train"),
    dict(run_id="b2", hour=2, state="finished",
         config={"lr": 0.01, "opt": "sgd", "arch": {"depth": 50}},
         summary={"acc": 0.83, "loss": 0.5, "nested": {"val": {"acc": 0.8}}},
         tags=["baseline", "resnet"], group="g1", job_type="train", sweep="sw1"),
    dict(run_id="c3", hour=3, state="crashed",
         config={"lr": 0.001, "opt": "adam", "arch": {"depth": 50}},
         summary={"acc": 0.42}, tags=[], group="g2", job_type="eval", sweep="sw1"),
    dict(run_id="d4", hour=4, state="finished",
         config={"lr": 0.03, "opt": "adamw", "arch": {"depth": 101}},
         summary={"acc": 0.91, "loss": 0.2}, tags=["resnet"], group=None, job_type="train",
         sweep="sw1"),
    dict(run_id="e5", hour=5, state="running", config={"lr": "auto", "opt": "adam"},
         summary={"loss": math.nan}, tags=["resnet", "long"], group="g2", job_type="train"),
]


def iso(hour: int) -> str:
    return f"2024-03-01T{hour:02d}:00:00Z"


def fill(store: Store) -> None:
    with store.transaction() as s:
        store_runs.save_project(s, ProjectRecord(entity=E, name=P, created_at=iso(0),
                                                 description="vision experiments"))
        store_runs.save_project(s, ProjectRecord(entity=E, name="empty"))
        for spec in RUNS:
            pk = store_runs.save_run(s, RunRecord(
                entity=E, project=P, run_id=spec["run_id"],
                display_name=f"run-{spec['run_id']}", state=spec["state"],
                config=wrap(spec["config"]),
                summary={**spec["summary"], "_step": 9, "_wandb": {"runtime": 12}},
                tags=spec["tags"], group_name=spec["group"], job_type=spec["job_type"],
                notes=f"notes of {spec['run_id']}", commit="c0ffee" + spec["run_id"],
                created_at=iso(spec["hour"]), heartbeat_at=iso(spec["hour"] + 1),
                username="alice", user_name="Alice", history_line_count=10, last_step=9,
                sweep_name=spec.get("sweep"),
            ))
            history.save_history(s, pk, [{"_step": i, "loss": 1.0 / (i + 1)} for i in range(10)])
        store_runs.save_run(s, RunRecord(entity=E, project=P, run_id="zz", state="finished",
                                         created_at=iso(6), tombstoned=True))
        store_runs.save_sweep(s, SweepRecord(
            entity=E, project=P, sweep_id="sw1", display_name=None, state="FINISHED",
            method="bayes", created_at=iso(2),
            config=yaml.safe_dump({"method": "bayes", "name": "depth-search",
                                   "metric": {"name": "acc", "goal": "maximize"}}),
        ))
        store_runs.save_sweep(s, SweepRecord(entity=E, project=P, sweep_id="sw2", created_at=iso(3),
                                             config="method: grid\n"))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The filled store, built once (migrations take a while); tests get a copy."""
    path = tmp_path_factory.mktemp("template") / "mirror.db"
    with open_store(path) as store:
        fill(store)
    return path


@pytest.fixture
def filled(template: Path, tmp_path: Path) -> Iterator[Store]:
    path = tmp_path / "mirror.db"
    shutil.copyfile(template, path)
    with open_store(path) as store:
        yield store


@pytest.fixture
def api(filled: Store) -> Iterator[Api]:
    with Api(overrides={"store": str(filled.path)}) as a:
        yield a


def ids(runs: Any) -> list[str]:
    return [r.id for r in runs]


def spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Record every call of ``reads.<name>`` (which still runs) as ``(args, kwargs)``."""
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    real = getattr(reads, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(reads, name, wrapper)
    return calls


# --- construction and paths --------------------------------------------------------------


def test_api_does_no_io_until_the_first_read(tmp_path: Path) -> None:
    api = Api(overrides={"store": str(tmp_path / "nowhere" / "mirror.db")})
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(StoreError, match="no store at") as err:
        api.run("e/p/r")
    assert "mirror sync" in str(err.value)
    assert not (tmp_path / "nowhere" / "mirror.db").exists()


def test_store_comes_from_mirror_home(filled: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    assert filled.path is not None
    monkeypatch.setenv("MIRROR_HOME", str(filled.path.parent))
    with Api() as api:
        assert api.run(f"{E}/{P}/a1").name == "run-a1"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("e/p/r1", ("e", "p", "r1")),
        ("e/p/runs/r1", ("e", "p", "r1")),
        ("/e/p/runs/r1/ ", ("e", "p", "r1")),
        ("e/p:r1", ("e", "p", "r1")),
        ("p/r1", ("dflt-e", "p", "r1")),
        ("p:r1", ("dflt-e", "p", "r1")),
        ("r1", ("dflt-e", "dflt-p", "r1")),
        ("e/p/sweeps/sw", ("e", "p", "sw")),
    ],
)
def test_parse_path_accepts_wandbs_spellings(path: str, expected: tuple[str, str, str]) -> None:
    assert parse_path(path, "dflt-e", "dflt-p") == expected


@pytest.mark.parametrize(("path", "message"), [("p/r1", "missing entity"), ("r1", "missing")])
def test_parse_path_names_the_missing_part(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_path(path, None, None)


def test_defaults_from_environment_and_overrides(
    filled: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_ENTITY", E)
    monkeypatch.setenv("WANDB_PROJECT", P)
    with Api(overrides={"store": str(filled.path)}) as api:
        assert api.run("b2").config["opt"] == "sgd"
        assert ids(api.runs()) == ["a1", "b2", "c3", "d4", "e5"]
        assert api.settings["entity"] == E
    with Api(overrides={"store": str(filled.path), "entity": "other"}) as api:
        assert api.default_entity == "other"
        with pytest.raises(RunNotFoundError):
            api.run(f"{P}/b2")


def test_default_entity_is_the_stores_only_entity(api: Api) -> None:
    assert api.default_entity == E
    assert api.run(f"{P}/a1").id == "a1"
    assert ids(api.runs(P))[:2] == ["a1", "b2"]


def test_no_entity_anywhere_is_a_clear_error(store: Store) -> None:
    with Api(overrides={"store": str(store.path)}) as api, pytest.raises(ConfigError):
        api.runs("vision")


def test_app_url_follows_wandbs_rules() -> None:
    assert app_url("https://api.wandb.ai") == "https://wandb.ai"
    assert app_url("https://api.corp.example") == "https://app.corp.example"
    assert app_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"


# --- api.runs ----------------------------------------------------------------------------


def test_runs_default_order_is_oldest_first_and_skips_deleted(api: Api) -> None:
    runs = api.runs(f"{E}/{P}")
    assert len(runs) == 5
    assert ids(runs) == ["a1", "b2", "c3", "d4", "e5"]
    assert repr(runs) == f"<Runs {E}/{P}>"


def test_runs_are_lazy_pages(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_runs, "READ_AHEAD", 1)  # one read per page
    calls = spy(monkeypatch, "runs_by_pk")
    runs = api.runs(f"{E}/{P}", per_page=2)
    assert len(runs) == 5 and calls == []  # len() loads no run
    assert runs[0].id == "a1" and len(calls) == 1 and len(runs.objects) == 2
    assert runs[3].id == "d4" and len(calls) == 2
    assert ids(runs[1:4]) == ["b2", "c3", "d4"]
    assert runs[-1].id == "e5" and ids(runs[-2:]) == ["d4", "e5"]
    assert [len(args[1]) for args, _ in calls] == [2, 2, 1]
    assert ids(runs) == ids(runs)  # cached: iterating again reads nothing
    assert len(calls) == 3


def test_runs_are_read_ahead_and_handed_out_a_page_at_a_time(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_runs, "READ_AHEAD", 3)
    calls = spy(monkeypatch, "runs_by_pk")
    runs = api.runs(f"{E}/{P}", per_page=2)
    assert runs[0].id == "a1" and len(runs.objects) == 2
    assert runs[2].id == "c3" and len(runs.objects) == 4  # b2..c3 from the first read
    assert [len(args[1]) for args, _ in calls] == [3, 2]
    assert ids(runs) == ["a1", "b2", "c3", "d4", "e5"] and len(calls) == 2


def test_runs_deleted_after_the_snapshot_are_skipped(
    api: Api, filled: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_runs, "READ_AHEAD", 2)
    runs = api.runs(f"{E}/{P}", per_page=1)
    assert runs[0].id == "a1" and len(runs) == 5
    with filled.transaction() as s:
        for run_id in ("c3", "d4"):
            pk = store_runs.run_pk(s, E, P, run_id)
            s.delete(s.get(RunRow, pk))
    assert ids(runs) == ["a1", "b2", "e5"] and len(runs) == 3
    assert runs[2].id == "e5"


def test_nested_iteration_and_next(api: Api) -> None:
    runs = api.runs(f"{E}/{P}", per_page=2)
    pairs = [(a.id, b.id) for a in runs for b in runs]
    assert len(pairs) == 25
    assert next(runs).id == "a1" and next(runs).id == "b2"
    with pytest.raises(IndexError):
        runs[5]


@pytest.mark.parametrize(
    ("filters", "order", "expected"),
    [
        ({"config.lr": {"$gt": 0.005}}, "+created_at", ["a1", "b2", "d4"]),
        ({"config.lr.value": {"$lte": 0.01}}, "+config.lr", ["c3", "b2"]),
        ({"$or": [{"config.opt": "adam"}, {"config.opt": "sgd"}]}, "+created_at",
         ["a1", "b2", "c3", "e5"]),
        ({"config.arch.depth": 50}, "-created_at", ["c3", "b2"]),
        ({"tags": "resnet"}, "+created_at", ["b2", "d4", "e5"]),
        ({"state": {"$in": ["crashed", "running"]}}, "-heartbeat_at", ["e5", "c3"]),
        ({"summary_metrics.acc": {"$gte": 0.8}}, "-summary_metrics.acc", ["d4", "b2"]),
        ({"summary_metrics.nested.val.acc": 0.8}, "+created_at", ["b2"]),
        ({"sweep": "sw1"}, "+created_at", ["b2", "c3", "d4"]),
        ({"displayName": {"$regex": "^run-[ab]"}}, "+created_at", ["a1", "b2"]),
        ({"$and": [{"created_at": {"$gt": iso(1), "$lt": iso(4)}}]}, "+created_at",
         ["b2", "c3"]),
        ({"group": "g2", "jobType": "train"}, "+created_at", ["e5"]),
        ({}, "-summary_metrics.loss", ["a1", "b2", "d4", "e5", "c3"]),  # no value: last
    ],
)
def test_filters_and_order(api: Api, filters: dict[str, Any], order: str,
                           expected: list[str]) -> None:
    runs = api.runs(f"{E}/{P}", filters, order=order)
    assert ids(runs) == expected
    assert len(runs) == len(expected)


def test_filters_run_in_sql_and_load_only_matches(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy(monkeypatch, "runs_by_pk")
    assert ids(api.runs(f"{E}/{P}", {"config.opt": "adamw"})) == ["d4"]
    assert [len(args[1]) for args, _ in calls] == [1]  # only the match was loaded


def test_bad_filter_fails_at_the_call_naming_it(api: Api) -> None:
    with pytest.raises(FilterError, match=r"\$near"):
        api.runs(f"{E}/{P}", {"config.lr": {"$near": 1}})
    with pytest.raises(FilterError, match="order"):
        api.runs(f"{E}/{P}", order="+tags")


def test_unknown_project_raises_on_iteration_like_wandb(api: Api) -> None:
    runs = api.runs(f"{E}/nope")
    with pytest.raises(ProjectNotFoundError, match="Could not find project nope") as err:
        list(runs)
    assert isinstance(err.value, ValueError)
    assert list(api.runs(f"{E}/empty")) == [] and len(api.runs(f"{E}/empty")) == 0


# --- one run -------------------------------------------------------------------------


def test_run_attributes_are_wandbs(api: Api) -> None:
    run = api.run(f"{E}/{P}/b2")
    assert isinstance(run, Run)
    assert (run.id, run.name, run.display_name, run.state) == ("b2", "run-b2", "run-b2",
                                                              "finished")
    assert run.config == {"lr": 0.01, "opt": "sgd", "arch": {"depth": 50}}
    assert run.rawconfig == {"_wandb": WANDB_META, **run.config}
    assert (run.tags, run.notes, run.group, run.job_type) == (
        ["baseline", "resnet"], "notes of b2", "g1", "train")
    assert run.commit == "c0ffeeb2"
    assert (run.created_at, run.heartbeat_at) == (iso(2), iso(3))
    assert run.path == [E, P, "b2"] and (run.entity, run.project) == (E, P)
    assert run.url == f"https://wandb.ai/{E}/{P}/runs/b2"
    assert run.sweep_name == "sw1" and run.sweep is not None and run.sweep.id == "sw1"
    assert run.lastHistoryStep == 9
    assert run.user.username == "alice" and run.username == E
    assert run.storage_id  # W&B's formula when upstream's is unknown
    # wandb's Attrs: GraphQL fields by either spelling
    assert run.history_line_count == 10 and run.historyLineCount == 10
    assert run.jobType == "train" and run.sweepName == "sw1"
    assert repr(run) == f"<Run {E}/{P}/b2 (finished)>"
    with pytest.raises(AttributeError):
        run.no_such_field  # noqa: B018


def test_summary_is_dict_like(api: Api) -> None:
    summary = api.run(f"{E}/{P}/b2").summary
    assert summary["acc"] == 0.83 and summary.get("missing", 7) == 7
    assert "loss" in summary and "missing" not in summary
    assert summary._json_dict == {"acc": 0.83, "loss": 0.5, "nested": {"val": {"acc": 0.8}},
                                  "_step": 9, "_wandb": {"runtime": 12}}
    assert summary["nested"]["val"]["acc"] == 0.8
    assert summary.nested.val.acc == 0.8
    assert dict(summary.items())["_step"] == 9 and set(summary.keys()) == set(summary)
    nan_summary = api.run(f"{E}/{P}/e5").summary
    assert math.isnan(nan_summary["loss"])


def test_missing_run_is_a_commerror_like_wandbs(api: Api) -> None:
    with pytest.raises(RunNotFoundError) as err:
        api.run(f"{E}/{P}/zz")  # deleted upstream (tombstoned)
    assert str(err.value).startswith(f"Could not find run <Run {E}/{P}/zz (not found)>")
    assert isinstance(err.value, CommError) and isinstance(err.value, ValueError)
    assert isinstance(err.value, NotFoundError) and not err.value.transient
    assert err.value.exc is None


def test_runs_are_cached_until_flush(api: Api, filled: Store) -> None:
    run = api.run(f"{E}/{P}/a1")
    assert api.run(f"{E}/{P}/a1") is run
    with filled.transaction() as s:
        pk = store_runs.run_pk(s, E, P, "a1")
        assert pk is not None
        store_runs.update_run(s, pk, state="crashed")
    assert api.run(f"{E}/{P}/a1").state == "finished"
    api.flush()
    assert api.run(f"{E}/{P}/a1").state == "crashed"
    assert run.load(force=True)["state"] == "crashed" and run.state == "crashed"


def test_edits_show_locally_at_once(api: Api) -> None:
    """Read-your-writes: an edit is visible to a fresh read before any push."""
    run = api.run(f"{E}/{P}/a1")
    run.summary["acc"] = 1.0
    run.summary.update()
    run.config["lr"] = 0.5
    run.update()
    api.flush()
    again = api.run(f"{E}/{P}/a1")
    assert again.summary["acc"] == 1.0 and again.config["lr"] == 0.5


def test_json_config_rewraps_like_wandb(api: Api) -> None:
    import json

    doc = json.loads(api.run(f"{E}/{P}/a1").json_config)
    assert doc["lr"] == {"value": 0.1, "desc": None}
    assert doc["_wandb"] == {"value": WANDB_META, "desc": None}


# --- sweeps and projects ----------------------------------------------------------------


def test_sweep_runs_and_best_run(api: Api) -> None:
    sweep = api.sweep(f"{E}/{P}/sw1")
    assert ids(sweep.runs) == ["b2", "c3", "d4"]
    assert sweep.order == "-summary_metrics.acc"
    best = sweep.best_run()
    assert best is not None and best.id == "d4"  # maximize acc
    low = sweep.best_run(order="+acc")
    assert low is not None and low.id == "c3"
    assert sweep.name == "depth-search" and sweep.state == "FINISHED"
    assert sweep.config["metric"] == {"name": "acc", "goal": "maximize"}
    assert sweep.path == [E, P, "sw1"] and sweep.url.endswith(f"/{E}/{P}/sweeps/sw1")
    assert repr(sweep) == f"<Sweep {E}/{P}/sw1 (FINISHED)>"


def test_sweep_without_metric_and_without_runs(api: Api) -> None:
    sweep = api.sweep(f"{E}/{P}/sw2")
    assert sweep.order is None and sweep.best_run() is None and list(sweep.runs) == []
    assert sweep.name == "sw2"


def test_missing_sweep(api: Api) -> None:
    with pytest.raises(SweepNotFoundError, match="Could not find sweep") as err:
        api.sweep(f"{E}/{P}/nope")
    assert isinstance(err.value, CommError)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("loss", "-summary_metrics.loss"),
        ("+loss", "+summary_metrics.loss"),
        ("-val.loss", "-summary_metrics.val.loss"),
        ("+config.lr", "+config.lr"),
        ("-summary_metrics.acc", "-summary_metrics.acc"),
        ("+createdAt", None),
    ],
)
def test_format_order_key_matches_wandb(key: str, expected: str | None) -> None:
    assert format_order_key(key) == expected


def test_projects(api: Api) -> None:
    projects = api.projects(E)
    assert [p.name for p in projects] == ["empty", P] and len(projects) == 2
    project = api.project(P)
    assert project.entity == E and project.path == [E, P]
    assert project.description == "vision experiments" and project.created_at == iso(0)
    assert [s.id for s in project.sweeps()] == ["sw1", "sw2"]
    assert project.url == f"https://wandb.ai/{E}/{P}/workspace"
    found = api.from_path(f"{E}/{P}/runs/a1")
    assert isinstance(found, Run) and found.id == "a1"


# --- bulk history -----------------------------------------------------------------------


def test_runs_histories(api: Api) -> None:
    runs = api.runs(f"{E}/{P}", {"tags": "resnet"})
    rows = runs.histories(samples=3, keys=["loss"])
    assert len(rows) == 9
    assert rows[0] == {"_step": 0, "loss": 1.0, "run_id": "b2"}
    assert [r["_step"] for r in rows[:3]] == [0, 5, 9]
    frame = runs.histories(samples=3, keys=["loss"], format="pandas")
    assert list(frame.columns) == ["_step", "loss", "run_id"]
    assert frame["run_id"].tolist() == ["b2"] * 3 + ["d4"] * 3 + ["e5"] * 3
    with pytest.raises(ValueError, match="Invalid format"):
        runs.histories(format="csv")  # type: ignore[arg-type]


# --- Histogram ----------------------------------------------------------------------------


def test_histogram_matches_numpy_and_wandbs_json() -> None:
    data = np.arange(100.0)
    hist = Histogram(data, num_bins=4)
    counts, edges = np.histogram(data, bins=4)
    assert hist.histogram == counts.tolist() and hist.bins == edges.tolist()
    assert hist.to_json() == {"_type": "histogram", "values": [25, 25, 25, 25],
                              "bins": [0.0, 24.75, 49.5, 74.25, 99.0]}
    assert Histogram(np_histogram=(counts, edges)) == hist
    assert len(Histogram([1, 2, 3]).histogram) == 64
    with pytest.raises(ValueError, match="len\\(bins\\)"):
        Histogram(np_histogram=([1, 2], [0, 1]))
    with pytest.raises(ValueError, match="maximum length"):
        Histogram(data, num_bins=513)


def test_histogram_in_a_summary_is_stored_as_json(api: Api) -> None:
    run = api.run(f"{E}/{P}/a1")
    run.summary["h"] = Histogram(np_histogram=([1], [0.0, 1.0]))
    assert run.summary._json_dict["h"] == {"_type": "histogram", "values": [1],
                                           "bins": [0.0, 1.0]}


def test_history_page_decodes_every_kind_of_stored_text() -> None:
    """The C-speed page decoder hands exact (tab-marked) and foreign NaN texts to codec."""
    exact = history_codec.dumps({"a": math.inf, "n": None, "big": 2**70})
    assert exact.startswith("\t")
    plain = reads.HistoryPage([(0, '{"a":1}'), (1, '{"a":NaN}'), (2, '{"b":2.5}')])
    rows = list(plain.rows())
    assert rows[0] == {"a": 1} and math.isnan(rows[1]["a"]) and rows[2] == {"b": 2.5}
    mixed = reads.HistoryPage([(0, '{"a":1}'), (1, exact)])
    assert list(mixed.rows()) == [{"a": 1}, {"a": math.inf, "n": None, "big": 2**70}]
    assert list(reads.HistoryPage([]).rows()) == []
