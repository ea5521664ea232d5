"""The outbox's parts alone: payload algebra, 3-way merge, the op state machine, the lock.

Pure functions get plain values; store functions get a real migrated SQLite store.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirror.errors import AuthError, EditRejected, RateLimited, UpstreamUnavailable
from mirror.outbox import edits, overlay
from mirror.outbox.lock import PushBusyError, push_lock
from mirror.outbox.merge import merge_fields, merge_file
from mirror.outbox.ops import (
    coalesce,
    doc_patch,
    meta_patch,
    overlay_files,
    overlay_run,
    same_value,
    tags_patch,
)
from mirror.outbox.replay import classify
from mirror.outbox.settle import settle_run, settle_runs
from mirror.records import FileRecord, RunRecord
from mirror.store import Store
from mirror.store import outbox as outbox_store
from mirror.store import runs as store_runs
from mirror.store.outbox import OpRecord


def op(op_id: int, kind: str, payload: dict, base: dict | None = None, **kw: object) -> OpRecord:
    return OpRecord(id=op_id, run_pk=1, kind=kind, payload=payload, base=base or {},
                    state="pending", **kw)  # type: ignore[arg-type]


def run_record(**kw: object) -> RunRecord:
    base: dict[str, object] = {"entity": "e", "project": "p", "run_id": "r", "pk": 1,
                               "storage_id": "sid", "summary": {"a": 0, "keep": 1},
                               "config": {"lr": {"value": 0.1, "desc": "rate"},
                                          "_wandb": {"value": {"v": 1}}},
                               "tags": ["x"], "notes": None}
    base.update(kw)
    return RunRecord(**base)  # type: ignore[arg-type]


# --- values and patches -------------------------------------------------------------------


def test_same_value_is_json_equality() -> None:
    assert same_value(1, 1.0) and same_value(math.nan, math.nan)
    assert not same_value(True, 1) and not same_value(0, False)
    assert same_value({"a": [1, {"b": 2}]}, {"a": [1.0, {"b": 2}]})
    assert not same_value({"a": 1}, {"a": 1, "b": None}) and not same_value("1", 1)


def test_doc_patch_records_sets_deletes_and_bases() -> None:
    payload, base = doc_patch({"a": 1, "gone": 2, "same": 3}, {"a": 5, "new": None, "same": 3})
    assert payload == {"keys": {"a": [5], "new": [None], "gone": []}}
    assert base == {"keys": {"a": [1], "new": [], "gone": [2]}}
    assert doc_patch({"a": 1}, {"a": 1.0}) is None


def test_meta_and_tags_patches() -> None:
    assert meta_patch({"notes": None}, {"notes": ""}) is None  # null and "" are one
    assert meta_patch({"notes": "a"}, {"notes": "b"}) == (
        {"keys": {"notes": ["b"]}}, {"keys": {"notes": ["a"]}})
    assert tags_patch(["a", "b"], ["b", "c"]) == ({"add": ["c"], "remove": ["a"]},
                                                  {"tags": ["a", "b"]})
    assert tags_patch(["a"], ["a"]) is None


# --- coalescing -------------------------------------------------------------------------------


def test_coalesce_last_value_wins_earliest_base_kept() -> None:
    ops = [
        op(1, "summary", {"keys": {"a": [1]}}, {"keys": {"a": [0]}}),
        op(2, "config", {"keys": {"lr": [0.2]}}, {"keys": {"lr": [0.1]}}),
        op(3, "summary", {"keys": {"a": [2], "b": []}}, {"keys": {"a": [1], "b": [7]}}),
    ]
    out = coalesce(ops)
    assert [c.op.id for c in out] == [1, 2] and out[0].merged == [3]
    assert out[0].op.payload == {"keys": {"a": [2], "b": []}}
    assert out[0].op.base == {"keys": {"a": [0], "b": [7]}}
    assert ops[0].payload == {"keys": {"a": [1]}}  # inputs untouched


def test_coalesce_composes_tag_deltas_and_keeps_the_last_file_op() -> None:
    ops = [
        op(1, "tags", {"add": ["x", "y"], "remove": []}),
        op(2, "tags", {"add": ["z"], "remove": ["x"]}),
        op(3, "file_put", {"name": "f", "md5": "m1"}, {"md5": None}),
        op(4, "file_delete", {"name": "f"}, {"md5": "m1"}),
        op(5, "file_put", {"name": "g", "md5": "m2"}, {"md5": None}),
    ]
    tags, f, g = coalesce(ops)
    assert tags.op.payload == {"add": ["y", "z"], "remove": ["x"]}
    assert (f.op.kind, f.op.payload, f.op.base) == ("file_delete", {"name": "f"}, {"md5": None})
    assert f.merged == [4] and g.op.id == 5


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=12))
@settings(max_examples=60, deadline=None)
def test_coalesced_tags_equal_applying_each_delta(steps: list[tuple[str, bool]]) -> None:
    from mirror.outbox.ops import apply_tags

    ops = [op(i + 1, "tags", {"add": [t] if add else [], "remove": [] if add else [t]})
           for i, (t, add) in enumerate(steps)]
    start = ["b", "q"]
    one_by_one = start
    for o in ops:
        one_by_one = apply_tags(one_by_one, o.payload)
    if ops:
        (merged,) = coalesce(ops)
        assert sorted(apply_tags(start, merged.op.payload)) == sorted(one_by_one)


# --- merge ------------------------------------------------------------------------------------


def test_merge_fields_applies_skips_and_conflicts_per_key() -> None:
    remote = run_record(summary={"a": 0, "b": 5, "c": 9, "keep": 1})
    ops = [
        op(1, "summary", {"keys": {"a": [1], "b": [5], "c": [3], "d": []}},
           {"keys": {"a": [0], "b": [4], "c": [2], "d": [1]}}),
        op(2, "config", {"keys": {"lr": [0.5], "new": [1]}},
           {"keys": {"lr": [0.1], "new": []}}),
        op(3, "tags", {"add": ["y"], "remove": ["x"]}),
        op(4, "meta", {"keys": {"notes": [None]}}, {"keys": {"notes": ["old"]}}),
    ]
    m = merge_fields(remote, ops)
    assert m.written == {1: ["a"], 2: ["lr", "new"], 3: ["tags"]}
    assert m.already == {1: ["b", "d"], 4: ["notes"]}
    assert [(c.op_id, c.key, c.base, c.local, c.remote) for c in m.conflicts] == [
        (1, "c", [2], [3], [9])]
    assert m.fields["summaryMetrics"] == {"a": 1, "b": 5, "c": 9, "keep": 1}
    assert m.fields["config"] == {"lr": {"value": 0.5, "desc": "rate"},
                                  "_wandb": {"value": {"v": 1}},
                                  "new": {"value": 1, "desc": None}}
    assert m.fields["tags"] == ["y"] and "notes" not in m.fields


def test_merge_file_decisions() -> None:
    put = op(1, "file_put", {"name": "f", "md5": "new"}, {"md5": "old"})
    assert merge_file(put, FileRecord(name="f", md5="old")) == "upload"
    assert merge_file(put, FileRecord(name="f", md5="new")) == "already"
    assert merge_file(put, FileRecord(name="f", md5="other")) == "conflict"
    assert merge_file(put, None) == "conflict"  # deleted upstream meanwhile
    fresh = op(2, "file_put", {"name": "f", "md5": "new"}, {"md5": None})
    assert merge_file(fresh, None) == "upload"
    delete = op(3, "file_delete", {"name": "f"}, {"md5": "old"})
    assert merge_file(delete, None) == "already"
    assert merge_file(delete, FileRecord(name="f", md5="old")) == "delete"
    assert merge_file(delete, FileRecord(name="f", md5="reuploaded")) == "conflict"


def test_classify_errors() -> None:
    assert classify(AuthError("401")) == "auth"
    assert classify(RateLimited("429", retry_after=1.0)) == "transient"
    dropped = UpstreamUnavailable("gone")
    dropped.maybe_applied = True
    assert classify(dropped) == "ambiguous"
    assert classify(EditRejected("400")) == "terminal"


# --- overlay ----------------------------------------------------------------------------------


def test_overlay_run_and_files() -> None:
    rec = run_record()
    ops = [
        op(1, "summary", {"keys": {"a": [1], "keep": [], "z": [2]}, "conflicted": ["z"]}),
        op(2, "config", {"keys": {"lr": [0.3]}}),
        op(3, "tags", {"add": ["y"], "remove": ["x"]}),
        op(4, "meta", {"keys": {"notes": ["hi"], "display_name": ["n"]}}),
    ]
    overlay_run(rec, ops)
    assert rec.summary == {"a": 1} and rec.tags == ["y"]
    assert rec.config["lr"] == {"value": 0.3, "desc": "rate"}
    assert rec.notes == "hi" and rec.display_name == "n"
    files = [FileRecord(name="a"), FileRecord(name="b", md5="x")]
    out = overlay_files(files, [
        op(5, "file_delete", {"name": "a"}),
        op(6, "file_put", {"name": "c", "md5": "m", "size": 3, "blob": "h"}),
        op(7, "file_put", {"name": "b", "md5": "y", "size": 1, "blob": "h2"}),
    ])
    assert [(f.name, f.md5) for f in out] == [("b", "y"), ("c", "m")]
    assert out[1].blob_hash == "h" and out[1].size_bytes == 3


# --- the store's state machine --------------------------------------------------------------


@pytest.fixture
def two_runs(store: Store) -> tuple[int, int]:
    with store.transaction() as s:
        a = store_runs.save_run(s, run_record(run_id="a", pk=None))
        b = store_runs.save_run(s, run_record(run_id="b", pk=None))
    return a, b


def test_due_ops_are_the_due_prefix_per_run(store: Store, two_runs: tuple[int, int]) -> None:
    a, b = two_runs
    now = time.time()
    with store.transaction() as s:
        ids = [outbox_store.enqueue(s, pk, "summary", {"keys": {"k": [i]}}, {"keys": {"k": []}})
               for i, pk in enumerate([a, a, a, b, b])]
        outbox_store.mark(s, ids[1], "retry", next_attempt_at=now + 60)  # a waits at op 2
        outbox_store.mark(s, ids[3], "failed", error="dead")  # b's dead op blocks nothing
        outbox_store.mark(s, ids[0], "done")
    with store.session() as s:
        due = outbox_store.due_ops(s, now)
        assert {pk: [o.id for o in ops] for pk, ops in due.items()} == {b: [ids[4]]}
        assert outbox_store.next_due(s) == pytest.approx(now + 60)
        due_later = outbox_store.due_ops(s, now + 61)
    assert [o.id for o in due_later[a]] == [ids[1], ids[2]]


def test_in_flight_ops_block_their_run_and_are_recovered(store: Store,
                                                         two_runs: tuple[int, int]) -> None:
    a, _ = two_runs
    with store.transaction() as s:
        first = outbox_store.enqueue(s, a, "summary", {"keys": {"k": [1]}})
        outbox_store.mark(s, first, "in_flight", attempts_delta=1)
        outbox_store.enqueue(s, a, "summary", {"keys": {"k": [2]}})  # never coalesced into it
    with store.session() as s:
        assert outbox_store.due_ops(s, time.time()) == {}
    with store.transaction() as s:
        assert outbox_store.recover_in_flight(s) == 1
    with store.session() as s:
        ops = outbox_store.due_ops(s, time.time())[a]
    assert [o.state for o in ops] == ["retry", "pending"]
    assert "read back" in (ops[0].last_error or "") and ops[0].attempts == 1


def test_held_ops_block_until_released(store: Store, two_runs: tuple[int, int]) -> None:
    a, _ = two_runs
    with store.transaction() as s:
        held = outbox_store.enqueue(s, a, "summary", {"keys": {"k": [1]}})
        outbox_store.mark(s, held, "held", error="running")
    with store.session() as s:
        assert outbox_store.due_ops(s, time.time()) == {}
    with store.transaction() as s:
        assert outbox_store.release_held(s) == 1
    with store.session() as s:
        assert list(outbox_store.due_ops(s, time.time())) == [a]


def test_edits_and_overlay_read_your_writes(store: Store, two_runs: tuple[int, int],
                                            tmp_path: Path) -> None:
    from mirror.store import blobs

    a, _ = two_runs
    with store.transaction() as s:
        store_runs.save_file(s, a, FileRecord(name="old.txt", md5="m-old"))
        edits.edit_documents(s, a, summary={"a": 0, "keep": 1, "b": 2},
                             config={"lr": {"value": 0.2, "desc": None}}, tags=["x", "y"],
                             meta={"notes": "n", "job_type": None})
        edits.enqueue_file_delete(s, a, "old.txt")
        assert edits.enqueue_file_delete(s, a, "missing.txt") is None
        info = blobs.put_bytes(store, b"abc", record=False)
        rec = edits.enqueue_file_put(s, a, "new.txt", info)
        assert rec.md5 == info.md5_b64 and rec.blob_hash == info.hash
    with store.session() as s:
        kinds = [o.kind for o in outbox_store.list_ops(s)]
        assert kinds == ["summary", "config", "meta", "tags", "file_delete", "file_put"]
        view = overlay.view_run(s, a)
        assert view is not None
        assert view.summary == {"a": 0, "keep": 1, "b": 2} and view.tags == ["x", "y"]
        assert view.config == {"lr": {"value": 0.2, "desc": "rate"}}  # _wandb dropped too
        assert view.notes == "n"
        assert [f.name for f in overlay.view_files(s, a)] == ["new.txt"]
        assert overlay.view_file(s, a, "old.txt") is None
        raw = store_runs.get_run_by_pk(s, a)
    assert raw is not None and raw.summary == {"a": 0, "keep": 1}  # upstream row untouched


def test_settle_after_a_pull(store: Store, two_runs: tuple[int, int]) -> None:
    a, _ = two_runs
    with store.transaction() as s:
        shown = outbox_store.enqueue(s, a, "summary", {"keys": {"a": [0]}})
        unseen = outbox_store.enqueue(s, a, "summary", {"keys": {"a": [5]}})
        parked = outbox_store.enqueue(s, a, "summary", {"keys": {"q": [1]},
                                                        "conflicted": ["q"]})
        for op_id in (shown, unseen, parked):
            outbox_store.mark(s, op_id, "done", now=100.0)
        outbox_store.add_conflict(s, op_id=parked, run_pk=a, kind="summary", key="q",
                                  base=[], local=[1], remote=[2])
        pending = outbox_store.enqueue(s, a, "summary", {"keys": {"a": [7]}})
    with store.transaction() as s:
        assert settle_run(s, a, pulled_after=50.0) == 1  # only the op the row shows
    with store.transaction() as s:
        assert settle_run(s, a, pulled_after=150.0) == 1  # pulled after its ack: settled
    with store.session() as s:
        assert [o.id for o in outbox_store.list_ops(s)] == [parked, pending]


def test_settle_of_a_run_listed_unchanged_needs_files_to_show(store: Store,
                                                               two_runs: tuple[int, int]) -> None:
    """A listing carries fields, not files: an acknowledged upload of a run whose listing
    did not change settles only when the stored files show it."""
    a, _ = two_runs
    with store.transaction() as s:
        put = outbox_store.enqueue(s, a, "file_put", {"name": "n.txt", "md5": "m-new"})
        field = outbox_store.enqueue(s, a, "summary", {"keys": {"a": [5]}})
        outbox_store.mark_many(s, [outbox_store.Mark(put, "done"),
                                   outbox_store.Mark(field, "done")], now=100.0)
    with store.transaction() as s:
        assert settle_runs(s, [a], pulled_after=150.0) == 1  # the field op only
    with store.session() as s:
        assert [o.id for o in outbox_store.list_ops(s)] == [put]
    with store.transaction() as s:
        store_runs.save_file(s, a, FileRecord(name="n.txt", md5="m-new"))
        assert settle_runs(s, [a], pulled_after=150.0) == 1
        assert outbox_store.list_ops(s) == []


def test_mark_many_equals_mark_one_by_one(store: Store, two_runs: tuple[int, int]) -> None:
    a, b = two_runs
    with store.transaction() as s:
        ids = [outbox_store.enqueue(s, pk, "summary", {"keys": {"k": [i]}})
               for i, pk in enumerate([a, a, b])]
        outbox_store.mark(s, ids[0], "retry", error="503", attempts_delta=1)
        outbox_store.mark_many(s, [
            outbox_store.Mark(ids[0], "done"),  # done clears the error
            outbox_store.Mark(ids[1], "retry", error="429", next_attempt_at=5.0,
                              attempts_delta=2),
            outbox_store.Mark(ids[2], "pending", error="paused", attempts_delta=-1),
        ], now=42.0)
        got = {o.id: o for o in outbox_store.list_ops(s)}  # the session sees the new state
    assert (got[ids[0]].state, got[ids[0]].last_error, got[ids[0]].attempts) == ("done", None, 1)
    assert (got[ids[1]].state, got[ids[1]].last_error, got[ids[1]].next_attempt_at,
            got[ids[1]].attempts) == ("retry", "429", 5.0, 2)
    assert got[ids[2]].attempts == 0 and got[ids[2]].last_error == "paused"  # never below 0
    assert {o.updated_at for o in got.values()} == {42.0}
    with store.transaction() as s:
        outbox_store.update_payloads(s, [(ids[1], "config", {"keys": {"z": [None]}},
                                          {"keys": {"z": []}})])
    with store.session() as s:
        changed = outbox_store.get_op(s, ids[1])
    assert changed is not None and changed.kind == "config"
    assert changed.payload == {"keys": {"z": [None]}} and changed.base == {"keys": {"z": []}}
    assert changed.state == "retry"  # the state is left alone


def test_push_lock_is_exclusive(store: Store) -> None:
    with push_lock(store):
        with pytest.raises(PushBusyError), push_lock(store):
            pass
        errors: list[BaseException] = []

        def other() -> None:
            try:
                with push_lock(store):
                    pass
            except PushBusyError as exc:
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(errors) == 1
    with push_lock(store):  # released
        pass


def test_values_an_op_already_sent_are_alternative_bases() -> None:
    """A (sent, maybe landed) then B on the same key: upstream may show A's value."""
    a = op(1, "summary", {"keys": {"k": [1]}}, {"keys": {"k": [0]}}, attempts=1)
    b = op(2, "summary", {"keys": {"k": [2]}}, {"keys": {"k": [1]}})
    (merged,) = coalesce([a, b])
    assert merged.op.base == {"keys": {"k": [0]}, "also": {"k": [[1]]}}
    for remote in (0, 1):  # A did not land / A landed: either way B applies
        m = merge_fields(run_record(summary={"k": remote}), [merged.op])
        assert m.written == {1: ["k"]} and not m.conflicts
    assert merge_fields(run_record(summary={"k": 5}), [merged.op]).conflicts
    # Never sent: its value is no alternative (someone else writing it IS a conflict).
    (fresh,) = coalesce([op(1, "summary", {"keys": {"k": [1]}}, {"keys": {"k": [0]}}), b])
    assert "also" not in fresh.op.base
    put = op(3, "file_put", {"name": "f", "md5": "m1"}, {"md5": "m0"}, attempts=2)
    delete = op(4, "file_delete", {"name": "f"}, {"md5": "m1"})
    (f,) = coalesce([put, delete])
    assert f.op.kind == "file_delete" and f.op.base == {"md5": "m0", "also": ["m1"]}
    assert merge_file(f.op, FileRecord(name="f", md5="m1")) == "delete"
    assert merge_file(f.op, FileRecord(name="f", md5="m0")) == "delete"
