"""``mirror runs``, ``mirror history``, ``mirror files`` and ``mirror export``.

The store is a real one, synced from ``mirror serve`` over the seeded demo project plus
one run made for the value rules (NaN, +/-Infinity, unicode keys, strings, booleans,
media dicts, a key of mixed types). Each command's output is compared with what
``mirror.Api`` answers for the same question: the CLI must be a view of the ``Api``, not a
second implementation. The commands run through typer's ``CliRunner`` and, for the
exit codes and the console script path, as real subprocesses.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mirror.api import Api
from mirror.cli import app
from mirror.records import RunRecord
from mirror.server.seed import seed_demo
from mirror.server.testing import serve_in_thread
from mirror.settings import Settings
from mirror.store import history, open_store
from mirror.store import runs as store_runs
from mirror.sync.engine import SyncOptions
from mirror.sync.runner import sync
from mirror.upstream.client import WandbClient

ENTITY, PROJECT = "mirror", "demo"
PATH = f"{ENTITY}/{PROJECT}"
ODD = "oddvals1"  # the run holding the awkward values
ODD_ROWS = 240


def odd_rows() -> list[dict[str, Any]]:
    rows = []
    for step in range(ODD_ROWS):
        row: dict[str, Any] = {"_step": step, "_runtime": step * 0.25,
                               "_timestamp": 1.7e9 + step, "loss": 1.0 / (step + 1),
                               "精度/acc": step / ODD_ROWS, "epoch": step // 40}
        if step == 7:
            row["loss"] = math.nan
        if step == 8:
            row["loss"] = math.inf
        if step == 9:
            row["loss"] = -math.inf
        if step % 30 == 0:
            row["note"] = f"checkpoint ✓ {step}"
            row["flag"] = step % 60 == 0
            row["hist"] = {"_type": "histogram", "bins": [0, 1, 2], "values": [3, 4]}
            row["mixed"] = step if step % 60 else f"s{step}"
        rows.append(row)
    return rows


def _strict(text: str) -> Any:
    """json.loads that fails on NaN/Infinity: what other JSON readers do."""
    def refuse(name: str) -> Any:
        raise AssertionError(f"non-strict JSON constant {name} in output")

    return json.loads(text, parse_constant=refuse)


def same(a: Any, b: Any) -> bool:
    """Equal as values: NaN equals NaN, 1 equals 1.0."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def finite(value: Any) -> Any:
    """What strict JSON makes of a value: non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def from_csv_cell(cell: str, like: Any) -> Any:
    """A CSV cell read back as the type of the ``Api``'s value ``like``."""
    if like is None:
        return None if cell == "" else cell
    if isinstance(like, bool):
        return cell == "True"
    if isinstance(like, int | float):
        return float(cell)
    if isinstance(like, dict | list):
        return _strict(cell)
    return cell


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A store synced from the seeded server (20 demo runs + the odd-values run)."""
    root = tmp_path_factory.mktemp("query-cli")
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith(("WANDB_", "MIRROR_")) or key.lower().endswith("_proxy"):
                mp.delenv(key)
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        upstream = open_store(root / "upstream" / "mirror.db")
        seed_demo(upstream, ENTITY, PROJECT)
        rows = odd_rows()
        with upstream.transaction() as s:
            pk = store_runs.save_run(s, RunRecord(
                entity=ENTITY, project=PROJECT, run_id=ODD, display_name="odd ☃ values",
                state="finished", created_at="2030-01-01T00:00:00Z",
                heartbeat_at="2030-01-01T00:01:00Z",
                config={"lr": {"value": 0.5, "desc": None}, "_private": {"value": 1},
                        "ключ": {"value": "значение", "desc": None}},
                summary={"loss": math.inf, "nan_metric": math.nan, "精度": 0.5},
                history_line_count=len(rows), last_step=rows[-1]["_step"]))
            history.save_history(s, pk, rows)
        local_path = root / "local" / "mirror.db"
        local = open_store(local_path)
        with serve_in_thread(upstream, authoritative=True) as srv:
            settings = Settings(home=local_path.parent, db_url=local.url, base_url=srv.url,
                                api_key=srv.api_key)
            client = WandbClient(settings)
            try:
                report = sync(local, settings, [PATH], SyncOptions(), client=client)
            finally:
                client.close()
        assert report.ok, report.as_dict()
        local.close()
        upstream.close()
    yield local_path


@pytest.fixture
def home(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the synced store (and its blob cache), found through MIRROR_HOME
    as a user's would be."""
    home = tmp_path / "home"
    shutil.copytree(template.parent, home)
    monkeypatch.setenv("MIRROR_HOME", str(home))
    return home


@pytest.fixture
def api(home: Path) -> Iterator[Api]:
    with Api() as a:
        yield a


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


# --- mirror runs -------------------------------------------------------------------------


def test_runs_csv_equals_the_api(api: Api) -> None:
    columns = ["id", "name", "state", "tags", "config.lr", "config.optimizer.name",
               "summary.loss", "summary.精度"]
    res = invoke("runs", PATH, "--format", "csv", "-c", ",".join(columns[:4]),
                 "-c", ",".join(columns[4:]))
    assert res.exit_code == 0, res.stderr
    table = list(csv.reader(io.StringIO(res.stdout)))
    assert table[0] == columns
    expected = list(api.runs(PATH))
    assert [row[0] for row in table[1:]] == [r.id for r in expected]
    for row, run in zip(table[1:], expected, strict=True):
        values = [run.id, run.name, run.state, run.tags, run.config.get("lr"),
                  run.config.get("optimizer", {}).get("name"), run.summary.get("loss"),
                  run.summary.get("精度")]
        for cell, value in zip(row, values, strict=True):
            assert same(from_csv_cell(cell, value), value), (run.id, cell, value)
    odd = next(row for row in table[1:] if row[0] == ODD)
    assert odd[6] == "inf"  # CSV keeps the non-finite value (pandas reads it back)


def test_runs_json_is_a_strict_array_in_the_apis_order(api: Api) -> None:
    filters = {"$or": [{"state": "failed"}, {"config.batch_size": {"$gte": 64}}]}
    order = "-summary_metrics.acc"
    res = invoke("runs", PATH, "--format", "json", "--filter", json.dumps(filters),
                 "--order", order)
    assert res.exit_code == 0, res.stderr
    got = _strict(res.stdout)
    expected = list(api.runs(PATH, filters=filters, order=order))
    assert 0 < len(got) == len(expected) < 21
    assert [r["id"] for r in got] == [r.id for r in expected]
    for obj, run in zip(got, expected, strict=True):
        assert set(obj) == {"id", "name", "state", "created_at", "tags", "config", "summary"}
        assert obj["config"] == finite({k: v for k, v in run.config.items()
                                        if not k.startswith("_")})
        assert same(obj["summary"], finite(run.summary._json_dict))


def test_runs_json_unicode_and_non_finite(api: Api) -> None:
    res = invoke("runs", PATH, "--format", "json", "--filter", '{"name": "oddvals1"}',
                 "-c", "id,name,config,summary")
    assert res.exit_code == 0, res.stderr
    [obj] = _strict(res.stdout)
    assert obj == {"id": ODD, "name": "odd ☃ values",
                   "config": {"lr": 0.5, "ключ": "значение"},
                   "summary": {"loss": None, "nan_metric": None, "精度": 0.5}}
    assert "ключ" in res.stdout  # UTF-8, not \u escapes


def test_runs_table_and_limit(api: Api) -> None:
    res = invoke("runs", PATH, "--limit", "3", "--order", "-created_at")
    assert res.exit_code == 0, res.stderr
    newest = [r.id for r in api.runs(PATH, order="-created_at")]
    for run_id in newest[:3]:
        assert run_id in res.stdout
    assert newest[3] not in res.stdout
    assert "3 of 21" in res.stdout


def test_runs_to_file(home: Path, api: Api) -> None:
    target = home / "out" / "runs.json"
    res = invoke("runs", PATH, "--format", "json", "-o", str(target), "-c", "id")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    assert [r["id"] for r in _strict(target.read_text("utf-8"))] == [r.id for r in api.runs(PATH)]


@pytest.mark.parametrize(("args", "needle"), [
    (["--filter", '{"state": '], "not valid JSON"),
    (["--filter", '["state"]'], "must be a JSON object"),
    (["--filter", '{"$foo": 1}'], "'$foo'"),
    (["--filter", '{"state": {"$almost": "x"}}'], "$almost"),
    (["--filter", '{"name": {"$regex": "("}}'], "invalid $regex"),
    (["--order", "bogus"], "cannot order by 'bogus'"),
    (["-c", "id,nonsense"], "unknown column 'nonsense'"),
    (["--format", "xml"], "xml"),
])
def test_runs_usage_errors_exit_2(home: Path, args: list[str], needle: str) -> None:
    res = invoke("runs", PATH, *args)
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert needle in res.stderr
    assert res.stdout == ""
    assert "Traceback" not in res.stderr


def test_unknown_project_exit_1_with_sync_hint(home: Path) -> None:
    res = invoke("runs", f"{ENTITY}/nope")
    assert res.exit_code == 1
    assert "'mirror/nope' is not in the local store" in res.stderr
    assert "mirror sync mirror/nope" in res.stderr


def test_no_store_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRROR_HOME", str(tmp_path / "empty"))
    res = invoke("runs", PATH)
    assert res.exit_code == 1
    assert "no store at" in res.stderr
    assert not (tmp_path / "empty" / "mirror.db").exists()  # a read never creates one


# --- mirror history ----------------------------------------------------------------------


def test_history_csv_streams_every_row(api: Api) -> None:
    res = invoke("history", f"{PATH}/{ODD}")
    assert res.exit_code == 0, res.stderr
    table = list(csv.DictReader(io.StringIO(res.stdout)))
    assert list(table[0])[:3] == ["_step", "_runtime", "_timestamp"]
    scan = list(api.run(f"{PATH}/{ODD}").scan_history())
    assert len(table) == len(scan) == ODD_ROWS
    for got, want in zip(table, scan, strict=True):
        assert {k for k, v in got.items() if v != ""} == set(want)
        for key, value in want.items():
            assert same(from_csv_cell(got[key], value), value), (key, got[key], value)
    assert table[8]["loss"] == "inf" and table[9]["loss"] == "-inf" and table[7]["loss"] == "nan"
    assert "精度/acc" in table[0]


def test_history_parquet_round_trips_scan_history(home: Path, api: Api) -> None:
    target = home / "h.parquet"
    res = invoke("history", f"{PATH}/{ODD}", "-o", str(target))  # format from the suffix
    assert res.exit_code == 0, res.stderr
    assert f"wrote {ODD_ROWS:,} row(s)" in res.stderr
    table = pq.read_table(target)
    json_columns = json.loads(table.schema.metadata[b"wandb-mirror:json_columns"])
    assert set(json_columns) == {"hist", "mixed"}
    assert str(table.schema.field("loss").type) == "double"
    assert str(table.schema.field("_step").type) == "int64"
    assert str(table.schema.field("flag").type) == "bool"
    assert str(table.schema.field("note").type) == "string"
    scan = list(api.run(f"{PATH}/{ODD}").scan_history())
    rows = table.to_pylist()
    assert len(rows) == len(scan)
    for got, want in zip(rows, scan, strict=True):
        got = {k: (_strict(v) if k in json_columns else v) for k, v in got.items()
               if v is not None}
        assert same(got, want)


def test_history_parquet_in_many_batches_and_row_groups(home: Path, api: Api) -> None:
    """The streaming writer's batch and row-group boundaries lose and repeat nothing."""
    from mirror.api.export import history_source, write_history_parquet

    run = api.run(f"{PATH}/{ODD}")
    target = home / "small-batches.parquet"
    n = write_history_parquet(history_source(run, page_size=50), target, batch_rows=7,
                              row_group_rows=30)
    assert n == ODD_ROWS
    assert pq.ParquetFile(target).num_row_groups == math.ceil(ODD_ROWS / 35)
    assert [r["_step"] for r in pq.read_table(target).to_pylist()] == list(range(ODD_ROWS))


@pytest.mark.parametrize("run_index", [0, 4])
def test_history_parquet_of_demo_runs(home: Path, api: Api, run_index: int) -> None:
    run = list(api.runs(PATH))[run_index]
    target = home / "demo.parquet"
    res = invoke("history", f"{PATH}/{run.id}", "--format", "parquet", "-o", str(target))
    assert res.exit_code == 0, res.stderr
    rows = pq.read_table(target).to_pylist()
    scan = list(run.scan_history())
    assert len(rows) == len(scan) >= 1000
    assert same({k: v for k, v in rows[-1].items() if v is not None}, scan[-1])


def test_history_sampled_json_lines(api: Api) -> None:
    res = invoke("history", f"{PATH}/{ODD}", "--samples", "7", "--format", "json")
    assert res.exit_code == 0, res.stderr
    lines = [_strict(line) for line in res.stdout.splitlines()]
    want = api.run(f"{PATH}/{ODD}").history(samples=7, pandas=False)
    assert len(lines) == len(want) == 7
    assert lines == [finite(row) for row in want]


def test_history_keys_and_samples(api: Api) -> None:
    run = list(api.runs(PATH))[2]
    res = invoke("history", f"{PATH}/{run.id}", "-k", "loss", "--keys", "val_loss")
    assert res.exit_code == 0, res.stderr
    table = list(csv.reader(io.StringIO(res.stdout)))
    assert table[0] == ["_step", "loss", "val_loss"]
    scan = list(run.scan_history(keys=["loss", "val_loss"]))
    assert [[float(c) for c in row] for row in table[1:]] == \
        [[r["_step"], r["loss"], r["val_loss"]] for r in scan]
    res = invoke("history", f"{PATH}/{run.id}", "-k", "loss,val_loss", "--samples", "5")
    sampled = run.history(samples=5, keys=["loss", "val_loss"], pandas=False)
    table = list(csv.reader(io.StringIO(res.stdout)))
    assert [[float(c) for c in row] for row in table[1:]] == \
        [[r["_step"], r["loss"], r["val_loss"]] for r in sampled]


def test_history_events_stream(api: Api) -> None:
    run = list(api.runs(PATH))[1]
    res = invoke("history", f"{PATH}/{run.id}", "--stream", "events")
    assert res.exit_code == 0, res.stderr
    table = list(csv.DictReader(io.StringIO(res.stdout)))
    events = run.history(stream="events", samples=10_000, pandas=False)
    assert len(table) == len(events) > 10
    assert [float(r["system.cpu"]) for r in table] == [e["system.cpu"] for e in events]


def test_history_without_sampling_streams(api: Api) -> None:
    """No --samples: the rows are a lazy HistoryScan page stream, never a loaded list."""
    from mirror.api import HistoryScan
    from mirror.api.export import history_source

    run = api.run(f"{PATH}/{ODD}")
    assert isinstance(history_source(run).rows, HistoryScan)
    assert isinstance(history_source(run, keys=["loss"]).rows, HistoryScan)
    assert isinstance(history_source(run, samples=5).rows, list)


@pytest.mark.parametrize(("args", "code", "needle"), [
    ([f"{PATH}/nope"], 1, "mirror sync mirror/demo"),
    ([f"{PATH}/{ODD}", "--format", "parquet"], 2, "-o FILE"),
    ([f"{PATH}/{ODD}", "--stream", "events", "-k", "loss"], 2, "default stream"),
    ([f"{PATH}/{ODD}", "--stream", "gpu"], 2, "'gpu'"),
    ([f"{PATH}/{ODD}", "--samples", "0"], 2, "--samples"),
    (["a/b/c/d/e"], 2, "Invalid path"),
])
def test_history_errors(home: Path, args: list[str], code: int, needle: str) -> None:
    res = invoke("history", *args)
    assert res.exit_code == code, (res.stdout, res.stderr)
    assert needle in res.stderr
    assert "Traceback" not in res.stderr


# --- mirror files ------------------------------------------------------------------------


def test_files_json_equals_the_api(api: Api) -> None:
    run = api.runs(PATH)[0]
    res = invoke("files", f"{PATH}/{run.id}", "--json")
    assert res.exit_code == 0, res.stderr
    got = _strict(res.stdout)
    assert [(f["name"], f["size"], f["md5"], f["cached"]) for f in got] == \
        [(f.name, f.size, f.md5, True) for f in run.files()]
    res = invoke("files", f"{PATH}/{run.id}", "--pattern", "%.json", "--json")
    assert [f["name"] for f in _strict(res.stdout)] == ["wandb-metadata.json"]
    res = invoke("files", f"{PATH}/{run.id}")
    assert res.exit_code == 0 and "model.pt" in res.stdout and "5 file(s)" in res.stdout


def test_files_unknown_run(home: Path) -> None:
    res = invoke("files", f"{PATH}/nope")
    assert res.exit_code == 1
    assert "not in the local store" in res.stderr and "mirror sync" in res.stderr


# --- mirror export -----------------------------------------------------------------------


def test_export_runs_csv_and_one_history_file_per_run(home: Path, api: Api) -> None:
    out = home / "export"
    filters = {"state": {"$in": ["finished", "failed"]}}
    res = invoke("export", PATH, "--to", str(out), "--filter", json.dumps(filters))
    assert res.exit_code == 0, res.stderr
    runs = list(api.runs(PATH, filters=filters))
    with open(out / "runs.csv", encoding="utf-8", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["summary", "config", "name", "id"]
    assert [r["id"] for r in table] == [r.id for r in runs]
    for row, run in zip(table, runs, strict=True):  # the guide's runs_df, as strict JSON
        assert row["name"] == run.name
        assert _strict(row["config"]) == {k: v for k, v in run.config.items()
                                          if not k.startswith("_")}
        assert same(_strict(row["summary"]), finite(run.summary._json_dict))
    files = sorted(p.name for p in (out / "history").iterdir())
    assert files == sorted(f"{r.id}.csv" for r in runs)
    total = 0
    for run in runs:
        with open(out / "history" / f"{run.id}.csv", encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        scan = list(run.scan_history())
        assert len(rows) == len(scan)
        assert [int(r["_step"]) for r in rows] == [r["_step"] for r in scan]
        total += len(rows)
    assert f"{total:,} row(s)" in res.stderr


def test_export_parquet_keys(home: Path, api: Api) -> None:
    out = home / "export"
    res = invoke("export", PATH, "--to", str(out), "--format", "parquet", "-k", "loss",
                 "--filter", '{"tags": "augment"}', "-q")
    assert res.exit_code == 0, res.stderr
    runs = list(api.runs(PATH, filters={"tags": "augment"}))
    assert 0 < len(runs) < 21
    for run in runs:
        rows = pq.read_table(out / "history" / f"{run.id}.parquet").to_pylist()
        assert same(rows, [dict(r) for r in run.scan_history(keys=["loss"])])


def test_export_reports_a_failed_run_and_goes_on(home: Path, api: Api) -> None:
    out = home / "export"
    victim = list(api.runs(PATH))[3].id
    (out / "history" / f"{victim}.csv").mkdir(parents=True)  # a folder where a file goes
    res = invoke("export", PATH, "--to", str(out))
    assert res.exit_code == 1
    assert f"failed {victim}" in res.stderr
    written = {p.name for p in (out / "history").iterdir() if p.is_file()}
    assert len(written) == 20 and f"{victim}.csv" not in written
    assert not [p for p in (out / "history").iterdir() if p.name.endswith(".part")]


def test_export_errors(home: Path) -> None:
    res = invoke("export", PATH, "--to", str(home / "x"), "--filter", '{"$nope": 1}')
    assert res.exit_code == 2 and "'$nope'" in res.stderr
    res = invoke("export", f"{ENTITY}/nope", "--to", str(home / "x"))
    assert res.exit_code == 1 and "mirror sync mirror/nope" in res.stderr
    res = invoke("export", PATH, "--to", str(home / "x"), "--format", "xlsx")
    assert res.exit_code == 2 and "xlsx" in res.stderr


# --- as a real process -------------------------------------------------------------------


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIRROR_"))}
    env["MIRROR_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "mirror.cli", *args], env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=120)


def test_subprocess_export_and_exit_code(home: Path, api: Api) -> None:
    out = home / "export"
    res = run_cli(home, "export", PATH, "--to", str(out), "--format", "parquet")
    assert res.returncode == 0, res.stderr
    runs = list(api.runs(PATH))
    assert len(list((out / "history").glob("*.parquet"))) == len(runs) == 21
    odd = pq.read_table(out / "history" / f"{ODD}.parquet").to_pylist()
    assert len(odd) == ODD_ROWS and odd[3]["精度/acc"] == 3 / ODD_ROWS
    res = run_cli(home, "history", f"{PATH}/nope")
    assert res.returncode == 1 and "mirror sync" in res.stderr
    assert "Traceback" not in res.stderr
