"""``run.history()``, ``run.scan_history()`` and system-metric events from the store.

History semantics are wandb's (wandb-protocol.md 4.5-4.6) with ``mirror serve``'s
sampling: at most ``samples`` rows, evenly spaced over the row index, first and last
kept; with ``keys`` only rows holding every key (and ``x_axis``), reduced to them.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mirror.api import Api
from mirror.records import RunRecord
from mirror.sampling import sample_evenly
from mirror.store import Store, history, open_store, reads
from mirror.store import runs as store_runs

E, P = "team", "nlp"
N = 1000


def dense_rows() -> list[dict[str, Any]]:
    rows = []
    for step in range(N):
        row: dict[str, Any] = {"loss": round(2.0 / (step + 1), 6), "acc": step / N}
        if step % 10 == 0:
            row["val_loss"] = round(3.0 / (step + 1), 6)
            row["val/acc"] = step / N
        if step % 100 == 0:
            row["epoch"] = step // 100
            row["精度"] = step / N
        if step == 500:
            row["loss"] = math.nan  # a diverged step: NaN is a value like any other
            row["maybe"] = None  # logged as null: the key is present
        row.update({"_step": step, "_runtime": step * 0.5, "_timestamp": 1.7e9 + step * 0.5})
        rows.append(row)
    return rows


def type_counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for row in rows:
        for key in row:
            counts[key] = counts.get(key, 0) + 1
    return {k: {"typeCounts": [{"type": "number", "count": n}]} for k, n in counts.items()}


def add_run(store: Store, run_id: str, rows: list[dict[str, Any]], *, metadata: bool,
            events: int = 0, line_count: int | None = None) -> None:
    last = rows[-1]["_step"] if rows else None
    rec = RunRecord(entity=E, project=P, run_id=run_id, state="finished",
                    created_at=f"2024-05-01T00:00:{len(run_id):02d}Z")
    if metadata:
        rec.history_line_count = len(rows) if line_count is None else line_count
        rec.last_step = last
        rec.history_keys = {"lastStep": last, "keys": type_counts(rows)}
    with store.transaction() as s:
        pk = store_runs.save_run(s, rec)
        history.save_history(s, pk, rows)
        history.save_events(s, pk, [
            {"system.cpu": float(i), "system.gpu.0.gpu": 50.0 + i, "_runtime": i * 15.0,
             "_timestamp": 1.7e9 + i * 15, "_wandb": True} for i in range(events)
        ])


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "mirror.db"
    rows = dense_rows()
    with open_store(path) as store:
        add_run(store, "dense", rows, metadata=True, events=30)
        add_run(store, "nometa", rows, metadata=False)
        gappy = [r for r in rows[:100] if r["_step"] != 50]
        add_run(store, "stale", gappy, metadata=True, line_count=100)
        add_run(store, "sparse", [{"_step": s, "x": s} for s in range(0, 50_000, 1000)],
                metadata=False)
        add_run(store, "empty", [], metadata=False)
    return path


@pytest.fixture
def api(template: Path, tmp_path: Path) -> Iterator[Api]:
    path = tmp_path / "mirror.db"
    shutil.copyfile(template, path)
    with Api(overrides={"store": str(path)}) as a:
        yield a


def spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Record every call of ``reads.<name>`` (which still runs) as ``(args, kwargs)``."""
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    real = getattr(reads, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(reads, name, wrapper)
    return calls


def run_of(api: Api, run_id: str) -> Any:
    return api.run(f"{E}/{P}/{run_id}")


def same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN (rows are compared value by value)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# --- history() -------------------------------------------------------------------------


def test_default_history_samples_evenly_keeping_first_and_last(api: Api) -> None:
    run = run_of(api, "dense")
    frame = run.history()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 500
    expected = [dense_rows()[i] for i in sample_evenly(N, 500)]
    assert frame["_step"].tolist() == [r["_step"] for r in expected]
    assert frame["_step"].iloc[0] == 0 and frame["_step"].iloc[-1] == N - 1
    rows = run.history(pandas=False)
    assert same(rows, expected)
    assert same(run.history(pandas=False), rows)  # deterministic
    assert list(frame.columns)[:3] == ["loss", "acc", "val_loss"]


def test_history_with_more_samples_than_rows_returns_every_row(api: Api) -> None:
    assert len(run_of(api, "dense").history(samples=5000, pandas=False)) == N
    assert run_of(api, "dense").history(samples=0, pandas=False) == []


def test_keys_keep_rows_holding_them_reduced_to_them(api: Api) -> None:
    run = run_of(api, "dense")
    frame = run.history(keys=["val_loss"])
    assert list(frame.columns) == ["_step", "val_loss"]
    assert frame["_step"].tolist() == list(range(0, N, 10))
    assert frame["val_loss"].iloc[1] == round(3.0 / 11, 6)
    seven = run.history(keys=["val_loss"], samples=7, pandas=False)
    assert [r["_step"] for r in seven] == [[*range(0, N, 10)][i] for i in sample_evenly(100, 7)]
    assert seven[0]["_step"] == 0 and seven[-1]["_step"] == 990


def test_x_axis_must_be_held_too(api: Api) -> None:
    rows = run_of(api, "dense").history(keys=["val_loss", "loss"], x_axis="epoch", pandas=False)
    assert [r["epoch"] for r in rows] == list(range(10))
    assert list(rows[0]) == ["epoch", "val_loss", "loss"]


def test_nan_null_unicode_and_slashed_keys(api: Api) -> None:
    run = run_of(api, "dense")
    losses = run.history(keys=["loss"], samples=N, pandas=False)
    assert len(losses) == N and math.isnan(losses[500]["loss"])
    assert run.history(keys=["maybe"], pandas=False) == [{"_step": 500, "maybe": None}]
    assert [r["精度"] for r in run.history(keys=["精度"], pandas=False)][:2] == [0.0, 0.1]
    assert len(run.history(keys=["val/acc"], pandas=False)) == 100
    assert run.history(keys=["nope"], pandas=False) == []


@pytest.mark.parametrize(
    ("samples", "keys"),
    [(500, None), (7, None), (1, None), (500, ["val_loss"]), (13, ["loss", "acc"]),
     (3, ["epoch"]), (N, ["loss"])],
)
def test_metadata_fast_path_equals_the_exact_read(api: Api, samples: int,
                                                 keys: list[str] | None) -> None:
    fast = run_of(api, "dense").history(samples=samples, keys=keys, pandas=False)
    exact = run_of(api, "nometa").history(samples=samples, keys=keys, pandas=False)
    assert same(fast, exact)


def test_fast_path_reads_no_step_list(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    listed = spy(monkeypatch, "history_steps")
    run_of(api, "dense").history(keys=["acc"], samples=50)
    assert listed == []  # answered from metadata + ~50 lookups
    run_of(api, "nometa").history(keys=["acc"], samples=50)
    assert len(listed) == 1


def test_stale_metadata_falls_back_to_the_exact_read(api: Api) -> None:
    # Metadata says 100 contiguous rows, but step 50 is missing from the store.
    steps = [s for s in range(100) if s != 50]
    for samples in (3, 500):
        rows = run_of(api, "stale").history(samples=samples, pandas=False)
        assert [r["_step"] for r in rows] == [steps[i] for i in sample_evenly(99, samples)]


def test_events_stream(api: Api) -> None:
    run = run_of(api, "dense")
    events = run.history(stream="events")
    assert len(events) == 30 and events["system.cpu"].tolist() == [float(i) for i in range(30)]
    five = run.history(stream="system", samples=5, pandas=False)
    assert [e["system.cpu"] for e in five] == [float(i) for i in sample_evenly(30, 5)]
    assert run_of(api, "nometa").history(stream="events", pandas=False) == []
    with pytest.raises(ValueError, match="stream must be default"):
        run.history(keys=["loss"], stream="events")


@pytest.mark.parametrize("keys", ["loss", [1], ("loss", 2)])
def test_keys_must_be_a_list_of_strings(api: Api, keys: Any) -> None:
    with pytest.raises(ValueError, match="keys"):
        run_of(api, "dense").history(keys=keys)
    with pytest.raises(ValueError, match="keys"):
        run_of(api, "dense").scan_history(keys=keys)


# --- scan_history() ----------------------------------------------------------------------


def test_scan_history_streams_every_row_in_order(api: Api) -> None:
    run = run_of(api, "dense")
    rows = list(run.scan_history())
    assert same(rows, dense_rows())
    assert same(list(run.scan_history(page_size=7)), rows)
    losses = [row["loss"] for row in run.scan_history()]
    assert losses[1] == 1.0 and len(losses) == N


def test_scan_history_pages_are_bounded(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy(monkeypatch, "history_page")
    assert sum(1 for _ in run_of(api, "dense").scan_history(page_size=100)) == N
    # Ten full pages; the last one ends at lastHistoryStep, so no extra empty read.
    assert [kwargs["limit"] for _, kwargs in calls] == [100] * 10


def test_scan_history_window_and_keys(api: Api) -> None:
    run = run_of(api, "dense")
    window = list(run.scan_history(min_step=10, max_step=20))
    assert [r["_step"] for r in window] == list(range(10, 20))
    assert len(list(run.scan_history(min_step=990, max_step=10**9))) == 10  # capped
    vals = list(run.scan_history(keys=["val_loss"], page_size=30))
    assert [r["_step"] for r in vals] == list(range(0, N, 10))
    assert list(vals[0]) == ["_step", "val_loss"]
    both = list(run.scan_history(keys=["epoch", "精度"]))
    assert both[3] == {"_step": 300, "epoch": 3, "精度": 0.3}


def test_scan_history_restarts_and_supports_next(api: Api) -> None:
    scan = run_of(api, "dense").scan_history(page_size=3, max_step=5)
    assert scan.max_step == 4
    assert [r["_step"] for r in scan] == [0, 1, 2, 3, 4]
    assert [r["_step"] for r in scan] == [0, 1, 2, 3, 4]
    assert next(scan)["_step"] == 0 and next(scan)["_step"] == 1


def test_scan_history_crosses_gaps_without_empty_pages(api: Api,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy(monkeypatch, "history_page")
    rows = list(run_of(api, "sparse").scan_history(page_size=10))
    assert [r["_step"] for r in rows] == list(range(0, 50_000, 1000))
    assert len(calls) == 5  # by rows, not by step ranges of 10 (which would be 5,000 reads)


def test_run_without_history(api: Api) -> None:
    run = run_of(api, "empty")
    assert run.lastHistoryStep == -1
    assert list(run.scan_history()) == []
    assert run.history().empty and run.history(keys=["loss"], pandas=False) == []


def test_history_keys(api: Api) -> None:
    dense = run_of(api, "dense").history_keys
    assert dense["lastStep"] == N - 1 and dense["keys"]["val_loss"]["typeCounts"][0]["count"] == 100
    counted = run_of(api, "nometa").history_keys  # no upstream document: counted from rows
    assert counted["lastStep"] == N - 1
    assert counted["keys"]["epoch"] == {"typeCounts": [{"type": "number", "count": 10}]}
    assert counted["keys"]["maybe"] == {"typeCounts": [{"type": "nil", "count": 1}]}
    assert run_of(api, "nometa").lastHistoryStep == N - 1
