"""Every edit example of W&B's import/export guide: offline, at once locally, then pushed.

The guide's code runs verbatim against the local mirror with only the import line changed
(``import mirror.api as wandb``) and the network refused; each edit must show in the local
store at once (read-your-writes). Then ``mirror push`` (the CLI command) replays the queue
to a W&B-compatible server, and the official ``wandb`` client, reading that server, must
see exactly the result the local view showed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_api_guide import ENTITY, PROJECT, fill
from typer.testing import CliRunner

import mirror.api as wandb  # the only change to the guide's code: was `import wandb`
from mirror.commands.push import app as push_app
from mirror.outbox.status import outbox_status
from mirror.server.testing import serve_in_thread
from mirror.settings import Settings
from mirror.store import open_store
from mirror.sync.engine import SyncOptions
from mirror.sync.runner import sync
from mirror.upstream.client import WandbClient
from mirror.upstream.http import RetryPolicy

pytestmark = pytest.mark.wandb_client

RUN = f"{ENTITY}/{PROJECT}/guide001"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An upstream store with the guide's runs, and a local store synced from it."""
    root = tmp_path_factory.mktemp("outbox-guide")
    with open_store(root / "up" / "mirror.db") as up:
        fill(up)
        with serve_in_thread(up) as srv, open_store(root / "home" / "mirror.db") as local:
            settings = Settings(home=root / "home", db_url=local.url, base_url=srv.url,
                                api_key=srv.api_key)
            client = WandbClient(settings, policy=RetryPolicy(base_delay=0.01, max_delay=0.05))
            report = sync(local, settings, [f"{ENTITY}/{PROJECT}"], SyncOptions(),
                          client=client)
            client.close()
            assert report.ok, report.as_dict()
    return root


class Guide:
    """One test's world: a fresh copy of both stores, the server, a push, the judge."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.up = open_store(root / "up" / "mirror.db")
        self.srv = serve_in_thread(self.up)
        self._net = pytest.MonkeyPatch()
        self.pushed: list[Any] = []  # the request log entries of the last push

    def offline(self) -> None:
        def refuse(*args: Any, **kwargs: Any) -> None:
            raise OSError("network access while offline")

        self._net.setattr(socket.socket, "connect", refuse)
        self._net.setattr(socket, "create_connection", refuse)

    def online(self) -> None:
        self._net.undo()

    def push(self) -> dict[str, Any]:
        """`mirror push --json`, the command users run."""
        before = len(self.srv.request_log)
        result = CliRunner().invoke(push_app, ["--json"], catch_exceptions=False)
        self.pushed = self.srv.request_log.entries()[before:]
        assert result.exit_code == 0, result.output
        return dict(json.loads(result.stdout))

    def judge(self) -> Any:
        """The official client, reading the server."""
        import wandb as real_wandb

        api = real_wandb.Api(overrides={"base_url": self.srv.url}, api_key=self.srv.api_key,
                             timeout=30)
        return api.run(RUN)

    def close(self) -> None:
        self._net.undo()
        self.srv.stop()
        self.up.close()


@pytest.fixture
def guide(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Guide]:
    root = tmp_path / "world"
    shutil.copytree(template, root)
    (root / "work").mkdir()
    g = Guide(root)
    monkeypatch.setenv("MIRROR_HOME", str(root / "home"))
    monkeypatch.setenv("WANDB_BASE_URL", g.srv.url)
    monkeypatch.setenv("WANDB_API_KEY", g.srv.api_key)
    monkeypatch.chdir(root / "work")
    g.offline()
    try:
        yield g
    finally:
        g.close()


def _local_run() -> Any:
    api = wandb.Api()
    return api.run(RUN)


def snapshot(r: Any) -> dict[str, Any]:
    """Everything an edit of the guide can touch, as plain JSON, for either client."""
    files = {f.name: (f.size, f.md5) for f in r.files()}
    return json.loads(json.dumps({
        "summary": dict(r.summary._json_dict), "config": dict(r.config),
        "tags": sorted(r.tags), "name": r.name, "notes": r.notes or None,
        "group": r.group or None, "job_type": r.job_type or None, "files": files,
    }, sort_keys=True))


def _after_push(guide: Guide, check: Callable[[Any], None]) -> Any:
    """Check the local view, push, check the official client's view the same way; then
    the official client must see EXACTLY what the local view showed before the push."""
    check(_local_run())
    mine = snapshot(_local_run())
    guide.online()
    report = guide.push()
    assert report["ok"] and report["acked"] >= 1 and not report["conflicts"], report
    with open_store(guide.root / "home" / "mirror.db") as local:
        status = outbox_status(local)
    assert status["pending"] == 0 and status["dead_letters"] == 0
    theirs = guide.judge()
    check(theirs)
    assert snapshot(theirs) == mine
    check(_local_run())  # still shown locally after the push (acknowledged, overlaid)
    assert snapshot(_local_run()) == mine
    return theirs


def test_update_metrics_after_the_run_finished(guide: Guide) -> None:
    numpy_array = np.arange(10.0)
    api = wandb.Api()

    run = api.run("alice/cifar/guide001")
    run.summary["accuracy"] = 0.9
    run.summary["accuracy_histogram"] = wandb.Histogram(numpy_array)
    run.summary.update()

    expected_hist = wandb.Histogram(np.arange(10.0)).to_json()

    def check(r: Any) -> None:
        assert r.summary["accuracy"] == 0.9
        hist = dict(r.summary["accuracy_histogram"])
        assert hist["_type"] == "histogram"
        assert hist["values"] == expected_hist["values"]
        assert hist["bins"] == pytest.approx(expected_hist["bins"])
        assert r.summary["loss"] == 0.041 and r.summary["val"] == 525  # untouched keys stay

    _after_push(guide, check)


def test_rename_a_metric_of_a_finished_run(guide: Guide) -> None:
    api = wandb.Api()

    run = api.run("alice/cifar/guide001")
    run.summary["new_name"] = run.summary["val"]
    del run.summary["val"]
    run.summary.update()

    def check(r: Any) -> None:
        assert r.summary["new_name"] == 525 and "val" not in r.summary
        assert r.summary["loss"] == 0.041

    _after_push(guide, check)


def test_update_the_config_of_a_run(guide: Guide) -> None:
    updated_value = 7
    api = wandb.Api()

    run = api.run("alice/cifar/guide001")
    run.config["key"] = updated_value
    run.update()

    def check(r: Any) -> None:
        assert r.config == {"n_epochs": 5, "key": 7}

    theirs = _after_push(guide, check)
    assert theirs.rawconfig["_wandb"]["cli_version"] == "0.31.0"  # internal key kept


def test_tags_name_notes_group_job_type_then_update(guide: Guide) -> None:
    api = wandb.Api()

    run = api.run("alice/cifar/guide001")
    run.tags.append("reviewed")
    run.tags.remove("guide")
    run.name = "renamed-run"
    run.notes = "checked by hand"
    run.group = "ablation"
    run.job_type = "eval"
    run.update()

    def check(r: Any) -> None:
        assert r.tags == ["reviewed"]
        assert r.name == "renamed-run" and r.notes == "checked by hand"
        assert r.group == "ablation" and r.job_type == "eval"

    _after_push(guide, check)


def test_upload_a_file_to_a_finished_run(guide: Guide) -> None:
    Path("file_name.extension").write_text("notes")
    api = wandb.Api()

    run = api.run("alice/cifar/guide001")
    run.upload_file("file_name.extension")

    def check(r: Any) -> None:
        f = r.file("file_name.extension")
        assert f.size == 5
        assert f.md5 == base64.b64encode(hashlib.md5(b"notes").digest()).decode()

    _after_push(guide, check)
    theirs = guide.judge()
    target = guide.root / "download"
    theirs.file("file_name.extension").download(root=str(target))
    assert (target / "file_name.extension").read_text() == "notes"


def test_delete_files_with_an_extension(guide: Guide) -> None:
    api = wandb.Api()

    run = api.run("alice/cifar/guide001")

    extension = ".png"
    files = run.files()
    for file in files:
        if file.name.endswith(extension):
            file.delete()

    def check(r: Any) -> None:
        assert sorted(f.name for f in r.files()) == [
            "model-best.h5", "output.log", "wandb-metadata.json"]

    _after_push(guide, check)


def test_update_summary_metrics(guide: Guide) -> None:
    val = 0.5
    api = wandb.Api()
    summary = api.run("alice/cifar/guide001").summary

    summary.update({"key": val})

    def check(r: Any) -> None:
        assert r.summary["key"] == 0.5 and r.summary["val"] == 525

    _after_push(guide, check)


def test_all_edits_of_the_guide_in_one_push(guide: Guide) -> None:
    """The six examples on one run, pushed together: one read, one write, the files."""
    Path("file_name.extension").write_text("notes")
    api = wandb.Api()
    run = api.run("alice/cifar/guide001")
    run.summary["accuracy"] = 0.9
    run.summary.update()
    run.summary["new_name"] = run.summary["val"]
    del run.summary["val"]
    run.summary.update()
    run.config["key"] = 7
    run.update()
    run.upload_file("file_name.extension")
    for file in run.files():
        if file.name.endswith(".png"):
            file.delete()
    run.summary.update({"key": 0.5})

    def check(r: Any) -> None:
        assert {k: r.summary[k] for k in ("accuracy", "new_name", "key")} == {
            "accuracy": 0.9, "new_name": 525, "key": 0.5}
        assert "val" not in r.summary and r.config == {"n_epochs": 5, "key": 7}
        assert sorted(f.name for f in r.files()) == [
            "file_name.extension", "model-best.h5", "output.log", "wandb-metadata.json"]

    _after_push(guide, check)
    ops = [e.operations[0] if e.operations else e.route for e in guide.pushed]
    assert ops.count("RunsByName") == 1 and ops.count("UpsertBuckets") == 1, ops
    assert ops.count("CreateRunFiles") == 1 and ops.count("storage_put") == 1, ops
    assert ops.count("deleteFiles") == 1, ops
