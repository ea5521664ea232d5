"""Acceptance: the official ``wandb`` client (0.31.0) runs the import/export guide against us.

Every example of ``shared/reference/wandb-import-export-guide.md`` (the "export" half; the
MLflow importer half belongs to the importers) is one test here, in the guide's order,
run by the unmodified official client against ``serve_in_thread(store,
authoritative=True)`` over ``seed_demo(store)``. The guide's placeholder names are mapped
onto the demo data (``accuracy``/``val_acc`` -> ``acc``, ``model-best.h5``/``model.h5`` ->
``model.pt``, ``config.experiment_name`` -> ``config.model.arch``). Assertions compare
what the client returns with what the store holds, value by value.

Running the official client offline (wandb 0.31.0), learned while writing this:

* ``wandb.Api`` starts the ``wandb-core`` Go sidecar as a local subprocess on first use
  (about a second, once per process). It needs no network and no login: ``base_url`` and
  ``api_key`` are passed to ``Api()``; the key must be 40+ ``[A-Za-z0-9_]`` characters
  (checked before any request). Its telemetry probe ``POST /sdk/otel/v1/metrics`` may 404.
* ``Api()`` copies the process-wide settings singleton, which reads
  ``WANDB__GRAPHQL_RETRY_MAX`` & co. only once, when wandb is first set up in the process.
  Setting the environment in a test is too late if another test already used wandb, so
  the ``fast_client`` fixture sets ``x_graphql_retry_max`` on the singleton (and restores
  it). Measured: ``x_graphql_retry_max`` is honoured by ``wandb.Api`` requests, but
  ``x_graphql_retry_wait_min/max_seconds`` are not (a 500 is retried after ~2-2.5 s
  whatever they say; a 429 after exactly its ``Retry-After``). That sets the cost of the
  fault test below, so it keeps its request count small.
* The conftest's autouse fixture points ``WANDB_CONFIG_DIR``/``WANDB_CACHE_DIR``/
  ``WANDB_DATA_DIR``/``NETRC`` at temporary folders; ``scan_history``'s parquet cache lives
  under ``WANDB_CACHE_DIR`` (we serve no parquet files, so it stays empty).
* ``file.download()`` writes to ``root/name`` and refuses to overwrite without
  ``replace=True``. The path is handed to the sidecar as given, and the sidecar resolves
  a relative ``root`` (the default ``"."``) against ITS working directory, fixed when it
  started, not the caller's current one: after ``os.chdir`` the file lands elsewhere and
  ``download()`` fails to open it. So the tests pass an absolute ``root`` (``tmp_path``).
  ``upload_file`` is not affected (the client makes the path absolute first).

Mutating tests each use a run of their own (never a sweep member), so read tests stay
valid in any order; the server and its seeded store are shared by the module.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mirror.records import FileRecord, RunRecord
from mirror.store import Store, blobs, history, open_store
from mirror.store import runs as store_runs

wandb = pytest.importorskip("wandb")

try:
    from mirror.server.faults import Fault
    from mirror.server.seed import SeedResult, seed_demo
    from mirror.server.testing import RunningServer, serve_in_thread
except ImportError as exc:  # pragma: no cover - while the server is being written
    pytest.skip(f"mirror.server test support is not there yet: {exc}", allow_module_level=True)

pytestmark = pytest.mark.wandb_client

ENTITY, PROJECT = "mirror", "demo"

# Which demo run each test uses (index into SeedResult.run_ids). Sweep members (10-14)
# and the read-only runs (0 and 5, whose steps start at 100) are never modified.
READ, OFFSET_RUN = 0, 5
SUMMARY_RUN, RENAME_RUN, CONFIG_RUN, UPLOAD_RUN, DELETE_RUN = 1, 2, 3, 6, 8
SUMMARY_DICT_RUN, META_RUN = 16, 17


@dataclass
class Demo:
    server: RunningServer
    store: Store
    seed: SeedResult

    def rid(self, index: int) -> str:
        return self.seed.run_ids[index]

    def path(self, index: int) -> str:
        return f"{ENTITY}/{PROJECT}/{self.rid(index)}"

    def run(self, index: int) -> RunRecord:
        with self.store.session() as s:
            rec = store_runs.get_run(s, ENTITY, PROJECT, self.rid(index))
        assert rec is not None
        return rec

    def runs(self) -> list[RunRecord]:
        """Live runs in creation order (ties by pk), as the store holds them now."""
        with self.store.session() as s:
            recs = store_runs.query_runs(s, ENTITY, PROJECT)
        return sorted(recs, key=lambda r: (r.created_at or "", r.pk or 0))

    def history(self, index: int) -> list[dict[str, Any]]:
        rec = self.run(index)
        assert rec.pk is not None
        with self.store.session() as s:
            return list(history.iter_history(s, rec.pk))

    def events(self, index: int) -> list[dict[str, Any]]:
        rec = self.run(index)
        assert rec.pk is not None
        with self.store.session() as s:
            return list(history.iter_events(s, rec.pk))

    def files(self, index: int) -> dict[str, FileRecord]:
        rec = self.run(index)
        assert rec.pk is not None
        with self.store.session() as s:
            return {f.name: f for f in store_runs.list_files(s, rec.pk)}

    def file_bytes(self, index: int, name: str) -> bytes:
        f = self.files(index)[name]
        assert f.blob_hash is not None
        return blobs.read_blob(self.store, f.blob_hash)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    store = open_store(tmp_path_factory.mktemp("demo") / "mirror.db")
    seed = seed_demo(store, entity=ENTITY, project=PROJECT)
    with serve_in_thread(store, authoritative=True, entity=ENTITY) as server:
        yield Demo(server, store, seed)
    store.close()


@pytest.fixture(autouse=True)
def fast_client() -> Iterator[None]:
    """At most 3 GraphQL attempts, so a real failure fails in seconds (see the docstring)."""
    from wandb.sdk import wandb_setup

    settings = wandb_setup.singleton().settings
    saved = settings.x_graphql_retry_max
    settings.x_graphql_retry_max = 3
    yield
    settings.x_graphql_retry_max = saved


@pytest.fixture
def api(demo: Demo) -> Any:
    return wandb.Api(overrides={"base_url": demo.server.url}, api_key=demo.server.api_key,
                     timeout=30)


# --- comparisons -------------------------------------------------------------------------


def unwrap(config: dict[str, Any] | None) -> dict[str, Any]:
    """What ``run.config`` shows for a stored (wrapped) config."""
    return {k: v["value"] if isinstance(v, dict) and "value" in v else v
            for k, v in (config or {}).items() if k not in ("_wandb", "wandb_version")}


def summ(rec: RunRecord) -> dict[str, Any]:
    return rec.summary or {}


def canon(value: Any) -> str:
    """Comparable text of a JSON value (NaN equals NaN, key order ignored)."""
    return json.dumps(value, sort_keys=True, allow_nan=True)


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def same_number(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


# --- "Export run data" and the attributes table ------------------------------------------


def test_export_run_data_attributes(demo: Demo, api: Any) -> None:
    """``run = api.run(path)``: run.config, run.history(), run.summary."""
    run = api.run(demo.path(READ))
    rec = demo.run(READ)
    assert run.config == unwrap(rec.config)
    assert canon(run.summary._json_dict) == canon(rec.summary)
    df = run.history()
    rows = demo.history(READ)
    assert len(df) == 500  # sampled to the default 500 of 1000+ rows
    steps = list(df["_step"])
    assert steps[0] == rows[0]["_step"] and steps[-1] == rows[-1]["_step"]
    by_step = {r["_step"]: r for r in rows}
    for _, row in df.iloc[::97].iterrows():
        assert same_number(row["loss"], by_step[int(row["_step"])]["loss"])


def test_querying_multiple_runs_dataframe_and_csv(demo: Demo, api: Any, tmp_path: Path) -> None:
    """The "DataFrame and CSV" tab: summary/config/name of every run into a CSV."""
    import pandas as pd

    runs = api.runs(ENTITY + "/" + PROJECT)
    summary_list, config_list, name_list = [], [], []
    for run in runs:
        summary_list.append(run.summary._json_dict)
        config_list.append({k: v for k, v in run.config.items() if not k.startswith("_")})
        name_list.append(run.name)
    runs_df = pd.DataFrame({"summary": summary_list, "config": config_list, "name": name_list})
    runs_df.to_csv(tmp_path / "project.csv")

    stored = demo.runs()
    assert name_list == [r.display_name for r in stored]
    assert [canon(s) for s in summary_list] == [canon(r.summary) for r in stored]
    assert config_list == [{k: v for k, v in unwrap(r.config).items() if not k.startswith("_")}
                           for r in stored]
    assert len(pd.read_csv(tmp_path / "project.csv")) == len(stored)


def test_querying_multiple_runs_mongodb_style(demo: Demo, api: Any) -> None:
    """``api.runs(path, {"$or": [{"config.experiment_name": "foo"}, ...]})`` and ``len``."""
    runs = api.runs(f"{ENTITY}/{PROJECT}",
                    {"$or": [{"config.model.arch": "resnet18"}, {"config.model.arch": "vit-s"}]})
    expected = [r.run_id for r in demo.runs()
                if unwrap(r.config)["model"]["arch"] in ("resnet18", "vit-s")]
    assert 0 < len(expected) < len(demo.runs())
    assert len(runs) == len(expected)
    assert [r.id for r in runs] == expected


def test_runs_per_page_and_order(demo: Demo, api: Any) -> None:
    """``per_page`` pages lazily; ``order`` = +/-created_at, a summary or a config value."""
    stored = demo.runs()
    ids = [r.run_id for r in stored]
    paged = api.runs(f"{ENTITY}/{PROJECT}", per_page=3)
    assert len(paged) == len(ids)
    assert [r.id for r in paged] == ids  # 7 pages, no run twice, none missing
    assert [r.id for r in api.runs(f"{ENTITY}/{PROJECT}", order="+created_at")] == ids
    assert [r.id for r in api.runs(f"{ENTITY}/{PROJECT}", order="-created_at")] == ids[::-1]

    by_val = [r.id for r in api.runs(f"{ENTITY}/{PROJECT}", order="summary_metrics.val_loss",
                                     per_page=4)]
    assert by_val == [r.run_id for r in sorted(stored, key=lambda r: summ(r)["val_loss"])]
    by_lr = [r.id for r in api.runs(f"{ENTITY}/{PROJECT}", order="-config.lr.value")]
    assert by_lr == [r.run_id for r in sorted(stored, key=lambda r: -unwrap(r.config)["lr"])]


def test_error_handling_comm_error(demo: Demo, api: Any) -> None:
    """Errors talking to the server raise ``wandb.CommError`` with the cause in ``.exc``."""
    with pytest.raises(wandb.CommError) as info:
        api.run(f"{ENTITY}/{PROJECT}/doesnotexist")
    assert "doesnotexist" in str(info.value)
    assert hasattr(info.value, "exc")


def test_latest_git_commit(demo: Demo, api: Any, tmp_path: Path) -> None:
    """``run.commit`` is the git hash, the same as in ``wandb-metadata.json``."""
    run = api.run(demo.path(READ))
    meta = json.loads(demo.file_bytes(READ, "wandb-metadata.json"))
    assert run.commit == demo.run(READ).commit == meta["git"]["commit"]


def test_run_name_and_id(demo: Demo, api: Any) -> None:
    """``run.id`` (the 8-char id), ``run.name`` (display name), ``run.storage_id``."""
    run = api.run(demo.path(READ))
    rec = demo.run(READ)
    assert run.id == rec.run_id and len(run.id) == 8
    assert run.name == rec.display_name
    assert run.storage_id == rec.storage_id


# --- "Public API examples" ----------------------------------------------------------------


def test_read_metrics_from_a_run(demo: Demo, api: Any) -> None:
    """``if run.state == "finished": for i, row in run.history().iterrows(): ...``."""
    run = api.run(demo.path(READ))
    assert run.state == demo.run(READ).state == "finished"
    by_step = {r["_step"]: r for r in demo.history(READ)}
    seen = 0
    for _, row in run.history().iterrows():
        stored = by_step[int(row["_step"])]
        assert row["_timestamp"] == stored["_timestamp"]
        assert same_number(row["acc"], stored["acc"])
        seen += 1
    assert seen == 500


def test_filter_runs_by_date(demo: Demo, api: Any) -> None:
    """``{"$and": [{"created_at": {"$lt": ..., "$gt": ...}}]}``."""
    lo, hi = "2024-01-01T02:30:00Z", "2024-01-01T09:30:00Z"
    runs = api.runs(f"{ENTITY}/{PROJECT}",
                    {"$and": [{"created_at": {"$lt": hi, "$gt": lo}}]})
    expected = [r.run_id for r in demo.runs() if lo < (r.created_at or "") < hi]
    assert len(expected) == 7
    assert [r.id for r in runs] == expected
    assert all(lo < r.created_at < hi for r in runs)


def test_read_specific_metrics(demo: Demo, api: Any) -> None:
    """``run.history(keys=["accuracy"])``: only rows that logged the key, and only it."""
    run = api.run(demo.path(READ))
    df = run.history(keys=["val_loss"])
    stored = [r for r in demo.history(READ) if "val_loss" in r]
    assert list(df.columns) == ["_step", "val_loss"]
    assert list(df["_step"]) == [r["_step"] for r in stored]  # 100+ rows < 500: none dropped
    assert list(df["val_loss"]) == [r["val_loss"] for r in stored]
    few = run.history(keys=["val_loss"], samples=10, pandas=False)
    assert len(few) == 10
    assert few[0]["_step"] == stored[0]["_step"] and few[-1]["_step"] == stored[-1]["_step"]


def test_compare_two_runs(demo: Demo, api: Any) -> None:
    """A DataFrame of two configs; print the rows where they differ."""
    import pandas as pd

    run1, run2 = api.run(demo.path(READ)), api.run(demo.path(OFFSET_RUN))
    df = pd.DataFrame([run1.config, run2.config]).transpose()
    df.columns = [run1.name, run2.name]
    diff = df[df[run1.name] != df[run2.name]]
    c1, c2 = unwrap(demo.run(READ).config), unwrap(demo.run(OFFSET_RUN).config)
    assert set(diff.index) == {k for k in c1 if canon(c1[k]) != canon(c2.get(k))}
    assert {"lr", "seed"} <= set(diff.index)


def test_update_metrics_after_run_finished(demo: Demo, api: Any) -> None:
    """``run.summary["accuracy"] = 0.9``, a histogram, then ``run.summary.update()``."""
    import numpy as np

    before = dict(demo.run(SUMMARY_RUN).summary or {})
    run = api.run(demo.path(SUMMARY_RUN))
    run.summary["accuracy"] = 0.9
    run.summary["accuracy_histogram"] = wandb.Histogram(np.arange(100) % 7)
    run.summary.update()
    after = demo.run(SUMMARY_RUN).summary or {}
    assert after["accuracy"] == 0.9
    assert after["accuracy_histogram"]["_type"] == "histogram"
    assert sum(after["accuracy_histogram"]["values"]) == 100
    assert canon({k: v for k, v in after.items() if not k.startswith("accuracy")}) == canon(before)
    assert demo.run(SUMMARY_RUN).state == "finished"
    assert api.run(demo.path(SUMMARY_RUN)).summary["accuracy"] == 0.9  # a fresh read


def test_rename_metric_in_finished_run(demo: Demo, api: Any) -> None:
    """``summary["new_name"] = summary["old_name"]; del summary["old_name"]; update()``."""
    old = demo.run(RENAME_RUN).summary or {}
    run = api.run(demo.path(RENAME_RUN))
    run.summary["new_name"] = run.summary["best_val_loss"]
    del run.summary["best_val_loss"]
    run.summary.update()
    new = demo.run(RENAME_RUN).summary or {}
    assert "best_val_loss" not in new and new["new_name"] == old["best_val_loss"]
    assert set(new) == (set(old) - {"best_val_loss"}) | {"new_name"}
    assert "best_val_loss" not in api.run(demo.path(RENAME_RUN)).summary


def test_update_config_of_existing_run(demo: Demo, api: Any) -> None:
    """``run.config["key"] = updated_value; run.update()``."""
    before = demo.run(CONFIG_RUN).config or {}
    run = api.run(demo.path(CONFIG_RUN))
    run.config["key"] = {"updated": [1, 2]}
    run.config["lr"] = 0.5
    run.update()
    after = demo.run(CONFIG_RUN).config or {}
    assert after["key"] == {"value": {"updated": [1, 2]}, "desc": None}  # stored wrapped
    assert after["lr"]["value"] == 0.5
    assert after["_wandb"]["value"] == before["_wandb"]["value"]  # internals kept
    assert unwrap(after) == {**unwrap(before), "key": {"updated": [1, 2]}, "lr": 0.5}
    assert api.run(demo.path(CONFIG_RUN)).config["key"] == {"updated": [1, 2]}


def _system_metrics_csv(demo: Demo, api: Any, tmp_path: Path) -> None:
    import pandas as pd

    run = wandb.Api(overrides={"base_url": demo.server.url},
                    api_key=demo.server.api_key).run(demo.path(READ))
    system_metrics = run.history(stream="events")
    system_metrics.to_csv(tmp_path / "sys_metrics.csv")
    stored = demo.events(READ)
    assert 0 < len(stored) <= 500
    assert len(system_metrics) == len(stored)
    assert list(system_metrics["system.cpu"]) == [e["system.cpu"] for e in stored]
    assert list(system_metrics["_runtime"]) == [e["_runtime"] for e in stored]
    back = pd.read_csv(tmp_path / "sys_metrics.csv")
    assert list(back["system.gpu.0.gpu"]) == [e["system.gpu.0.gpu"] for e in stored]


def test_export_system_resource_consumption_to_csv(demo: Demo, api: Any,
                                                   tmp_path: Path) -> None:
    """``wandb.Api().run(path).history(stream="events").to_csv(...)``."""
    _system_metrics_csv(demo, api, tmp_path)


def test_unsampled_metric_data(demo: Demo, api: Any) -> None:
    """``history = run.scan_history(); losses = [row["loss"] for row in history]``."""
    run = api.run(demo.path(READ))
    history_rows = run.scan_history()
    losses = [row["loss"] for row in history_rows]
    stored = demo.history(READ)
    assert len(losses) == len(stored) >= 1000
    assert all(same_number(a, r["loss"]) for a, r in zip(losses, stored, strict=True))
    steps = [row["_step"] for row in run.scan_history(page_size=128)]
    assert steps == [r["_step"] for r in stored]  # no step duplicated or missing


def test_paginated_history(demo: Demo, api: Any) -> None:
    """``run.scan_history(keys=sorted(cols), page_size=100)``, windows, a run from step 100."""
    run = api.run(demo.path(READ))
    cols = ["loss", "val_loss"]
    rows = list(run.scan_history(keys=sorted(cols), page_size=100))
    stored = [r for r in demo.history(READ) if all(c in r for c in cols)]
    assert [r["_step"] for r in rows] == [r["_step"] for r in stored]
    assert [r["val_loss"] for r in rows] == [r["val_loss"] for r in stored]
    assert all(set(r) == {"_step", *cols} for r in rows)

    window = [r["_step"] for r in run.scan_history(page_size=7, min_step=33, max_step=80)]
    assert window == list(range(33, 80))

    offset = api.run(demo.path(OFFSET_RUN))
    stored5 = demo.history(OFFSET_RUN)
    assert stored5[0]["_step"] == 100
    for page in (64, 1000):
        steps = [r["_step"] for r in offset.scan_history(page_size=page)]
        assert steps == [r["_step"] for r in stored5]
    keyed = [r["_step"] for r in offset.scan_history(keys=["val_loss"], page_size=50,
                                                     min_step=150, max_step=400)]
    assert keyed == [r["_step"] for r in stored5 if "val_loss" in r and 150 <= r["_step"] < 400]


def test_export_all_runs_metrics_to_csv(demo: Demo, api: Any, tmp_path: Path) -> None:
    """The guide's second copy of the CSV export, checked through the CSV it writes."""
    import pandas as pd

    runs = api.runs(ENTITY + "/" + PROJECT)
    summary_list, config_list, name_list = [], [], []
    for run in runs:
        summary_list.append(run.summary._json_dict)
        config_list.append({k: v for k, v in run.config.items() if not k.startswith("_")})
        name_list.append(run.name)
    runs_df = pd.DataFrame({"summary": summary_list, "config": config_list, "name": name_list})
    runs_df.to_csv(tmp_path / "project.csv")
    back = pd.read_csv(tmp_path / "project.csv")
    stored = demo.runs()
    assert list(back["name"]) == [r.display_name for r in stored]
    assert [s["acc"] for s in summary_list] == [summ(r)["acc"] for r in stored]


def test_run_start_time(demo: Demo, api: Any) -> None:
    """``start_time = run.created_at``: the server's ISO-8601 string, unchanged."""
    run = api.run(demo.path(READ))
    assert run.created_at == demo.run(READ).created_at == "2024-01-01T00:00:00Z"


def test_upload_file_to_finished_run(demo: Demo, api: Any, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``run.upload_file("file_name.extension")`` on a finished run."""
    monkeypatch.chdir(tmp_path)
    data = "résumé of the run\n".encode() * 100
    Path("file_name.extension").write_bytes(data)
    run = api.run(demo.path(UPLOAD_RUN))
    uploaded = run.upload_file("file_name.extension")
    assert uploaded.name == "file_name.extension"
    assert uploaded.size == len(data) and uploaded.md5 == md5_b64(data)
    stored = demo.files(UPLOAD_RUN)["file_name.extension"]
    assert stored.md5 == md5_b64(data) and stored.size_bytes == len(data)
    assert demo.file_bytes(UPLOAD_RUN, "file_name.extension") == data
    assert demo.run(UPLOAD_RUN).state == "finished"  # uploading does not revive the run


def test_download_file_from_run(demo: Demo, api: Any, tmp_path: Path) -> None:
    """``run.file("model-best.h5").download()``: bytes and md5 as stored."""
    run = api.run(demo.path(READ))
    f = run.file("model.pt")
    f.download(root=str(tmp_path)).close()
    data = (tmp_path / "model.pt").read_bytes()
    assert data == demo.file_bytes(READ, "model.pt")
    assert md5_b64(data) == f.md5 == demo.files(READ)["model.pt"].md5
    assert f.size == len(data)
    with pytest.raises((ValueError, wandb.CommError)):  # the client's own overwrite guard
        f.download(root=str(tmp_path))


def test_download_all_files_from_run(demo: Demo, api: Any, tmp_path: Path) -> None:
    """``for file in run.files(): file.download()``."""
    run = api.run(demo.path(READ))
    names = []
    for file in run.files():
        file.download(root=str(tmp_path)).close()
        data = (tmp_path / file.name).read_bytes()
        assert md5_b64(data) == file.md5 and len(data) == file.size
        assert data == demo.file_bytes(READ, file.name)
        names.append(file.name)
    assert sorted(names) == sorted(demo.files(READ))
    assert len(run.files()) == len(names)


def test_runs_of_a_sweep(demo: Demo, api: Any) -> None:
    """``sweep = api.sweep(path); sweep_runs = sweep.runs``."""
    sweep = api.sweep(f"{ENTITY}/{PROJECT}/{demo.seed.sweep_id}")
    expected = [r.run_id for r in demo.runs() if r.sweep_name == demo.seed.sweep_id]
    assert len(expected) == 5
    assert [r.id for r in sweep.runs] == expected
    assert sweep.config["metric"] == {"name": "val_loss", "goal": "minimize"}
    assert sweep.state == "FINISHED"


def test_best_run_of_a_sweep(demo: Demo, api: Any) -> None:
    """``sweep.best_run()``: the run with the best ``metric`` of the sweep config."""
    sweep = api.sweep(f"{ENTITY}/{PROJECT}/{demo.seed.sweep_id}")
    members = [r for r in demo.runs() if r.sweep_name == demo.seed.sweep_id]
    best = min(members, key=lambda r: summ(r)["val_loss"])
    best_run = sweep.best_run()
    assert best_run.id == best.run_id
    assert best_run.summary["val_loss"] == summ(best)["val_loss"]


def test_best_model_file_of_a_sweep(demo: Demo, api: Any, tmp_path: Path) -> None:
    """Sort ``sweep.runs`` by a summary value; download the best run's model file."""
    sweep = api.sweep(f"{ENTITY}/{PROJECT}/{demo.seed.sweep_id}")
    runs = sorted(sweep.runs, key=lambda run: run.summary.get("acc", 0), reverse=True)
    acc = runs[0].summary.get("acc", 0)
    runs[0].file("model.pt").download(root=str(tmp_path), replace=True).close()
    members = [r for r in demo.runs() if r.sweep_name == demo.seed.sweep_id]
    best = max(members, key=lambda r: summ(r)["acc"])
    assert runs[0].id == best.run_id and acc == summ(best)["acc"]
    index = demo.seed.run_ids.index(best.run_id)
    assert (tmp_path / "model.pt").read_bytes() == demo.file_bytes(index, "model.pt")


def test_delete_files_with_extension(demo: Demo, api: Any) -> None:
    """``for file in run.files(): if file.name.endswith(".png"): file.delete()``."""
    before = set(demo.files(DELETE_RUN))
    assert any(n.endswith(".png") for n in before)
    run = api.run(demo.path(DELETE_RUN))
    extension = ".png"
    files = run.files()
    for file in files:
        if file.name.endswith(extension):
            file.delete()
    after = set(demo.files(DELETE_RUN))
    assert after == {n for n in before if not n.endswith(extension)}
    assert sorted(f.name for f in api.run(demo.path(DELETE_RUN)).files()) == sorted(after)


def test_download_system_metrics_data(demo: Demo, api: Any, tmp_path: Path) -> None:
    """``system_metrics = run.history(stream="events"); system_metrics.to_csv(...)``."""
    _system_metrics_csv(demo, api, tmp_path)


def test_update_summary_metrics_with_dict(demo: Demo, api: Any) -> None:
    """``summary.update({"key": val})``."""
    before = demo.run(SUMMARY_DICT_RUN).summary or {}
    run = api.run(demo.path(SUMMARY_DICT_RUN))
    run.summary.update({"key": 123.5, "nested": {"a": [1, 2]}})
    after = demo.run(SUMMARY_DICT_RUN).summary or {}
    assert after["key"] == 123.5 and after["nested"] == {"a": [1, 2]}
    assert canon({k: v for k, v in after.items() if k not in ("key", "nested")}) == canon(before)


def test_command_that_ran_the_run(demo: Demo, api: Any, tmp_path: Path) -> None:
    """``meta = json.load(run.file("wandb-metadata.json").download())``; program + args."""
    run = api.run(demo.path(READ))
    with run.file("wandb-metadata.json").download(root=str(tmp_path)) as fh:
        meta = json.load(fh)
    program = ["python"] + [meta["program"]] + meta["args"]
    stored = json.loads(demo.file_bytes(READ, "wandb-metadata.json"))
    assert program == ["python", stored["program"], *stored["args"]]
    assert run.metadata == stored  # the client's own property reads the same file


# --- the extra acceptance items ---------------------------------------------------


def test_tags_name_notes_via_update(demo: Demo, api: Any) -> None:
    """``run.tags``, ``run.name`` and ``run.notes`` edited locally, sent by ``run.update()``."""
    run = api.run(demo.path(META_RUN))
    run.tags = [*run.tags, "promoted"]
    run.name = "renamed-run ✓"
    run.notes = "checked by hand"
    run.update()
    rec = demo.run(META_RUN)
    assert rec.tags == run.tags and "promoted" in rec.tags
    assert rec.display_name == "renamed-run ✓" and rec.notes == "checked by hand"
    fresh = api.run(demo.path(META_RUN))
    assert (fresh.tags, fresh.name, fresh.notes) == (rec.tags, rec.display_name, rec.notes)


def test_history_samples(demo: Demo, api: Any) -> None:
    """``run.history(samples=n)``: n rows, evenly spread, first and last step kept."""
    run = api.run(demo.path(OFFSET_RUN))
    stored = demo.history(OFFSET_RUN)
    df = run.history(samples=25)
    steps = list(df["_step"])
    assert len(steps) == 25 and steps == sorted(set(steps))
    assert steps[0] == stored[0]["_step"] == 100 and steps[-1] == stored[-1]["_step"]
    assert list(run.history(samples=25)["_step"]) == steps  # deterministic
    assert len(run.history(samples=5000)) == len(stored)


def test_reads_survive_injected_faults(demo: Demo, api: Any, tmp_path: Path) -> None:
    """30% of requests get a 429 (Retry-After), a 500 or added latency; reads still work."""
    from wandb.sdk import wandb_setup

    wandb_setup.singleton().settings.x_graphql_retry_max = 20
    log = demo.server.request_log
    start = len(log)
    demo.server.faults.set([
        Fault(route="*", kind="429", probability=0.1, retry_after=1),
        Fault(route="*", kind="500", probability=0.1),
        Fault(route="*", kind="latency", probability=0.1, latency_ms=30),
    ], seed=11)
    began = time.monotonic()
    try:
        faulty = wandb.Api(overrides={"base_url": demo.server.url},
                           api_key=demo.server.api_key, timeout=60)
        runs = faulty.runs(f"{ENTITY}/{PROJECT}", per_page=8)
        assert [r.id for r in runs] == [r.run_id for r in demo.runs()]
        run = faulty.run(demo.path(OFFSET_RUN))
        assert run.config == unwrap(demo.run(OFFSET_RUN).config)
        steps = [r["_step"] for r in run.scan_history(page_size=400)]
        assert steps == [r["_step"] for r in demo.history(OFFSET_RUN)]
        assert len(run.history(samples=50)) == 50
        f = run.file("config.yaml")
        f.download(root=str(tmp_path)).close()
        assert (tmp_path / "config.yaml").read_bytes() == demo.file_bytes(OFFSET_RUN,
                                                                          "config.yaml")
    finally:
        demo.server.faults.clear()
    entries = log.entries()[start:]
    injected = [e for e in entries if e.fault]
    kinds = {k for e in injected for k in e.fault.split("+")}  # type: ignore[union-attr]
    assert {"429", "500"} <= {k.split(":")[0] for k in kinds}
    assert any(k.startswith("latency") for k in kinds)
    assert 0.15 * len(entries) <= len(injected) <= 0.45 * len(entries)
    assert all(e.status in (429, 500) for e in injected if e.fault in ("429", "500"))
    assert time.monotonic() - began < 60
