"""Every example of W&B's import/export guide, run against the mirror with the network off.

Source: ``../shared/reference/wandb-import-export-guide.md`` ("データのエクスポート" and
"Public API の例"). Each test is the guide's code with ONLY the import line changed
(``import wandb`` -> ``import mirror.api as wandb``) and the ``<entity>/<project>/<run_id>``
placeholders filled in; the assertions check the values the code produced. The store is
found the way a user's would be: ``MIRROR_HOME`` in the environment.

Examples that edit a run (summary, config, files) go through the outbox: each shows in the
local store at once (read-your-writes); ``tests/test_outbox_guide.py`` pushes the same
edits to a server and has the official client check the result.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import mirror.api as wandb  # the only change to the guide's code: was `import wandb`
from mirror.records import FileRecord, ProjectRecord, RunRecord, SweepRecord
from mirror.store import Store, blobs, history, open_store
from mirror.store import runs as store_runs

ENTITY, PROJECT = "alice", "cifar"
WANDB_META = {"cli_version": "0.31.0", "python_version": "3.11.7", "t": {"1": [1, 5, 53]}}
COMMIT = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432"
METADATA = {"program": "train.py", "args": ["--epochs", "5", "--lr", "0.01"],
            "host": "gpu-1", "python": "CPython 3.11.7", "git": {"commit": COMMIT}}
GUIDE_HISTORY = [  # the table under "run.history()" in the guide
    (0, 500, 0.244), (1, 45, 0.521), (2, 240, 0.785), (3, 31, 0.305), (4, 525, 0.041),
]


def wrap(config: dict[str, Any]) -> dict[str, Any]:
    return {**{k: {"value": v, "desc": None} for k, v in config.items()},
            "_wandb": {"value": WANDB_META, "desc": None}}


def add_run(store: Store, s: Any, run_id: str, *, name: str, hour: int, config: dict[str, Any],
            summary: dict[str, Any], rows: Sequence[dict[str, Any]] = (),
            events: Sequence[dict[str, Any]] = (), files: dict[str, bytes] | None = None,
            sweep: str | None = None, state: str = "finished") -> None:
    created = f"2024-02-{1 + hour // 24:02d}T{hour % 24:02d}:00:00Z"
    pk = store_runs.save_run(s, RunRecord(
        entity=ENTITY, project=PROJECT, run_id=run_id, display_name=name, state=state,
        config=wrap(config), summary=summary, tags=["guide"], created_at=created,
        heartbeat_at=created, commit=COMMIT,
        history_line_count=len(rows), last_step=rows[-1]["_step"] if rows else None,
        sweep_name=sweep, username=ENTITY,
    ))
    history.save_history(s, pk, rows)
    history.save_events(s, pk, events)
    for fname, data in (files or {}).items():
        info = blobs.put_bytes(store, data, session=s)
        store_runs.save_file(s, pk, FileRecord(name=fname, size_bytes=info.size,
                                               md5=info.md5_b64, blob_hash=info.hash))


def fill(store: Store) -> None:
    rng = random.Random(5)
    metadata = json.dumps(METADATA).encode()
    with store.transaction() as s:
        store_runs.save_project(s, ProjectRecord(entity=ENTITY, name=PROJECT))
        # The guide's own run: n_epochs=5, logging val and loss.
        add_run(store, s, "guide001", name="guide-run", hour=0, config={"n_epochs": 5},
                summary={"_runtime": 4, "_step": 4, "_timestamp": 1644345412,
                         "_wandb": {"runtime": 3}, "loss": 0.041, "val": 525},
                rows=[{"val": v, "loss": loss, "_step": step, "_runtime": 4,
                       "_timestamp": 1644345412} for step, v, loss in GUIDE_HISTORY],
                files={"wandb-metadata.json": metadata, "model-best.h5": b"HDF\x89weights",
                       "output.log": b"epoch 0\n", "media/plot.png": b"\x89PNG..",
                       "media/other.png": b"\x89PNG.."})
        # A long run: accuracy at every step, val_acc every 10, system metrics.
        add_run(store, s, "long0001", name="long-run", hour=1,
                config={"experiment_name": "foo", "lr": 0.01},
                summary={"accuracy": 0.93, "val_acc": 0.9, "loss": 0.1},
                rows=[{"accuracy": round(0.5 + i / 2400, 6), "loss": round(1 / (i + 1), 6),
                       **({"val_acc": round(0.45 + i / 2500, 6)} if i % 10 == 0 else {}),
                       "_step": i, "_runtime": i * 0.5, "_timestamp": 1.7e9 + i * 0.5}
                      for i in range(1200)],
                events=[{"system.cpu": 10.0 + i, "system.memory": 40.0, "_runtime": i * 15.0,
                         "_timestamp": 1.7e9 + i * 15, "_wandb": True} for i in range(40)],
                files={"wandb-metadata.json": metadata})
        # The two runs the "compare two runs" example prints.
        shared = {"epochs": 10, "dataset": "cifar10"}
        add_run(store, s, "cmp00001", name="c_10_sgd_0.025_0.01_long_switch", hour=2,
                config={**shared, "batch_size": 32, "n_conv_layers": 5,
                        "optimizer": "rmsprop"}, summary={"val_acc": 0.7})
        add_run(store, s, "cmp00002", name="base_adam_4_conv_2fc", hour=3,
                config={**shared, "batch_size": 16, "n_conv_layers": 4, "optimizer": "adam"},
                summary={"val_acc": 0.6})
        # A sweep whose runs saved model.h5; its metric is val_acc, maximized.
        for i, val_acc in enumerate([0.81, 0.88, 0.84]):
            add_run(store, s, f"sweep00{i}", name=f"sweep-run-{i}", hour=4 + i,
                    config={"experiment_name": "bar" if i == 0 else "baz", "lr": 0.1 / (i + 1)},
                    summary={"val_acc": val_acc, "loss": round(rng.random(), 3)},
                    files={"model.h5": f"weights of sweep run {i}".encode()}, sweep="swp123")
        store_runs.save_sweep(s, SweepRecord(
            entity=ENTITY, project=PROJECT, sweep_id="swp123", state="FINISHED",
            config="method: bayes\nmetric:\n  name: val_acc\n  goal: maximize\n",
            created_at="2024-02-01T04:00:00Z",
        ))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("mirror-home")
    with open_store(home / "mirror.db") as store:
        fill(store)
    return home


@pytest.fixture(autouse=True)
def offline(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the store in MIRROR_HOME, the cwd in a scratch folder, no network."""
    home = tmp_path / "home"
    shutil.copytree(template, home)
    monkeypatch.setenv("MIRROR_HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network access in an offline guide test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield work


# --- Run データのエクスポート ---------------------------------------------------------------


def test_export_run_data_and_its_attributes() -> None:
    api = wandb.Api()
    run = api.run("alice/cifar/guide001")

    assert run.config == {"n_epochs": 5}
    frame = run.history()
    assert list(frame.columns) == ["val", "loss", "_step", "_runtime", "_timestamp"]
    assert frame[["_step", "val", "loss"]].values.tolist() == [list(r) for r in GUIDE_HISTORY]
    assert set(frame["_runtime"]) == {4} and set(frame["_timestamp"]) == {1644345412}
    assert run.summary._json_dict == {"_runtime": 4, "_step": 4, "_timestamp": 1644345412,
                                      "_wandb": {"runtime": 3}, "loss": 0.041, "val": 525}


def test_api_flush_refreshes_cached_values() -> None:
    api = wandb.Api()
    run = api.run("alice/cifar/guide001")
    with open_store(Path(os.environ["MIRROR_HOME"]) / "mirror.db") as store, \
            store.transaction() as s:
        pk = store_runs.run_pk(s, ENTITY, PROJECT, "guide001")
        assert pk is not None
        store_runs.update_run(s, pk, state="crashed")
    assert api.run("alice/cifar/guide001") is run and run.state == "finished"
    api.flush()
    assert api.run("alice/cifar/guide001").state == "crashed"


def test_sampling_and_scan_history() -> None:
    api = wandb.Api()
    run = api.run("alice/cifar/long0001")
    assert len(run.history()) == 500  # the default samples
    assert len(run.history(samples=50)) == 50
    assert len(list(run.scan_history())) == 1200


def _export_project_csv() -> None:
    # -- the guide's code, verbatim --
    api = wandb.Api()
    entity, project = "alice", "cifar"
    runs = api.runs(entity + "/" + project)

    summary_list, config_list, name_list = [], [], []
    for run in runs:
        summary_list.append(run.summary._json_dict)
        config_list.append({k: v for k, v in run.config.items() if not k.startswith("_")})
        name_list.append(run.name)

    runs_df = pd.DataFrame(
        {"summary": summary_list, "config": config_list, "name": name_list}
    )

    runs_df.to_csv("project.csv")


def _check_project_csv() -> None:
    df = pd.read_csv("project.csv", index_col=0)
    assert df["name"].tolist() == ["guide-run", "long-run", "c_10_sgd_0.025_0.01_long_switch",
                                   "base_adam_4_conv_2fc", "sweep-run-0", "sweep-run-1",
                                   "sweep-run-2"]
    assert df["config"][0] == "{'n_epochs': 5}"
    assert "'_wandb'" not in "".join(df["config"])
    assert df["summary"][1] == "{'accuracy': 0.93, 'val_acc': 0.9, 'loss': 0.1}"


def test_query_multiple_runs_to_dataframe_and_csv() -> None:
    _export_project_csv()
    _check_project_csv()


def test_query_runs_mongodb_style(capsys: pytest.CaptureFixture[str]) -> None:
    api = wandb.Api()
    runs = api.runs(
        "alice/cifar",
        {"$or": [{"config.experiment_name": "foo"}, {"config.experiment_name": "bar"}]},
    )
    print(f"Found {len(runs)} runs")
    assert capsys.readouterr().out == "Found 2 runs\n"
    assert [r.id for r in runs] == ["long0001", "sweep000"]


def test_runs_per_page_and_order() -> None:
    api = wandb.Api()
    runs = api.runs("alice/cifar", per_page=2)
    assert len(runs) == 7 and [r.id for r in runs][:2] == ["guide001", "long0001"]
    newest = api.runs("alice/cifar", order="-created_at")
    assert newest[0].id == "sweep002"
    by_val_acc = api.runs("alice/cifar", order="-summary.val_acc")
    assert [r.summary.get("val_acc") for r in by_val_acc][:5] == [0.9, 0.88, 0.84, 0.81, 0.7]
    assert by_val_acc[-1].id == "guide001"  # no val_acc: last
    by_name = api.runs("alice/cifar", {"config.experiment_name": {"$exists": True}},
                       order="+config.experiment_name")
    assert [r.config["experiment_name"] for r in by_name] == ["bar", "baz", "baz", "foo"]


def test_error_handling_commerror_with_exc() -> None:
    api = wandb.Api()
    with pytest.raises(wandb.CommError) as err:
        api.run("alice/cifar/doesnotexist")
    assert err.value.exc is None
    assert "Could not find run" in str(err.value)


def test_latest_git_commit() -> None:
    api = wandb.Api()
    run = api.run("alice/cifar/guide001")
    assert run.commit == COMMIT


# --- Public API の例 -------------------------------------------------------------------------


def test_read_metrics_from_a_run(capsys: pytest.CaptureFixture[str]) -> None:
    api = wandb.Api()

    run = api.run("alice/cifar/long0001")
    if run.state == "finished":
        for i, row in run.history().iterrows():  # noqa: B007 - the guide's code
            print(row["_timestamp"], row["accuracy"])

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 500
    assert lines[0] == "1700000000.0 0.5" and lines[-1] == "1700000599.5 0.999583"


def test_filter_runs_by_date() -> None:
    api = wandb.Api()
    runs = api.runs(
        "alice/cifar",
        {"$and": [{"created_at": {"$lt": "2024-02-01T04:00:00Z",
                                  "$gt": "2024-02-01T00:00:00Z"}}]},
    )
    assert [r.id for r in runs] == ["long0001", "cmp00001", "cmp00002"]


def test_read_specific_metrics() -> None:
    """The guide's loop reads ``row["_timestamp"]``, but with ``keys`` wandb returns only
    ``x_axis`` and the keys, so the example fails with KeyError under wandb too; the
    mirror reproduces that, and returns the right values."""
    api = wandb.Api()

    run = api.run("alice/cifar/long0001")
    with pytest.raises(KeyError, match="_timestamp"):
        if run.state == "finished":
            for i, row in run.history(keys=["accuracy"]).iterrows():  # noqa: B007
                print(row["_timestamp"], row["accuracy"])

    frame = run.history(keys=["accuracy"])
    assert list(frame.columns) == ["_step", "accuracy"] and len(frame) == 500
    assert frame["accuracy"].iloc[-1] == 0.999583
    sparse = run.history(keys=["val_acc"])
    assert sparse["_step"].tolist() == list(range(0, 1200, 10))


def test_compare_two_runs(capsys: pytest.CaptureFixture[str]) -> None:
    api = wandb.Api()

    run1 = api.run("alice/cifar/cmp00001")
    run2 = api.run("alice/cifar/cmp00002")

    df = pd.DataFrame([run1.config, run2.config]).transpose()

    df.columns = [run1.name, run2.name]
    print(df[df[run1.name] != df[run2.name]])

    assert capsys.readouterr().out.splitlines() == [  # the output the guide shows
        "              c_10_sgd_0.025_0.01_long_switch base_adam_4_conv_2fc",
        "batch_size                                 32                   16",
        "n_conv_layers                               5                    4",
        "optimizer                             rmsprop                 adam",
    ]


def test_update_metrics_after_the_run_finished() -> None:
    numpy_array = np.arange(10.0)
    api = wandb.Api()

    run = api.run("alice/cifar/guide001")
    run.summary["accuracy"] = 0.9
    run.summary["accuracy_histogram"] = wandb.Histogram(numpy_array)
    run.summary.update()

    api.flush()
    summary = api.run("alice/cifar/guide001").summary
    assert summary["accuracy"] == 0.9
    assert summary["accuracy_histogram"]["_type"] == "histogram"


def test_rename_a_metric_of_a_finished_run() -> None:
    api = wandb.Api()

    run = api.run("alice/cifar/guide001")
    run.summary["new_name"] = run.summary["val"]
    del run.summary["val"]
    run.summary.update()

    api.flush()
    summary = api.run("alice/cifar/guide001").summary
    assert summary["new_name"] == 525 and "val" not in summary


def test_update_the_config_of_a_run() -> None:
    updated_value = 7
    api = wandb.Api()

    run = api.run("alice/cifar/guide001")
    run.config["key"] = updated_value
    run.update()

    api.flush()
    assert api.run("alice/cifar/guide001").config == {"n_epochs": 5, "key": 7}


def test_export_system_metrics_to_csv() -> None:
    run = wandb.Api().run("alice/cifar/long0001")

    system_metrics = run.history(stream="events")
    system_metrics.to_csv("sys_metrics.csv")

    df = pd.read_csv("sys_metrics.csv", index_col=0)
    assert len(df) == 40 and df["system.cpu"].tolist() == [10.0 + i for i in range(40)]


def test_unsampled_metric_data() -> None:
    api = wandb.Api()

    run = api.run("alice/cifar/long0001")
    history = run.scan_history()
    losses = [row["loss"] for row in history]

    assert len(losses) == 1200 and losses[:3] == [1.0, 0.5, 0.333333]


def test_paginated_history() -> None:
    cols = ["val_acc", "accuracy"]
    api = wandb.Api()

    run = api.run("alice/cifar/long0001")
    scan = run.scan_history(keys=sorted(cols), page_size=100)

    rows = list(scan)
    assert len(rows) == 120
    assert rows[1] == {"_step": 10, "accuracy": 0.504167, "val_acc": 0.454}


def test_export_all_runs_metrics_to_csv() -> None:
    _export_project_csv()
    _check_project_csv()


def test_run_start_time() -> None:
    api = wandb.Api()

    run = api.run("alice/cifar/guide001")
    start_time = run.created_at

    assert start_time == "2024-02-01T00:00:00Z"


def test_upload_a_file_to_a_finished_run() -> None:
    Path("file_name.extension").write_text("notes")
    api = wandb.Api()

    run = api.run("alice/cifar/guide001")
    run.upload_file("file_name.extension")

    api.flush()
    assert api.run("alice/cifar/guide001").file("file_name.extension").size == 5


def test_download_a_file_from_a_run(offline: Path) -> None:
    api = wandb.Api()

    run = api.run("alice/cifar/guide001")
    run.file("model-best.h5").download()

    assert (offline / "model-best.h5").read_bytes() == b"HDF\x89weights"


def test_download_all_files_of_a_run(offline: Path) -> None:
    api = wandb.Api()

    run = api.run("alice/cifar/guide001")
    for file in run.files():
        file.download()

    written = sorted(str(p.relative_to(offline)) for p in offline.rglob("*") if p.is_file())
    assert written == ["media/other.png", "media/plot.png", "model-best.h5", "output.log",
                       "wandb-metadata.json"]
    assert json.loads((offline / "wandb-metadata.json").read_text()) == METADATA


def test_runs_of_a_sweep() -> None:
    api = wandb.Api()

    sweep = api.sweep("alice/cifar/swp123")
    sweep_runs = sweep.runs

    assert [r.id for r in sweep_runs] == ["sweep000", "sweep001", "sweep002"]


def test_best_run_of_a_sweep() -> None:
    api = wandb.Api()

    sweep = api.sweep("alice/cifar/swp123")
    best_run = sweep.best_run()

    assert best_run is not None and best_run.id == "sweep001"  # val_acc 0.88, maximized


def test_best_model_file_of_a_sweep(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api = wandb.Api()

    sweep = api.sweep("alice/cifar/swp123")
    runs = sorted(sweep.runs, key=lambda run: run.summary.get("val_acc", 0), reverse=True)
    val_acc = runs[0].summary.get("val_acc", 0)
    print(f"Best run {runs[0].name} with {val_acc}% val accuracy")

    runs[0].file("model.h5").download(replace=True)
    print("Best model saved to model-best.h5")

    assert capsys.readouterr().out.splitlines() == [
        "Best run sweep-run-1 with 0.88% val accuracy", "Best model saved to model-best.h5"]
    assert (offline / "model.h5").read_bytes() == b"weights of sweep run 1"


def test_delete_files_with_an_extension() -> None:
    api = wandb.Api()

    run = api.run("alice/cifar/guide001")

    extension = ".png"
    files = run.files()
    for file in files:
        if file.name.endswith(extension):
            file.delete()

    api.flush()
    names = [f.name for f in api.run("alice/cifar/guide001").files()]
    assert names == ["model-best.h5", "output.log", "wandb-metadata.json"]


def test_download_system_metrics_data() -> None:
    api = wandb.Api()

    run = api.run("alice/cifar/long0001")
    system_metrics = run.history(stream="events")
    system_metrics.to_csv("sys_metrics.csv")

    frame = pd.read_csv("sys_metrics.csv", index_col=0)
    assert list(frame.columns) == ["system.cpu", "system.memory", "_runtime", "_timestamp",
                                   "_wandb"]
    assert frame["_runtime"].iloc[-1] == 585.0


def test_update_summary_metrics() -> None:
    val = 0.5
    api = wandb.Api()
    summary = api.run("alice/cifar/guide001").summary

    summary.update({"key": val})

    api.flush()
    assert api.run("alice/cifar/guide001").summary["key"] == 0.5


def test_command_that_ran_the_run() -> None:
    api = wandb.Api()

    run = api.run("alice/cifar/guide001")

    meta = json.load(run.file("wandb-metadata.json").download())
    program = ["python"] + [meta["program"]] + meta["args"]

    assert program == ["python", "train.py", "--epochs", "5", "--lr", "0.01"]
    assert run.metadata == METADATA


def test_guide_values_are_exact_floats() -> None:
    """The store round-trips values bit for bit (no float drift in what the guide reads)."""
    run = wandb.Api().run("alice/cifar/guide001")
    assert [r["loss"] for r in run.scan_history()] == [loss for _, _, loss in GUIDE_HISTORY]
    assert not any(math.isnan(v) for v in run.summary._json_dict.values()
                   if isinstance(v, float))
