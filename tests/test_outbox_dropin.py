"""The offline drop-in: the official client edits runs through `mirror serve` (local mode).

The local store is served in the server's default, non-authoritative mode; the official
``wandb`` client, pointed at it, runs the guide's edits. They must become outbox ops of
the local store (upstream rows untouched), show in the local view, and reach the real
upstream with ``mirror push``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_outbox_push import E, P, World

from mirror.server.testing import RunningServer, serve_in_thread
from mirror.store import runs as store_runs

pytestmark = pytest.mark.wandb_client


@pytest.fixture
def dropin(tmp_path: Path) -> Iterator[tuple[World, RunningServer, Any]]:
    wandb = pytest.importorskip("wandb")
    world = World(tmp_path, runs=2, files=2)
    local_server = serve_in_thread(world.local, authoritative=False)
    api = wandb.Api(overrides={"base_url": local_server.url}, api_key=local_server.api_key,
                    timeout=30)
    try:
        yield world, local_server, api
    finally:
        local_server.stop()
        world.close()


def test_official_client_edits_become_outbox_ops_then_reach_upstream(
        dropin: tuple[World, RunningServer, Any]) -> None:
    world, _local_server, api = dropin
    rid = world.run_ids[0]
    before = world.remote(rid)
    run = api.run(f"{E}/{P}/{rid}")
    run.summary["dropin"] = 1
    run.summary.update()
    run.config["k"] = 2
    run.tags.append("dropin")
    run.notes = "edited through mirror serve"
    run.update()
    for f in run.files():
        if f.name == "f0.txt":
            f.delete()

    kinds = sorted(op.kind for op in world.ops(["pending"]))
    assert kinds == ["config", "file_delete", "meta", "summary", "tags"], kinds
    with world.local.session() as s:  # upstream truth in the local store: untouched
        pk = store_runs.run_pk(s, E, P, rid)
        assert pk is not None
        row = store_runs.get_run_by_pk(s, pk)
    assert row is not None and "dropin" not in (row.summary or {})
    assert world.remote(rid).summary == before.summary  # nothing sent upstream yet

    # The official client reading the drop-in again sees its edits at once.
    import wandb

    fresh = wandb.Api(overrides={"base_url": _local_server.url},
                      api_key=_local_server.api_key, timeout=30).run(f"{E}/{P}/{rid}")
    assert fresh.summary["dropin"] == 1 and fresh.config["k"] == 2
    assert "dropin" in fresh.tags and fresh.notes == "edited through mirror serve"
    assert [f.name for f in fresh.files()] == ["f1.txt"]

    view = world.run(rid)  # mirror.Api on the same store sees the edits at once
    assert view.summary["dropin"] == 1 and view.config["k"] == 2
    assert "dropin" in view.tags and view.notes == "edited through mirror serve"
    assert [f.name for f in view.files()] == ["f1.txt"]

    report = world.push()
    assert report.ok, report.as_dict()
    remote = world.remote(rid)
    assert remote.summary["dropin"] == 1 and remote.config["k"]["value"] == 2
    assert "dropin" in remote.tags and remote.notes == "edited through mirror serve"
    assert set(world.remote_files(rid)) == {"f1.txt"}
    assert remote.summary["m0"] == before.summary["m0"]  # upstream's keys untouched


def test_runs_not_known_upstream_are_local_truth(dropin: tuple[World, RunningServer, Any],
                                                 ) -> None:
    """A run created through the drop-in exists only locally: edits apply to its row, and
    a ``create_run`` op stands for its upload."""
    world, local_server, _api = dropin
    from mirror.upstream.client import WandbClient

    client = WandbClient(_settings(world, local_server))
    try:
        (created,) = client.upsert_buckets([{"name": "newrun01", "modelName": P,
                                             "entityName": E, "notes": "one"}])
        assert created.ok and created.inserted
        (edited,) = client.upsert_buckets([{"name": "newrun01", "modelName": P,
                                            "entityName": E, "notes": "two"}])
        assert edited.ok and edited.bucket["notes"] == "two"
    finally:
        client.close()
    ops = world.ops()
    assert [op.kind for op in ops] == ["create_run"]
    with world.local.session() as s:
        rec = store_runs.get_run(s, E, P, "newrun01")
    assert rec is not None and rec.notes == "two" and rec.source == "local"


def _settings(world: World, srv: RunningServer) -> Any:
    from mirror.settings import Settings

    return Settings(home=world.settings.home, db_url=world.local.url, base_url=srv.url,
                    api_key=srv.api_key)


def test_run_deletion_is_refused_in_local_mode(dropin: tuple[World, RunningServer, Any]) -> None:
    world, local_server, _api = dropin
    from mirror.upstream.client import WandbClient

    client = WandbClient(_settings(world, local_server))
    try:
        result = client.graphql("mutation D($id: ID!) { deleteRun(input: {id: $id}) "
                                "{ clientMutationId } }",
                                {"id": world.remote(world.run_ids[0]).storage_id})
    finally:
        client.close()
    assert result.errors and "--authoritative" in result.errors[0]["message"]


def test_official_client_upload_through_the_dropin_is_queued(
        dropin: tuple[World, RunningServer, Any], tmp_path: Path) -> None:
    world, _local_server, api = dropin
    rid = world.run_ids[0]
    path = tmp_path / "up.txt"
    path.write_text("uploaded through the drop-in")
    api.run(f"{E}/{P}/{rid}").upload_file(str(path), root=str(tmp_path))
    assert [op.kind for op in world.ops(["pending"])] == ["file_put"]
    with world.local.session() as s:  # upstream truth in the local store: untouched
        pk = store_runs.run_pk(s, E, P, rid)
        assert pk is not None and store_runs.get_file(s, pk, "up.txt") is None
    assert "up.txt" not in world.remote_files(rid)
    assert world.run(rid).file("up.txt").size == len("uploaded through the drop-in")
    # The official client reading the drop-in sees its upload at once, bytes included.
    got = api.run(f"{E}/{P}/{rid}").file("up.txt").download(root=str(tmp_path / "dl"))
    assert Path(got.name).read_text() == "uploaded through the drop-in"
    assert world.push().ok and "up.txt" in world.remote_files(rid)
