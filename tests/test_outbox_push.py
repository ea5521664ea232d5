"""`mirror push` against the project's W&B-compatible server: batching, merging, outcomes.

Upstream is a real store behind a real HTTP server (authoritative: it plays W&B); the
local store is a real migrated SQLite file synced from it; edits are made with
``mirror.Api`` as a user would; the server's request log says exactly what crossed the
wire, and the upstream store (or the official client) says what the server now holds.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import mirror.api as mapi
from mirror.cli import app as mirror_app
from mirror.commands.outbox import outbox_app
from mirror.commands.push import app as push_app
from mirror.outbox.replay import PushOptions, PushReport, push
from mirror.outbox.status import outbox_status
from mirror.records import RunRecord
from mirror.server.faults import Fault, FaultPlan
from mirror.server.http import store_uploaded_file
from mirror.server.seed import generate
from mirror.server.testing import RunningServer, serve_in_thread
from mirror.settings import Settings
from mirror.store import open_store
from mirror.store import outbox as outbox_store
from mirror.store import runs as store_runs
from mirror.sync.engine import SyncOptions
from mirror.sync.runner import SyncReport, sync
from mirror.upstream.client import WandbClient
from mirror.upstream.http import RetryPolicy

E, P = "team", "proj"


def fast_policy() -> RetryPolicy:
    return RetryPolicy(max_attempts=6, base_delay=0.001, max_delay=0.01, max_elapsed=10.0)


def fast_options(**kw: Any) -> PushOptions:
    base: dict[str, Any] = {"base_delay": 0.001, "max_delay": 0.01, "max_wait": 2.0}
    return PushOptions(**{**base, **kw})


class World:
    """An upstream server and a local store synced from it, plus the tools tests use."""

    def __init__(self, root: Path, runs: int = 4, files: int = 2) -> None:
        self.root = root
        self.up = open_store(root / "up" / "mirror.db")
        gen = generate(self.up, runs=runs, steps=3, keys=2, seed=7, entity=E, project=P)
        self.run_ids = gen.run_ids
        for run_id in self.run_ids:
            for j in range(files):
                data = f"{run_id} file {j}".encode()
                store_uploaded_file(self.up, E, P, run_id, f"f{j}.txt", io.BytesIO(data),
                                    size=len(data))
        self.srv: RunningServer = serve_in_thread(self.up)
        self.local = open_store(root / "home" / "mirror.db")
        self.settings = Settings(home=root / "home", db_url=self.local.url,
                                 base_url=self.srv.url, api_key=self.srv.api_key,
                                 entity=E, project=P)
        self.client = WandbClient(self.settings, policy=fast_policy())
        self.other = WandbClient(self.settings, policy=fast_policy())  # another W&B user
        assert self.pull().ok
        self._mark = 0

    # --- local side -------------------------------------------------------------------

    def api(self) -> mapi.Api:
        return mapi.Api(store=self.local, settings=self.settings)

    def run(self, run_id: str) -> mapi.Run:
        return self.api().run(f"{E}/{P}/{run_id}")

    def pull(self) -> SyncReport:
        return sync(self.local, self.settings, [f"{E}/{P}"], SyncOptions(full=True),
                    client=self.client)

    def push(self, client: Any = None, **kw: Any) -> PushReport:
        self.mark()
        return push(self.local, client or self.client, fast_options(**kw),
                    base_url=self.srv.url)

    def ops(self, states: list[str] | None = None) -> list[outbox_store.OpRecord]:
        with self.local.session() as s:
            return outbox_store.list_ops(s, states=states)

    # --- upstream side ----------------------------------------------------------------

    def remote(self, run_id: str) -> RunRecord:
        """What the server holds (its store), bypassing HTTP."""
        with self.up.session() as s:
            rec = store_runs.get_run(s, E, P, run_id)
        assert rec is not None
        return rec

    def remote_files(self, run_id: str) -> dict[str, str | None]:
        with self.up.session() as s:
            pk = store_runs.run_pk(s, E, P, run_id)
            assert pk is not None
            return {f.name: f.md5 for f in store_runs.list_files(s, pk)}

    def upstream_edit(self, run_id: str, *, summary: dict[str, Any] | None = None,
                      tags: list[str] | None = None, notes: str | None = None) -> None:
        """Another user edits the run through the server (read-modify-write, as wandb)."""
        (rec,) = self.other.get_runs([(E, P, run_id)])
        assert rec is not None
        entry: dict[str, Any] = {"id": rec.storage_id}
        if summary is not None:
            entry["summaryMetrics"] = {**(rec.summary or {}), **summary}
        if tags is not None:
            entry["tags"] = tags
        if notes is not None:
            entry["notes"] = notes
        (outcome,) = self.other.upsert_buckets([entry])
        assert outcome.ok, outcome.error

    # --- the wire ---------------------------------------------------------------------

    def mark(self) -> None:
        self._mark = len(self.srv.request_log)

    def sent(self) -> list[str]:
        """Operation (or route) of every request since the last mark."""
        return [e.operations[0] if e.operations and e.operations[0] else e.route
                for e in self.srv.request_log.entries()[self._mark:]]

    def close(self) -> None:
        self.client.close()
        self.other.close()
        self.srv.stop()
        self.local.close()
        self.up.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


# --- batching -----------------------------------------------------------------------------


def edit_many(w: World, per_run: int = 10, tag: str = "t") -> int:
    """``per_run`` edits on every run, through mirror.Api; returns how many."""
    api = w.api()
    n = 0
    for i, run_id in enumerate(w.run_ids):
        run = api.run(f"{E}/{P}/{run_id}")
        for k in range(per_run - 4):
            run.summary[f"s{k}"] = i * 100 + k
            run.summary.update()
            n += 1
        run.config["lr"] = 0.001 * (i + 1)
        run.update()
        run.config["wd"] = i
        run.update()
        run.tags.append(f"{tag}{i % 3}")
        run.update()
        run.notes = f"note {i}"
        run.update()
        n += 4
    return n


def test_1000_edits_over_100_runs_take_at_most_6_requests(tmp_path: Path) -> None:
    w = World(tmp_path, runs=100, files=0)
    try:
        assert edit_many(w) == 1000
        assert len(w.ops(["pending"])) == 1000
        report = w.push()
        assert report.ok and report.coalesced == 600, report.as_dict()
        sent = w.sent()
        assert len(sent) <= 6, sent
        assert sent.count("UpsertBuckets") == 2 and sent.count("RunsByName") == 2
        for i, run_id in enumerate(w.run_ids):
            rec = w.remote(run_id)
            assert {f"s{k}": rec.summary[f"s{k}"] for k in range(6)} == \
                {f"s{k}": i * 100 + k for k in range(6)}
            assert rec.config["lr"]["value"] == 0.001 * (i + 1) and rec.config["wd"]["value"] == i
            assert rec.tags == ["bench", f"t{i % 3}"] and rec.notes == f"note {i}"
            assert "m0" in rec.summary  # upstream's own keys survive the full-document write
    finally:
        w.close()


@pytest.mark.wandb_client
def test_the_official_client_needs_200_upserts_for_the_same_edits(tmp_path: Path) -> None:
    """The baseline of the batching claim: wandb.Api, run by run, at its most frugal (all
    of a run's edits, then one ``run.update()``, which sends two upsertBucket)."""
    wandb = pytest.importorskip("wandb")
    w = World(tmp_path, runs=100, files=0)
    try:
        api = wandb.Api(overrides={"base_url": w.srv.url}, api_key=w.srv.api_key, timeout=30)
        w.mark()
        for i, run_id in enumerate(w.run_ids):
            run = api.run(f"{E}/{P}/{run_id}")
            for k in range(6):
                run.summary[f"s{k}"] = i * 100 + k
            run.config["lr"] = 0.001 * (i + 1)
            run.config["wd"] = i
            run.tags.append(f"t{i % 3}")
            run.notes = f"note {i}"
            run.update()
        sent = w.sent()
        assert sent.count("UpsertBucket") >= 200, sent[:10]
        assert w.remote(w.run_ids[5]).summary["s3"] == 503
    finally:
        w.close()


# --- no lost update -----------------------------------------------------------------------


def test_conflict_is_parked_other_keys_go_through_untouched_upstream_keys_survive(
        world: World) -> None:
    rid = world.run_ids[0]
    run = world.run(rid)
    run.summary["a"] = 1
    run.summary["b"] = 2
    run.summary.update()
    run.tags.append("mine")
    run.update()
    # Meanwhile upstream: someone sets a (which we also edited) and c (which we did not).
    world.upstream_edit(rid, summary={"a": 9, "c": 5}, tags=["bench", "theirs"])

    report = world.push()
    assert report.conflicts == 1 and not report.dead, report.as_dict()
    remote = world.remote(rid)
    assert remote.summary["a"] == 9  # not overwritten
    assert remote.summary["b"] == 2  # our other key went through
    assert remote.summary["c"] == 5  # upstream's change to an untouched key survived
    assert remote.tags == ["bench", "theirs", "mine"]  # tag deltas merge, never conflict
    status = outbox_status(world.local)
    assert status["conflicts"] == 1 and status["pending"] == 0
    assert mirror_status(world)["outbox"]["conflicts"] == 1  # `mirror status` shows it
    human = CliRunner().invoke(mirror_app, ["status", "--store", str(world.local.path)])
    assert human.exit_code == 0 and "outbox conflicts: 1" in human.output, human.output
    (conflict,) = [op for op in world.ops() if op.payload.get("conflicted")]
    with world.local.session() as s:
        (c,) = outbox_store.list_conflicts(s, op_id=conflict.id)
    assert (c.key, c.base, c.local, c.remote) == ("a", [], [1], [9])

    # The view shows upstream's value for the conflicted key, ours for the others.
    world.pull()
    view = world.run(rid)
    assert view.summary["a"] == 9 and view.summary["b"] == 2

    # --ours: queued again on top of upstream's value, pushed, applied.
    result = CliRunner().invoke(outbox_app, ["resolve", str(conflict.id), "--ours", "--json",
                                             "--store", str(world.local.path)])
    assert result.exit_code == 0, result.output
    assert world.run(rid).summary["a"] == 1  # shown at once
    assert world.push().ok
    assert world.remote(rid).summary["a"] == 1 and world.remote(rid).summary["c"] == 5
    assert outbox_status(world.local)["conflicts"] == 0
    assert mirror_status(world)["outbox"]["conflicts"] == 0


def mirror_status(world: World) -> dict[str, Any]:
    """`mirror status --json`, the command users run."""
    result = CliRunner().invoke(mirror_app, ["status", "--json", "--store",
                                             str(world.local.path)])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_conflict_resolved_theirs_keeps_upstream_value(world: World) -> None:
    rid = world.run_ids[1]
    run = world.run(rid)
    run.summary["a"] = 1
    run.summary.update()
    world.upstream_edit(rid, summary={"a": 9})
    report = world.push()
    assert report.conflicts == 1
    (op,) = world.ops(["conflict"])  # every key of the op conflicted: the op is parked
    result = CliRunner().invoke(outbox_app, ["resolve", str(op.id), "--theirs",
                                             "--store", str(world.local.path)])
    assert result.exit_code == 0, result.output
    assert world.ops(["conflict"]) == [] and outbox_status(world.local)["conflicts"] == 0
    assert mirror_status(world)["outbox"]["conflicts"] == 0
    world.pull()
    assert world.run(rid).summary["a"] == 9 and world.remote(rid).summary["a"] == 9
    assert world.push().ok and world.sent() == []  # nothing left to send


def test_same_edit_made_upstream_is_already_done_not_a_conflict(world: World) -> None:
    rid = world.run_ids[0]
    run = world.run(rid)
    run.summary["a"] = 1
    run.summary.update()
    world.upstream_edit(rid, summary={"a": 1})
    report = world.push()
    assert report.ok and report.already == 1 and report.written == 0
    assert "UpsertBuckets" not in world.sent()  # nothing to write


def test_coalesced_keys_keep_the_earliest_base(world: World) -> None:
    """a: 0 -> 1 -> 2 locally while upstream moved a: 0 -> 9: one conflict, not a write."""
    rid = world.run_ids[0]
    run = world.run(rid)
    run.summary["a"] = 1
    run.summary.update()
    world.upstream_edit(rid, summary={"a": 9})
    world.pull()  # the view keeps the pending edit (a pull never overwrites it)
    assert world.run(rid).summary["a"] == 1
    run = world.run(rid)
    run.summary["a"] = 2
    run.summary.update()
    report = world.push()
    assert report.coalesced == 1 and report.conflicts == 1
    with world.local.session() as s:
        (c,) = outbox_store.list_conflicts(s)
    assert (c.base, c.local, c.remote) == ([], [2], [9])
    assert world.remote(rid).summary["a"] == 9


# --- outcomes ---------------------------------------------------------------------------


def test_429_waits_exactly_retry_after_and_goes_through(world: World) -> None:
    rid = world.run_ids[0]
    run = world.run(rid)
    run.summary["a"] = 1
    run.summary.update()
    world.srv.faults = FaultPlan([Fault(route="graphql", kind="429", operation="UpsertBuckets",
                                        calls=[1, 2], retry_after=0.25)])
    # No in-call retries: the outbox's own state machine must wait out the Retry-After.
    single = WandbClient(world.settings, policy=RetryPolicy(max_attempts=1))
    try:
        report = world.push(client=single, max_wait=5.0)
    finally:
        single.close()
    assert report.ok, report.as_dict()
    statuses = [e.status for e in world.srv.request_log.entries(operation="UpsertBuckets")]
    assert statuses == [429, 429, 200]
    times = [e.time for e in world.srv.request_log.entries(operation="UpsertBuckets")]
    assert times[1] - times[0] >= 0.24 and times[2] - times[1] >= 0.24
    assert world.remote(rid).summary["a"] == 1


def test_transient_outage_leaves_ops_for_retry_with_backoff(world: World) -> None:
    rid = world.run_ids[0]
    run = world.run(rid)
    run.summary["a"] = 1
    run.summary.update()
    world.srv.faults = FaultPlan([Fault(route="*", kind="503")])
    report = world.push(max_wait=0.0)
    assert not report.ok and report.retrying == 1
    (op,) = world.ops(["retry"])
    assert op.attempts == 1 and op.next_attempt_at is not None and "503" in (op.last_error or "")
    world.srv.faults = FaultPlan()
    assert world.push(max_wait=1.0).ok and world.remote(rid).summary["a"] == 1


def test_attempt_budget_turns_a_permanent_outage_into_a_dead_letter(world: World) -> None:
    run = world.run(world.run_ids[0])
    run.summary["a"] = 1
    run.summary.update()
    world.srv.faults = FaultPlan([Fault(route="*", kind="500")])
    report = world.push(max_attempts=3, max_wait=2.0)
    assert report.dead == 1 and "gave up after 3 attempts" in report.errors[0]
    (op,) = world.ops(["failed"])
    assert "gave up" in (op.last_error or "")


def test_401_pauses_the_queue_and_loses_nothing(world: World) -> None:
    run = world.run(world.run_ids[0])
    run.summary["a"] = 1
    run.summary.update()
    bad = Settings(home=world.settings.home, db_url=world.local.url, base_url=world.srv.url,
                   api_key="x" * 48)
    wrong = WandbClient(bad, policy=fast_policy())
    try:
        report = world.push(client=wrong)
    finally:
        wrong.close()
    assert report.paused is not None and "401" in report.paused and not report.ok
    (op,) = world.ops()
    assert op.state == "pending" and op.attempts == 0
    assert outbox_status(world.local)["last_push"]["paused"] == report.paused
    assert world.push().ok and world.remote(world.run_ids[0]).summary["a"] == 1


def test_a_dead_letter_never_blocks_other_runs(world: World) -> None:
    gone, fine = world.run_ids[0], world.run_ids[1]
    for rid in (gone, fine):
        run = world.run(rid)
        run.summary["a"] = 1
        run.summary.update()
    storage_id = world.remote(gone).storage_id
    world.other.graphql("mutation D($id: ID!) { deleteRun(input: {id: $id}) "
                        "{ clientMutationId } }", {"id": storage_id})
    report = world.push()
    assert report.dead == 1 and report.acked == 1, report.as_dict()
    assert "does not exist upstream" in report.errors[0]
    assert world.remote(fine).summary["a"] == 1
    (dead,) = world.ops(["failed"])
    runner = CliRunner()
    args = ["--store", str(world.local.path)]
    assert runner.invoke(outbox_app, ["retry", str(dead.id), *args]).exit_code == 0
    assert world.push().dead == 1  # still gone: dead again, with its reason
    out = runner.invoke(outbox_app, ["discard", str(dead.id), "--yes", *args])
    assert out.exit_code == 0 and world.ops(["failed"]) == []


def test_ambiguous_write_is_read_back_never_resent(world: World) -> None:
    """The server applies the upsert, then the connection drops before the answer."""
    rid = world.run_ids[0]
    run = world.run(rid)
    run.summary["a"] = 1
    run.tags.append("once")
    run.update()
    world.srv.faults = FaultPlan([Fault(route="graphql", kind="drop_after",
                                        operation="UpsertBuckets", calls=[1])])
    report = world.push()
    assert report.ok and report.already == 2 and report.written == 0, report.as_dict()
    assert world.sent() == ["RunsByName", "UpsertBuckets", "RunsByName"]
    assert world.remote(rid).tags == ["bench", "once"] and world.remote(rid).summary["a"] == 1


def test_ambiguous_file_delete_is_read_back(world: World) -> None:
    rid = world.run_ids[0]
    world.run(rid).file("f0.txt").delete()
    world.srv.faults = FaultPlan([Fault(route="graphql", kind="drop_after",
                                        operation="deleteFiles", calls=[1])])
    report = world.push()
    assert report.ok, report.as_dict()
    assert world.sent().count("deleteFiles") == 1 and "f0.txt" not in world.remote_files(rid)


def test_ambiguous_upload_is_read_back_never_resent(world: World, tmp_path: Path) -> None:
    """The PUT lands, then the connection drops: the next attempt lists the file, finds
    our md5 and acknowledges it; the bytes are never sent twice."""
    rid = world.run_ids[0]
    (tmp_path / "new.txt").write_text("new")
    world.run(rid).upload_file(str(tmp_path / "new.txt"), root=str(tmp_path))
    world.srv.faults = FaultPlan([Fault(route="storage_put", kind="drop_after", calls=[1])])
    report = world.push()
    assert report.ok and report.already == 1, report.as_dict()
    assert world.sent().count("storage_put") == 1 and "new.txt" in world.remote_files(rid)


def test_runs_still_running_upstream_are_held_unless_forced(world: World) -> None:
    rid = world.run_ids[0]
    with world.up.transaction() as s:
        pk = store_runs.run_pk(s, E, P, rid)
        assert pk is not None
        store_runs.update_run(s, pk, state="running")
    run = world.run(rid)
    run.summary["a"] = 1
    run.summary.update()
    report = world.push()
    assert report.held == 1 and "still running upstream" in report.warnings[0]
    assert "a" not in world.remote(rid).summary and world.ops()[0].state == "held"
    assert world.push().held == 1  # re-checked every push
    result = CliRunner().invoke(push_app, ["--force", "--json", "--store",
                                           str(world.local.path)],
                                env={"WANDB_BASE_URL": world.srv.url,
                                     "WANDB_API_KEY": world.srv.api_key})
    assert result.exit_code == 0, result.output
    assert world.remote(rid).summary["a"] == 1


# --- files --------------------------------------------------------------------------------


def test_upload_is_skipped_when_the_remote_md5_already_matches(world: World,
                                                               tmp_path: Path) -> None:
    rid = world.run_ids[0]
    same = tmp_path / "f0.txt"
    same.write_bytes(f"{rid} file 0".encode())  # exactly upstream's f0.txt
    other = tmp_path / "new.txt"
    other.write_bytes(b"new")
    run = world.run(rid)
    run.upload_file(str(same), root=str(tmp_path))
    run.upload_file(str(other), root=str(tmp_path))
    report = world.push()
    assert report.ok and report.already == 1 and report.written == 1
    assert world.sent().count("storage_put") == 1
    assert set(world.remote_files(rid)) == {"f0.txt", "f1.txt", "new.txt"}


def test_delete_of_a_file_already_gone_upstream_counts_as_done(world: World) -> None:
    rid = world.run_ids[0]
    world.run(rid).file("f1.txt").delete()
    fid = next(f.upstream_id for page in world.other.iter_files(E, P, rid, names=["f1.txt"])
               for f in page)
    assert fid
    world.other.delete_files([fid], None)
    report = world.push()
    assert report.ok and report.already == 1 and "deleteFiles" not in world.sent()


def test_upload_over_a_file_changed_upstream_is_a_conflict(world: World,
                                                           tmp_path: Path) -> None:
    rid = world.run_ids[0]
    mine = tmp_path / "f0.txt"
    mine.write_bytes(b"mine")
    world.run(rid).upload_file(str(mine), root=str(tmp_path))
    theirs = b"theirs, uploaded meanwhile"
    store_uploaded_file(world.up, E, P, rid, "f0.txt", io.BytesIO(theirs), size=len(theirs))
    report = world.push()
    assert report.conflicts == 1 and "storage_put" not in world.sent()
    (op,) = world.ops(["conflict"])
    assert CliRunner().invoke(outbox_app, ["resolve", str(op.id), "--ours", "--store",
                                           str(world.local.path)]).exit_code == 0
    assert world.push().ok
    with world.up.session() as s:
        pk = store_runs.run_pk(s, E, P, rid)
        assert pk is not None
        rec = store_runs.get_file(s, pk, "f0.txt")
    assert rec is not None and rec.size_bytes == 4


# --- read-your-writes and settling --------------------------------------------------------


def test_pull_never_hides_a_pending_edit_and_settles_acknowledged_ones(world: World,
                                                                       tmp_path: Path) -> None:
    rid = world.run_ids[0]
    run = world.run(rid)
    run.summary["a"] = 1
    run.notes = "local"
    run.update()
    (tmp_path / "n.txt").write_text("n")
    run.upload_file(str(tmp_path / "n.txt"), root=str(tmp_path))
    world.pull()
    view = world.run(rid)
    assert view.summary["a"] == 1 and view.notes == "local"
    assert "n.txt" in [f.name for f in view.files()]
    assert world.push().ok
    assert len(world.ops(["done"])) == 3  # acknowledged, still overlaid
    world.pull()
    assert world.ops() == []  # the pull showed the values: settled
    view = world.run(rid)
    assert view.summary["a"] == 1 and view.notes == "local"
    f = view.file("n.txt")
    assert f.size == 1 and f.is_cached  # the upload's bytes serve the pulled row


def test_an_upstream_change_after_the_push_wins_locally_after_the_next_pull(
        world: World) -> None:
    rid = world.run_ids[0]
    run = world.run(rid)
    run.summary["a"] = 1
    run.summary.update()
    assert world.push().ok
    world.upstream_edit(rid, summary={"a": 2})
    world.pull()
    assert world.run(rid).summary["a"] == 2 and world.ops() == []


# --- the CLI ------------------------------------------------------------------------------


def test_push_cli_dry_run_plan_and_status(world: World) -> None:
    edit_many(world, per_run=5)
    world.run(world.run_ids[0]).file("f0.txt").delete()
    env = {"WANDB_BASE_URL": world.srv.url, "WANDB_API_KEY": world.srv.api_key}
    runner = CliRunner()
    args = ["--store", str(world.local.path)]
    world.mark()
    plan = runner.invoke(push_app, ["--dry-run", "--json", *args], env=env)
    assert plan.exit_code == 0, plan.output
    doc = json.loads(plan.stdout)
    assert doc["ops"] == 21 and doc["requests"] == {"read": 1, "write": 1, "files": 2,
                                                    "total": 4}
    assert world.sent() == []  # a dry run sends nothing
    human = runner.invoke(push_app, ["--dry-run", *args], env=env)
    assert human.exit_code == 0 and "requests (at least)" in human.output
    listing = runner.invoke(outbox_app, ["list", "--json", *args])
    assert listing.exit_code == 0 and len(json.loads(listing.stdout)["ops"]) == 21
    status = runner.invoke(outbox_app, ["status", "--json", *args])
    st = json.loads(status.stdout)
    assert st["pending"] == 21 and st["oldest_pending_age_s"] >= 0 and st["last_push"] is None
    done = runner.invoke(push_app, ["--json", *args], env=env)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["ok"]
    st = json.loads(runner.invoke(outbox_app, ["status", "--json", *args]).stdout)
    assert st["pending"] == 0 and st["last_push"]["ok"] and st["last_push"]["acked"] >= 5
    shown = runner.invoke(outbox_app, ["show", str(world.ops()[0].id), *args])
    assert shown.exit_code == 0 and "payload" in shown.output
    assert runner.invoke(outbox_app, ["list", *args]).exit_code == 0
    assert runner.invoke(outbox_app, ["status", *args]).exit_code == 0


def test_outbox_cli_refuses_unknown_ops_clearly(world: World) -> None:
    runner = CliRunner()
    args = ["--store", str(world.local.path)]
    out = runner.invoke(outbox_app, ["show", "999", *args])
    assert out.exit_code == 1 and "no outbox op 999" in out.output
    out = runner.invoke(outbox_app, ["resolve", "999", "--ours", *args])
    assert out.exit_code == 1
    out = runner.invoke(outbox_app, ["resolve", "1", *args])
    assert out.exit_code == 2  # neither --ours nor --theirs
    run = world.run(world.run_ids[0])
    run.summary["a"] = 1
    run.summary.update()
    (op,) = world.ops()
    out = runner.invoke(outbox_app, ["resolve", str(op.id), "--theirs", *args])
    assert out.exit_code == 1 and "no unresolved conflict" in out.output


def test_an_edit_after_a_crashed_push_builds_on_the_write_that_landed(world: World) -> None:
    """The pusher dies right after its write landed; the user edits the same keys again.

    The earlier op (recovered, maybe applied) and the new one coalesce: upstream showing
    the earlier op's value is our own write, not someone else's, so the new values apply.
    """
    from test_outbox_model import Crash, CrashingClient

    rid = world.run_ids[0]
    run = world.run(rid)
    run.summary["a"] = 1
    run.notes = "first"
    run.update()
    with pytest.raises(Crash):  # calls: RunsByName, then UpsertBuckets lands, then death
        world.push(client=CrashingClient(world.client, at=1, after=True))
    assert world.remote(rid).summary["a"] == 1 and world.ops()[0].state == "in_flight"
    run = world.run(rid)
    run.summary["a"] = 2
    run.notes = "second"
    run.update()
    report = world.push()
    assert report.ok and report.recovered == 2 and not report.conflicts, report.as_dict()
    assert world.remote(rid).summary["a"] == 2 and world.remote(rid).notes == "second"


def test_the_demo_edits_a_run_offline_and_pushes_it(world: World) -> None:
    """`mirror demo`'s last part: offline edit, shown pending, pushed, seen upstream."""
    from mirror.demo import _edit_and_push

    said: list[str] = []
    out = _edit_and_push(world.local, world.settings, said.append)
    assert out["pending_before_push"] == 3 and out["push_ok"], out
    assert out["server_shows_edit"] and out["push_requests"] == 2, out
    assert "reviewed" in world.remote(out["edited_run"]).tags
    assert any("3 op(s) pending" in line for line in said), said
