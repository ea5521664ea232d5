"""Local runs, online half: the official SDK logs into `mirror serve`, `mirror push` uploads.

The judge is the real client on both ends. The standard ``wandb`` SDK (the dev venv's
latest, and 0.22.3 from a cached venv, see ``legacy_wandb.py``) runs a script in a
subprocess with ``WANDB_BASE_URL``/``WANDB_API_KEY`` pointing at a default-mode (local,
non-authoritative) server over a real store: 500 steps with NaN, +-Infinity, nested dicts
and histograms, explicit ``step=``, ``wandb.save`` files (live and at the end), summary
and config edits, ``finish()``; then a ``resume="must"`` run that adds steps; and a run
that raises. ``mirror.Api`` must give back exactly what the script logged. Then the real
``mirror push`` command uploads the local runs to a second server (authoritative, over
another store) and the official ``wandb.Api`` reading THAT server must see what
``mirror.Api`` sees locally: history rows, config, summary, files by md5, state.

``wandb sync`` of an offline folder goes through wandb 0.22.3's pure-Python sender, whose
needs differ (introspection probes, ``serverSettings``); it is checked separately.

Cost: each SDK process takes seconds to start (the steps are cheap), so each SDK version
is one test that shares its runs between all of its checks; the main and crash runs start
concurrently. These tests are marked slow but, like all slow tests, run in CI.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import wandb
from legacy_wandb import LEGACY_VERSION, legacy_wandb_python  # noqa: F401 (fixture)

from mirror import api as mapi
from mirror.outbox.replay import plan_push
from mirror.server.testing import RunningServer, serve_in_thread
from mirror.store import Store, open_store
from mirror.store import outbox as outbox_store
from mirror.store import runs as store_runs

ENTITY = "alice"
PROJECT = "logproj"
STEPS = 500
RESUMED_STEPS = 20
CRASH_STEPS = 30
SDK_TIMEOUT = 180.0
HIST_BINS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]

# The script every SDK version runs; one mode per process. It writes what it needs to
# tell the test (the run's id, entity and project as the SDK adopted them) to argv[2].
SCENARIO = textwrap.dedent('''
    import json, os, sys
    import wandb

    mode, out = sys.argv[1], sys.argv[2]
    settings = wandb.Settings(x_disable_stats=True, console="off")
    project, entity = os.environ["SC_PROJECT"], os.environ["SC_ENTITY"]

    def report(run, **extra):
        with open(out, "w") as fh:
            json.dump({"id": run.id, "entity": run.entity, "project": run.project, **extra}, fh)

    if mode == "main":
        run = wandb.init(project=project, entity=entity,
                         config={"lr": 0.01, "batch_size": 32,
                                 "model": {"layers": 3, "act": "relu"}},
                         tags=["baseline", "local"], notes="first run", group="grp-a",
                         job_type="train", settings=settings)
        with open("notes.txt", "w") as fh:
            fh.write("live notes\\n")
        wandb.save("notes.txt", policy="now")
        for i in range(int(os.environ["SC_STEPS"])):
            row = {"loss": 1.0 / (i + 1), "acc": i / 500, "nested": {"a": i, "b": {"c": i * 2}}}
            if i == 10:
                row["loss"] = float("nan")
            if i == 11:
                row["inf_metric"] = float("inf")
            if i == 12:
                row["neg_inf"] = float("-inf")
            if i %% 100 == 0:
                row["hist"] = wandb.Histogram(np_histogram=([i, 3, 5, 0, 1], %(bins)r))
            wandb.log(row)
        wandb.log({"val_loss": 0.5}, step=500)
        wandb.log({"val_acc": 0.7}, step=500)
        wandb.log({"val_loss": 0.4, "val_acc": 0.8}, step=510)
        with open("final.txt", "w") as fh:
            fh.write("final contents\\n")
        wandb.save("final.txt", policy="end")
        run.summary["best_loss"] = 0.001
        run.summary.update({"extra": {"x": 1}, "note": "hi"})
        run.config.update({"epochs": 5})
        report(run)
        run.finish()
    elif mode == "resume":
        run = wandb.init(project=project, entity=entity, id=os.environ["SC_RUN_ID"],
                         resume="must", settings=settings)
        for i in range(%(resumed)d):
            wandb.log({"loss": 0.5 + i, "resumed_metric": i})
        run.summary["resumed"] = True
        report(run)
        run.finish()
    elif mode == "crash":
        run = wandb.init(project=project, entity=entity, settings=settings)
        report(run)
        for i in range(%(crash)d):
            wandb.log({"loss": 1.0 / (i + 1)})
        raise RuntimeError("boom")
''') % {"bins": HIST_BINS, "resumed": RESUMED_STEPS, "crash": CRASH_STEPS}


# --- what the script logged ---------------------------------------------------------------


def expected_history(resumed_from: int | None) -> dict[int, dict[str, Any]]:
    """The user keys of every row the scenario's main run logged, by ``_step``."""
    rows: dict[int, dict[str, Any]] = {}
    for i in range(STEPS):
        row: dict[str, Any] = {"loss": 1.0 / (i + 1), "acc": i / 500,
                               "nested": {"a": i, "b": {"c": i * 2}}}
        if i == 10:
            row["loss"] = math.nan
        if i == 11:
            row["inf_metric"] = math.inf
        if i == 12:
            row["neg_inf"] = -math.inf
        if i % 100 == 0:
            row["hist"] = {"_type": "histogram", "values": [i, 3, 5, 0, 1], "bins": HIST_BINS}
        rows[i] = row
    rows[500] = {"val_loss": 0.5, "val_acc": 0.7}  # two log(step=500) calls merge
    rows[510] = {"val_loss": 0.4, "val_acc": 0.8}
    if resumed_from is not None:
        for i in range(RESUMED_STEPS):
            rows[resumed_from + i] = {"loss": 0.5 + i, "resumed_metric": i}
    return rows


EXPECTED_CONFIG = {"lr": 0.01, "batch_size": 32, "model": {"layers": 3, "act": "relu"},
                   "epochs": 5}


def _is_doc(value: Any) -> bool:
    return isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "__getitem__"))


def same(a: Any, b: Any) -> bool:
    """Deep equality where NaN equals NaN (and 1 == 1.0, as JSON cannot tell them apart)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if _is_doc(a) and _is_doc(b):  # wandb's summary sub-dicts are no Mapping
        keys = list(a.keys())  # no iter(): SummarySubDict has none
        return set(keys) == set(b.keys()) and all(same(a[k], b[k]) for k in keys)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """The keys whose values differ between two documents, with both values."""
    return {k: (a.get(k, "<missing>"), b.get(k, "<missing>"))
            for k in sorted(a.keys() | b.keys()) if not same(a.get(k), b.get(k))}


def user_keys(row: dict[str, Any]) -> dict[str, Any]:
    """A history row without the SDK's bookkeeping (asserted separately)."""
    return {k: v for k, v in row.items() if k not in ("_step", "_runtime", "_timestamp")}


# --- running the SDK ----------------------------------------------------------------------


def sdk_env(srv: RunningServer, workdir: Path, **extra: str) -> dict[str, str]:
    """A clean environment for one SDK process: the server, and every wandb dir in tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        WANDB_BASE_URL=srv.url, WANDB_API_KEY=srv.api_key, WANDB_MODE="online",
        WANDB_DIR=str(workdir), WANDB_CONFIG_DIR=str(workdir / "config"),
        WANDB_CACHE_DIR=str(workdir / "cache"), WANDB_DATA_DIR=str(workdir / "data"),
        WANDB_SILENT="true", WANDB_DISABLE_GIT="true", HOME=str(workdir),
        NO_PROXY="127.0.0.1,localhost", SC_PROJECT=PROJECT, SC_ENTITY=ENTITY,
        SC_STEPS=str(STEPS),
    )
    env.update(extra)
    return env


class Sdk:
    """One SDK interpreter (``python``) driving the scenario script in ``workdir``."""

    def __init__(self, python: Path | str, workdir: Path) -> None:
        self.python = str(python)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.script = workdir / "scenario.py"
        self.script.write_text(SCENARIO)

    def start(self, mode: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], Path]:
        out = self.workdir / f"{mode}.json"
        proc = subprocess.Popen([self.python, str(self.script), mode, str(out)], env=env,
                                cwd=self.workdir, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        return proc, out

    @staticmethod
    def wait(proc: subprocess.Popen[str], out: Path, expect_rc: int = 0) -> dict[str, Any]:
        try:
            stdout, stderr = proc.communicate(timeout=SDK_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        assert proc.returncode == expect_rc, (
            f"SDK process {proc.args} exited {proc.returncode}, expected {expect_rc}:\n"
            f"{stdout[-3000:]}\n{stderr[-5000:]}")
        return dict(json.loads(out.read_text()))


@dataclass
class Logged:
    sdk: str
    store: Store
    server: RunningServer
    main: dict[str, Any]
    resumed: dict[str, Any]
    crash: dict[str, Any]
    workdir: Path


@pytest.fixture
def sdk_python(request: pytest.FixtureRequest) -> str:
    if request.param == "latest":
        return sys.executable
    return str(request.getfixturevalue("legacy_wandb_python"))


@pytest.fixture
def logged(request: pytest.FixtureRequest, sdk_python: str, tmp_path: Path) -> Iterator[Logged]:
    """The three scenario runs, logged by one SDK version into a local `mirror serve`.

    Function-scoped on purpose: each SDK version has exactly one test, so nothing is
    logged twice, and ``pytest -n 2`` can run the two versions side by side (a
    module-scoped fixture would be built once per worker that runs one of its tests).
    """
    store = open_store(tmp_path / "local" / "mirror.db")
    with serve_in_thread(store, authoritative=False, entity=ENTITY) as srv:
        sdk = Sdk(sdk_python, tmp_path / "sdk")
        env = sdk_env(srv, sdk.workdir)
        main_proc = sdk.start("main", env)
        crash_proc = sdk.start("crash", env)
        main = Sdk.wait(*main_proc)
        crash = Sdk.wait(*crash_proc, expect_rc=1)
        resumed = Sdk.wait(*sdk.start("resume", {**env, "SC_RUN_ID": main["id"]}))
        yield Logged(request.node.callspec.params["sdk_python"], store, srv, main, resumed,
                     crash, sdk.workdir)
    store.close()


# --- the checks -----------------------------------------------------------------------------


def check_mirror_api(logged: Logged) -> None:
    """``mirror.Api`` over the local store returns exactly what the script logged."""
    api = mapi.Api(store=logged.store)
    assert logged.main["entity"] == ENTITY and logged.main["project"] == PROJECT
    assert logged.resumed["id"] == logged.main["id"]
    run = api.run(f"{ENTITY}/{PROJECT}/{logged.main['id']}")
    crash = api.run(f"{ENTITY}/{PROJECT}/{logged.crash['id']}")
    assert run.state == "finished"
    assert crash.state == "failed"

    rows = list(run.scan_history())
    steps = [r["_step"] for r in rows]
    resumed_from = 511  # max(_step 510 of the tail, 502 lines - 1) + 1, both SDK versions
    expected = expected_history(resumed_from)
    assert steps == sorted(expected), f"steps logged: {steps[:5]}...{steps[-25:]}"
    for row in rows:
        want = expected[row["_step"]]
        assert same(user_keys(row), want), f"step {row['_step']}: {row} != {want}"
        assert isinstance(row["_runtime"], (int, float))
        assert isinstance(row["_timestamp"], float) and row["_timestamp"] > 1.7e9
    assert math.isnan(rows[10]["loss"]) and rows[11]["inf_metric"] == math.inf
    assert rows[12]["neg_inf"] == -math.inf

    summary = dict(run.summary)
    want_summary = {
        "loss": 0.5 + RESUMED_STEPS - 1, "resumed_metric": RESUMED_STEPS - 1, "resumed": True,
        "acc": 499 / 500, "nested": {"a": 499, "b": {"c": 998}},
        "hist": {"_type": "histogram", "values": [400, 3, 5, 0, 1], "bins": HIST_BINS},
        "inf_metric": math.inf, "neg_inf": -math.inf, "val_loss": 0.4, "val_acc": 0.8,
        "best_loss": 0.001, "extra": {"x": 1}, "note": "hi", "_step": 510 + RESUMED_STEPS,
    }
    assert same({k: summary.get(k) for k in want_summary}, want_summary), summary
    assert run.config == EXPECTED_CONFIG
    assert run.tags == ["baseline", "local"]
    assert run.notes == "first run"
    assert run.group == "grp-a" and run.job_type == "train"

    files = {f.name: f for f in run.files()}
    assert {"notes.txt", "final.txt", "config.yaml", "wandb-summary.json",
            "wandb-metadata.json", "requirements.txt"} <= set(files)
    for name, content in (("notes.txt", b"live notes\n"), ("final.txt", b"final contents\n")):
        target = logged.workdir / "downloads" / logged.main["id"]
        files[name].download(root=str(target), replace=True)
        assert (target / name).read_bytes() == content

    crash_rows = list(crash.scan_history())
    assert [r["_step"] for r in crash_rows] == list(range(CRASH_STEPS))
    assert [r["loss"] for r in crash_rows] == [1.0 / (i + 1) for i in range(CRASH_STEPS)]
    assert crash.summary["loss"] == 1.0 / CRASH_STEPS


def check_queued(logged: Logged) -> None:
    """Both runs are local runs: each has one ``create_run`` op waiting for ``mirror push``."""
    with logged.store.session() as s:
        ops = outbox_store.list_ops(s)
        pks = {store_runs.run_pk(s, ENTITY, PROJECT, r["id"]) for r in (logged.main, logged.crash)}
    assert sorted((op.kind, op.run_pk) for op in ops) == sorted(
        ("create_run", pk) for pk in pks), ("a local run's edits apply to the run itself, "
                                            "not as queued edits of an upstream run", ops)


def mirror_push(store: Store, upstream: RunningServer, home: Path) -> dict[str, Any]:
    """The real command line: ``mirror push --json`` against ``upstream``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIRROR_"))}
    env.update(WANDB_BASE_URL=upstream.url, WANDB_API_KEY=upstream.api_key,
               MIRROR_DB_URL=store.url, MIRROR_HOME=str(home), NO_PROXY="127.0.0.1,localhost")
    proc = subprocess.run([sys.executable, "-m", "mirror.cli", "push", "--json"], env=env,
                          capture_output=True, text=True, timeout=SDK_TIMEOUT, check=False)
    assert proc.returncode == 0, f"mirror push failed:\n{proc.stdout}\n{proc.stderr}"
    return dict(json.loads(proc.stdout))


def check_pushed(logged: Logged, upstream: RunningServer) -> None:
    """The official client reading the authoritative server sees the local runs as logged."""
    local = mapi.Api(store=logged.store)
    official = wandb.Api(overrides={"base_url": upstream.url}, api_key=upstream.api_key,
                         timeout=30)
    for run_id in (logged.main["id"], logged.crash["id"]):
        path = f"{ENTITY}/{PROJECT}/{run_id}"
        mine, theirs = local.run(path), official.run(path)
        assert theirs.state == mine.state
        assert theirs.config == mine.config
        assert not differences(dict(theirs.summary), dict(mine.summary))
        assert theirs.tags == mine.tags and theirs.notes == mine.notes
        assert theirs.group == mine.group and theirs.job_type == mine.job_type
        their_rows = list(theirs.scan_history(page_size=1000))
        my_rows = list(mine.scan_history())
        assert len(their_rows) == len(my_rows)
        for a, b in zip(their_rows, my_rows, strict=True):
            assert same(a, b), f"step {b.get('_step')}: upstream {a} != local {b}"
        assert ({f.name: f.md5 for f in theirs.files()}
                == {f.name: f.md5 for f in mine.files()})


@pytest.mark.slow
@pytest.mark.wandb_client
@pytest.mark.parametrize("sdk_python", ["latest", LEGACY_VERSION], indirect=True)
def test_sdk_logs_into_mirror_serve_and_push_uploads(logged: Logged, tmp_path: Path) -> None:
    """Online logging into the local mirror, then `mirror push` to an authoritative one."""
    check_mirror_api(logged)
    check_queued(logged)

    upstream_store = open_store(tmp_path / "upstream" / "mirror.db")
    try:
        with serve_in_thread(upstream_store, authoritative=True, entity=ENTITY) as upstream:
            report = mirror_push(logged.store, upstream, tmp_path / "push-home")
            assert report["ok"] and report["acked"] == 2 and report["dead"] == 0, report
            check_pushed(logged, upstream)
            with logged.store.session() as s:
                left = outbox_store.list_ops(s, states=["pending", "in_flight", "dead"])
            assert left == []
            assert plan_push(logged.store)["ops"] == 0  # a second push would send nothing
    finally:
        upstream_store.close()


# --- wandb sync (0.22.3's pure-Python sender) ------------------------------------------------


@pytest.mark.slow
@pytest.mark.wandb_client
def test_wandb_sync_of_offline_folder_0_22_3(legacy_wandb_python: Path,  # noqa: F811
                                             tmp_path: Path) -> None:
    """`wandb sync` (the pure-Python sender) of an offline folder into the local mirror."""
    store = open_store(tmp_path / "local" / "mirror.db")
    try:
        with serve_in_thread(store, authoritative=False, entity=ENTITY) as srv:
            sdk = Sdk(legacy_wandb_python, tmp_path / "sdk")
            env = sdk_env(srv, sdk.workdir)
            main = Sdk.wait(*sdk.start("main", {**env, "WANDB_MODE": "offline"}))
            folders = sorted((sdk.workdir / "wandb").glob(f"offline-run-*-{main['id']}"))
            assert len(folders) == 1, list((sdk.workdir / "wandb").iterdir())
            assert srv.request_log.count("graphql") == 0  # offline: nothing was sent
            proc = subprocess.run(
                [str(legacy_wandb_python), "-m", "wandb", "sync", str(folders[0])], env=env,
                cwd=sdk.workdir, capture_output=True, text=True, timeout=SDK_TIMEOUT,
                check=False)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            sent = {op for entry in srv.request_log for op in entry.operations}
            assert {"ProbeServerSettings", "UpsertBucket", "CreateRunFiles"} <= sent
            run = mapi.Api(store=store).run(f"{ENTITY}/{PROJECT}/{main['id']}")
            assert run.state == "finished"
            rows = list(run.scan_history())
            expected = expected_history(None)
            assert [r["_step"] for r in rows] == sorted(expected)
            for row in rows:
                assert same(user_keys(row), expected[row["_step"]]), row
            assert run.config == EXPECTED_CONFIG
            assert run.tags == ["baseline", "local"] and run.notes == "first run"
            assert run.summary["best_loss"] == 0.001 and run.summary["note"] == "hi"
            assert {"notes.txt", "final.txt"} <= {f.name for f in run.files()}
            with store.session() as s:
                assert [op.kind for op in outbox_store.list_ops(s)] == ["create_run"]
    finally:
        store.close()


# --- the sender's schema needs, without any SDK ---------------------------------------------


def test_python_sender_probes_and_server_settings(store: Store) -> None:
    """What 0.22.3's Python sender asks before it uploads anything (protocol 4.2, 4.4):
    introspection of ``ServerSettings`` must list fields, and ``upsertBucket`` must answer
    ``serverSettings { serverMessages }`` (an empty list) and ``inserted``."""
    from mirror.server.graphql_api import execute_graphql

    with serve_in_thread(store, authoritative=False, entity=ENTITY) as srv:
        probe = execute_graphql(srv.ctx, {"query": """
            query ProbeServerSettings {
              ServerSettingsType: __type(name: "ServerSettings") { ...fieldData }
            }
            fragment fieldData on __Type { fields { name } }
        """})
        assert probe["data"]["ServerSettingsType"]["fields"] == [{"name": "serverMessages"}]
        res = execute_graphql(srv.ctx, {"query": """
            mutation UpsertBucket($name: String, $project: String, $entity: String,
                                  $config: JSONString) {
              upsertBucket(input: {name: $name, modelName: $project, entityName: $entity,
                                   config: $config}) {
                bucket { id name historyLineCount project { name entity { name } } }
                inserted
                serverSettings { serverMessages { utfText plainText htmlText messageType
                                                  messageLevel } }
              }
            }""", "variables": {"name": "r1", "project": PROJECT, "entity": None,
                                "config": "{}"}})
        assert "errors" not in res, res
        payload = res["data"]["upsertBucket"]
        assert payload["inserted"] is True
        assert payload["serverSettings"] == {"serverMessages": []}
        assert payload["bucket"]["historyLineCount"] == 0
        assert payload["bucket"]["project"] == {"name": PROJECT, "entity": {"name": ENTITY}}


# --- a run logged here, resumed after its upload (no SDK: the wire calls themselves) ------


def _upsert(srv: RunningServer, **variables: Any) -> dict[str, Any]:
    from mirror.server.graphql_api import execute_graphql

    res = execute_graphql(srv.ctx, {"query": """
        mutation UpsertBucket($id: String, $name: String, $project: String, $entity: String,
                              $config: JSONString, $notes: String) {
          upsertBucket(input: {id: $id, name: $name, modelName: $project, entityName: $entity,
                               config: $config, notes: $notes}) {
            bucket { id name historyLineCount } inserted
          }
        }""", "variables": {"project": PROJECT, "entity": ENTITY, **variables}})
    assert isinstance(res, dict) and "errors" not in res, res
    return dict(res["data"]["upsertBucket"])


def _stream(srv: RunningServer, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
    import requests

    resp = requests.post(f"{srv.url}/files/{ENTITY}/{PROJECT}/{run_id}/file_stream",
                         data=json.dumps(body), auth=("api", srv.api_key), timeout=30)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _rows(start: int, n: int) -> list[str]:
    return [f'{{"loss": {i / 10}, "bad": NaN, "_step": {i}, "_runtime": {i}, '
            f'"_timestamp": 1.7e9}}' for i in range(start, start + n)]


def test_resumed_local_run_is_uploaded_again_with_only_new_lines(tmp_path: Path) -> None:
    from mirror.outbox.replay import PushOptions, push
    from mirror.settings import Settings
    from mirror.upstream.client import WandbClient
    from mirror.upstream.http import RetryPolicy

    local_store = open_store(tmp_path / "local" / "mirror.db")
    up_store = open_store(tmp_path / "up" / "mirror.db")
    config = json.dumps({"lr": {"value": 0.1}, "_wandb": {"value": {"t": {"1": [1]}}}})
    try:
        with serve_in_thread(local_store, authoritative=False, entity=ENTITY) as srv, \
                serve_in_thread(up_store, authoritative=True, entity=ENTITY) as up:
            settings = Settings(home=tmp_path / "home", db_url=local_store.url,
                                base_url=up.url, api_key=up.api_key)
            client = WandbClient(settings, policy=RetryPolicy(max_attempts=3, base_delay=0.001,
                                                               max_delay=0.01, max_elapsed=5.0))
            options = PushOptions(base_delay=0.001, max_delay=0.01, max_wait=2.0)

            def pending() -> list[str]:
                with local_store.session() as s:
                    return [op.kind for op in outbox_store.list_ops(s, states=["pending"])]

            made = _upsert(srv, name="r1", config=config)
            assert made["inserted"] and made["bucket"]["historyLineCount"] == 0
            _stream(srv, "r1", {"files": {"wandb-history.jsonl": {"offset": 0,
                                                                  "content": _rows(0, 50)}}})
            _stream(srv, "r1", {})  # a heartbeat
            done = _stream(srv, "r1", {"complete": True, "exitcode": 0})
            assert done["stopped"] is False
            assert pending() == ["create_run"]
            assert push(local_store, client, options, base_url=up.url).ok
            assert pending() == []
            _stream(srv, "r1", {})  # a heartbeat alone queues nothing
            assert pending() == []
            first_bytes = sum(e.request_bytes for e in up.request_log.entries("file_stream"))
            seen = len(up.request_log.entries("file_stream"))

            # The SDK resumes the run: RunResumeStatus gives the id, then UpsertBucket(id=...)
            # with the merged config and 10 more lines at offset 50.
            storage_id = made["bucket"]["id"]
            again = _upsert(srv, id=storage_id, name="r1", config=config, notes="resumed")
            assert not again["inserted"] and again["bucket"]["historyLineCount"] == 50
            assert pending() == ["create_run"], "a local run's edits are not upstream edits"
            _stream(srv, "r1", {"files": {"wandb-history.jsonl": {"offset": 50,
                                                                  "content": _rows(50, 10)}}})
            _stream(srv, "r1", {"complete": True, "exitcode": 1})
            assert pending() == ["create_run"]  # one upload stands for all of it
            assert push(local_store, client, options, base_url=up.url).ok
            client.close()

            official = wandb.Api(overrides={"base_url": up.url}, api_key=up.api_key)
            run = official.run(f"{ENTITY}/{PROJECT}/r1")
            assert run.state == "failed" and run.notes == "resumed"
            rows = list(run.scan_history())
            assert [r["_step"] for r in rows] == list(range(60))
            assert all(math.isnan(r["bad"]) for r in rows)
            sent = up.request_log.entries("file_stream")[seen:]
            assert sum(e.request_bytes for e in sent) * 3 < first_bytes, (
                "the second upload re-sent lines upstream already held")
    finally:
        local_store.close()
        up_store.close()
