"""Model-based test of the outbox (Hypothesis stateful): edits, pulls, pushes, faults, crashes.

Rules, in any order: local edits through ``mirror.Api`` (summary keys set and deleted, a
config key set and deleted, the notes, tags added and removed, a file uploaded and
deleted); upstream edits of the same by another W&B user through the server; pulls;
pushes while the server rate-limits (429 storms), answers 503, drops connections before
the handler or AFTER it applied the write, or is unreachable (offline); and pushes that
crash part-way (the process "dies" at a chosen client call, before or
after it reached the server) and are restarted by the next push.

The model keeps, per (run, key), the sequence of local and upstream events and whether the
local store still owed the key when each upstream event happened. Invariants:

* read-your-writes: a local edit shows at once; a pull never changes a key with a pending op;
* after every step, from the server's request log: the server applied at most one upload
  per local upload edit, and at most one ``deleteFiles`` per delete made (by either side);
* after each push, every key the local store no longer owes passes the checks below;
* after quiescence (faults off, push until drained, pull):
  - every op ended acknowledged (and settled), conflicted (with its conflict rows and
    its reason), or dead with a reason; none is left waiting (liveness); no dead letters
    happen at all;
  - no edit lost: a key whose last event is a local edit holds that value upstream, unless a
    conflict was recorded for it (legitimate only if upstream also wrote the key);
  - none applied twice: a key whose last event is an upstream edit made after the local store
    owed nothing for it holds that upstream value (a replayed local op would clobber it:
    tags, uploads and deletes included);
  - the local store equals the server (summary, config, notes, tags, files).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import mirror.api as mapi
from mirror.outbox.replay import PushOptions, push
from mirror.server.faults import Fault, FaultPlan
from mirror.server.http import store_uploaded_file
from mirror.server.seed import generate
from mirror.server.testing import serve_in_thread
from mirror.settings import Settings
from mirror.store import open_store, syncstate
from mirror.store import outbox as outbox_store
from mirror.store import runs as store_runs
from mirror.sync.engine import SyncOptions
from mirror.sync.runner import sync
from mirror.upstream.client import WandbClient
from mirror.upstream.http import RetryPolicy

E, P = "model", "proj"
KEYS = ("a", "b")
CONFIG_KEY = "lr"
NOTES = ("n1", "n2", "u1", "u2")
TAGS = ("x", "y")
FILE = "f.txt"
CONTENTS = ("init", "pp1", "pp2", "u1", "u2")
"""File contents; ours are 3 bytes, upstream's 2, so the request log tells our uploads apart."""
MD5 = {base64.b64encode(hashlib.md5(c.encode()).digest()).decode(): c for c in CONTENTS}
ACTIVE = ("pending", "in_flight", "retry", "held")

FAULTS = {
    "none": [],
    "429 storm": [Fault(route="*", kind="429", probability=0.6, retry_after=0.001)],
    "503": [Fault(route="*", kind="503", probability=0.4)],
    "offline": [Fault(route="*", kind="drop_before", probability=1.0)],
    "drop after write": [Fault(route="*", kind="drop_after", probability=0.4)],
}


class Crash(BaseException):
    """The pushing process dies (a BaseException: nothing in the push may catch it)."""


class CrashingClient:
    """A client whose process dies at call ``at``, before or after the call went out."""

    def __init__(self, inner: WandbClient, at: int, after: bool) -> None:
        self._inner = inner
        self._left = at
        self._after = after

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._left <= 0 and not self._after:
                raise Crash
            result = attr(*args, **kwargs)
            if name == "iter_files":
                result = list(result)  # the requests happen now, not later
            if self._left <= 0:
                raise Crash
            self._left -= 1
            return result

        return call


def _template() -> Path:
    """Upstream (2 finished runs, one file each) and a local store synced from it, once."""
    root = Path(tempfile.mkdtemp(prefix="outbox-model-"))
    up = open_store(root / "up" / "mirror.db")
    gen = generate(up, runs=2, steps=2, keys=1, seed=3, entity=E, project=P)
    for run_id in gen.run_ids:
        store_uploaded_file(up, E, P, run_id, FILE, io.BytesIO(b"init"), size=4)
    with serve_in_thread(up) as srv:
        local = open_store(root / "home" / "mirror.db")
        st_ = Settings(home=root / "home", db_url=local.url, base_url=srv.url,
                       api_key=srv.api_key)
        client = WandbClient(st_, policy=RetryPolicy(base_delay=0.001, max_delay=0.01))
        assert sync(local, st_, [f"{E}/{P}"], SyncOptions(full=True), client=client).ok
        client.close()
        local.close()
    up.close()
    (root / "run_ids").write_text("\n".join(gen.run_ids))
    return root


_TEMPLATE: list[Path] = []


def template() -> Path:
    if not _TEMPLATE:
        _TEMPLATE.append(_template())
    return _TEMPLATE[0]


class OutboxModel(RuleBasedStateMachine):
    """The system under test plus the event log the invariants are checked against."""

    @initialize()
    def start(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="outbox-model-ex-"))
        shutil.copytree(template(), self.root, dirs_exist_ok=True)
        self.run_ids = (self.root / "run_ids").read_text().split("\n")
        self.up = open_store(self.root / "up" / "mirror.db")
        self.srv = serve_in_thread(self.up)
        self.local = open_store(self.root / "home" / "mirror.db")
        self.settings = Settings(home=self.root / "home", db_url=self.local.url,
                                 base_url=self.srv.url, api_key=self.srv.api_key)
        policy = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.005,
                             max_elapsed=5.0)
        self.client = WandbClient(self.settings, policy=policy)
        self.other = WandbClient(self.settings, policy=policy)
        # (run_id, key) -> [(kind, value, owed then, view before, time)]; key "s:a", "t:x"
        # or "f".
        self.events: dict[tuple[str, str], list[tuple[str, Any, bool, Any, float]]] = {}
        self.crashed = False
        self.uploads: dict[str, int] = {}  # run -> local upload edits made
        self.deletes = 0  # local delete edits, plus deletes made upstream by the other user
        self.tmp = self.root / "files"
        self.tmp.mkdir()

    def teardown(self) -> None:
        if not hasattr(self, "srv"):
            return
        try:
            self.quiesce_and_check()
        finally:
            self.client.close()
            self.other.close()
            self.srv.stop()
            self.local.close()
            self.up.close()
            shutil.rmtree(self.root, ignore_errors=True)

    # --- helpers ------------------------------------------------------------------------

    def api_run(self, run_id: str) -> mapi.Run:
        api = mapi.Api(store=self.local, settings=self.settings)
        return api.run(f"{E}/{P}/{run_id}")

    def owed(self) -> set[tuple[str, str]]:
        """(run, key) pairs the local store still owes upstream (an op not yet acked)."""
        out: set[tuple[str, str]] = set()
        with self.local.session() as s:
            ops = outbox_store.list_ops(s, states=list(ACTIVE))
            refs = outbox_store.run_refs(s, [o.run_pk for o in ops])
        for op in ops:
            rid = refs[op.run_pk].run_id
            if op.kind == "summary":
                out.update((rid, f"s:{k}") for k in op.payload.get("keys", {}))
            elif op.kind == "config":
                out.update((rid, f"c:{k}") for k in op.payload.get("keys", {}))
            elif op.kind == "meta":
                out.update((rid, f"n:{k}") for k in op.payload.get("keys", {}))
            elif op.kind == "tags":
                tags = [*op.payload.get("add", []), *op.payload.get("remove", [])]
                out.update((rid, f"t:{t}") for t in tags)
            elif op.kind in ("file_put", "file_delete"):
                out.add((rid, "f"))
        return out

    def record(self, run_id: str, key: str, kind: str, value: Any,
               before: Any = None, owed_before: bool = False) -> None:
        """Log an event; local edits also log what the view showed just before them and
        whether the key was owed already (if not, the edit starts a new intent whose base
        is that view value)."""
        owed = (run_id, key) in self.owed() if kind == "upstream" else owed_before
        self.events.setdefault((run_id, key), []).append(
            (kind, value, owed, before, time.time()))

    def before_local(self, run_id: str, key: str) -> tuple[Any, bool]:
        return self.view(run_id)[key], (run_id, key) in self.owed()

    def view(self, run_id: str) -> dict[str, Any]:
        run = self.api_run(run_id)
        return self._state(run.summary._json_dict, dict(run.config), run.notes, run.tags,
                           {f.name: f.md5 for f in run.files()})

    def server(self, run_id: str) -> dict[str, Any]:
        with self.up.session() as s:
            rec = store_runs.get_run(s, E, P, run_id)
            assert rec is not None and rec.pk is not None
            files = {f.name: f.md5 for f in store_runs.list_files(s, rec.pk)}
        config = {k: v["value"] for k, v in (rec.config or {}).items()}
        return self._state(rec.summary or {}, config, rec.notes, rec.tags, files)

    @staticmethod
    def _state(summary: dict[str, Any], config: dict[str, Any], notes: str | None,
               tags: list[str], files: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {f"s:{k}": summary.get(k, "absent") for k in KEYS}
        out[f"c:{CONFIG_KEY}"] = config.get(CONFIG_KEY, "absent")
        out["n:notes"] = notes or None
        out.update({f"t:{t}": t in tags for t in TAGS})
        md5 = files.get(FILE)
        out["f"] = None if md5 is None else MD5.get(md5, md5)
        return out

    def upstream_file(self, run_id: str, content: str | None) -> None:
        if content is None:
            fids = [f.upstream_id for page in self.other.iter_files(E, P, run_id, names=[FILE])
                    for f in page if f.upstream_id]
            if fids:
                self.other.delete_files(fids, None)
                self.deletes += 1
            return
        urls, headers = self.other.create_run_files(E, P, run_id, [FILE])
        self.other.upload(urls[FILE], io.BytesIO(content.encode()), headers)

    # --- rules: local edits -----------------------------------------------------------------

    @rule(r=st.integers(0, 1), key=st.sampled_from(KEYS),
          value=st.one_of(st.integers(1, 3), st.none()))
    def local_summary(self, r: int, key: str, value: int | None) -> None:
        rid = self.run_ids[r]
        before = self.before_local(rid, f"s:{key}")
        run = self.api_run(rid)
        if value is None:
            if key not in run.summary:
                return
            del run.summary[key]
        else:
            run.summary[key] = value
        run.summary.update()
        self.record(rid, f"s:{key}", "local", "absent" if value is None else value, *before)
        assert self.view(rid)[f"s:{key}"] == ("absent" if value is None else value)

    @rule(r=st.integers(0, 1), value=st.one_of(st.integers(1, 3), st.none()))
    def local_config(self, r: int, value: int | None) -> None:
        rid, key = self.run_ids[r], f"c:{CONFIG_KEY}"
        before = self.before_local(rid, key)
        run = self.api_run(rid)
        if value is None:
            if CONFIG_KEY not in run.config:
                return
            del run.config[CONFIG_KEY]
        else:
            run.config[CONFIG_KEY] = value
        run.update()
        self.record(rid, key, "local", "absent" if value is None else value, *before)
        assert self.view(rid)[key] == ("absent" if value is None else value)

    @rule(r=st.integers(0, 1), value=st.sampled_from(NOTES[:2]))
    def local_notes(self, r: int, value: str) -> None:
        rid = self.run_ids[r]
        before = self.before_local(rid, "n:notes")
        run = self.api_run(rid)
        if run.notes == value:
            return
        run.notes = value
        run.update()
        self.record(rid, "n:notes", "local", value, *before)
        assert self.view(rid)["n:notes"] == value

    @rule(r=st.integers(0, 1), tag=st.sampled_from(TAGS), add=st.booleans())
    def local_tag(self, r: int, tag: str, add: bool) -> None:
        rid = self.run_ids[r]
        before = self.before_local(rid, f"t:{tag}")
        run = self.api_run(rid)
        if add and tag not in run.tags:
            run.tags.append(tag)
        elif not add and tag in run.tags:
            run.tags.remove(tag)
        else:
            return
        run.update()
        self.record(rid, f"t:{tag}", "local", add, *before)
        assert self.view(rid)[f"t:{tag}"] is add

    @rule(r=st.integers(0, 1), content=st.sampled_from(["pp1", "pp2", None]))
    def local_file(self, r: int, content: str | None) -> None:
        rid = self.run_ids[r]
        before = self.before_local(rid, "f")
        run = self.api_run(rid)
        if content is None:
            names = [f.name for f in run.files()]
            if FILE not in names:
                return
            run.file(FILE).delete()
            self.deletes += 1
        else:
            (self.tmp / FILE).write_text(content)
            run.upload_file(str(self.tmp / FILE), root=str(self.tmp))
            self.uploads[rid] = self.uploads.get(rid, 0) + 1
        self.record(rid, "f", "local", content, *before)
        assert self.view(rid)["f"] == content

    # --- rules: upstream edits (another user, through the server) -----------------------------

    @rule(r=st.integers(0, 1), key=st.sampled_from(KEYS),
          value=st.one_of(st.integers(7, 9), st.none()))
    def upstream_summary(self, r: int, key: str, value: int | None) -> None:
        rid = self.run_ids[r]
        self.srv.faults = FaultPlan()
        (rec,) = self.other.get_runs([(E, P, rid)])
        assert rec is not None
        summary = dict(rec.summary or {})
        if value is None:
            summary.pop(key, None)
        else:
            summary[key] = value
        (out,) = self.other.upsert_buckets([{"id": rec.storage_id, "summaryMetrics": summary}])
        assert out.ok
        self.record(rid, f"s:{key}", "upstream", "absent" if value is None else value)

    @rule(r=st.integers(0, 1), value=st.one_of(st.integers(7, 9), st.none()))
    def upstream_config(self, r: int, value: int | None) -> None:
        rid = self.run_ids[r]
        self.srv.faults = FaultPlan()
        (rec,) = self.other.get_runs([(E, P, rid)])
        assert rec is not None
        config = dict(rec.config or {})
        if value is None:
            config.pop(CONFIG_KEY, None)
        else:
            config[CONFIG_KEY] = {"value": value, "desc": None}
        (out,) = self.other.upsert_buckets([{"id": rec.storage_id, "config": config}])
        assert out.ok
        self.record(rid, f"c:{CONFIG_KEY}", "upstream", "absent" if value is None else value)

    @rule(r=st.integers(0, 1), value=st.sampled_from(NOTES[2:]))
    def upstream_notes(self, r: int, value: str) -> None:
        rid = self.run_ids[r]
        self.srv.faults = FaultPlan()
        (rec,) = self.other.get_runs([(E, P, rid)])
        assert rec is not None
        (out,) = self.other.upsert_buckets([{"id": rec.storage_id, "notes": value}])
        assert out.ok
        self.record(rid, "n:notes", "upstream", value)

    @rule(r=st.integers(0, 1), tag=st.sampled_from(TAGS), add=st.booleans())
    def upstream_tag(self, r: int, tag: str, add: bool) -> None:
        rid = self.run_ids[r]
        self.srv.faults = FaultPlan()
        (rec,) = self.other.get_runs([(E, P, rid)])
        assert rec is not None
        tags = [t for t in rec.tags if t != tag] + ([tag] if add else [])
        (out,) = self.other.upsert_buckets([{"id": rec.storage_id, "tags": tags}])
        assert out.ok
        self.record(rid, f"t:{tag}", "upstream", add)

    @rule(r=st.integers(0, 1), content=st.sampled_from(["u1", "u2", None]))
    def upstream_files(self, r: int, content: str | None) -> None:
        rid = self.run_ids[r]
        self.srv.faults = FaultPlan()
        self.upstream_file(rid, content)
        self.record(rid, "f", "upstream", content)

    @rule(pick=st.integers(0, 15), value=st.integers(7, 9), add=st.booleans(),
          content=st.sampled_from(["u1", "u2"]))
    def upstream_on_owed_key(self, pick: int, value: int, add: bool, content: str) -> None:
        """Upstream writes a key the local store still owes: the lost-update case.

        What is owed depends on timing (retries under faults), so every value is drawn
        whatever the key turns out to be: Hypothesis needs the same draws on a replay.
        """
        owed = sorted(self.owed())
        if not owed:
            return
        rid, key = owed[pick % len(owed)]
        r = self.run_ids.index(rid)
        if key.startswith("s:"):
            self.upstream_summary(r=r, key=key[2:], value=value)
        elif key.startswith("c:"):
            self.upstream_config(r=r, value=value)
        elif key.startswith("n:"):
            self.upstream_notes(r=r, value=content)
        elif key.startswith("t:"):
            self.upstream_tag(r=r, tag=key[2:], add=add)
        else:
            self.upstream_files(r=r, content=content)

    # --- rules: sync --------------------------------------------------------------------------

    def full_pull(self) -> None:
        """`mirror sync --full`, made to re-fetch every run.

        The pull skips runs whose listing did not change; files show in the listing only as
        ``fileCount`` and the run's ``updatedAt``, which the test server writes with second
        precision (W&B's format), and this test makes several file changes per second. So
        the runs' listing fingerprints are forgotten first: the pull then compares every
        file, which is what a pull a second later would do anyway.
        """
        with self.local.transaction() as s:
            for rid in self.run_ids:
                pk = store_runs.run_pk(s, E, P, rid)
                assert pk is not None
                syncstate.set_listing_hash(s, pk, None)
        assert sync(self.local, self.settings, [f"{E}/{P}"], SyncOptions(full=True),
                    client=self.client).ok

    @rule()
    def pull(self) -> None:
        self.srv.faults = FaultPlan()
        owed = self.owed()
        before = {rid: self.view(rid) for rid in self.run_ids}
        self.full_pull()
        for rid in self.run_ids:
            after = self.view(rid)
            for key in after:
                if (rid, key) in owed:  # a pull never hides a pending edit
                    assert after[key] == before[rid][key], (rid, key)

    @rule(fault=st.sampled_from(sorted(FAULTS)), seed=st.integers(0, 1000))
    def do_push(self, fault: str, seed: int) -> None:
        self.srv.faults = FaultPlan(FAULTS[fault], seed=seed)
        try:
            push(self.local, self.client, PushOptions(max_attempts=10_000, base_delay=0.001,
                                                      max_delay=0.005, max_wait=0.1))
        finally:
            self.srv.faults = FaultPlan()
        self.crashed = False
        self.check_finished_keys()

    @rule(at=st.integers(0, 6), after=st.booleans(),
          fault=st.sampled_from(["none", "drop after write"]))
    def crashing_push(self, at: int, after: bool, fault: str) -> None:
        self.srv.faults = FaultPlan(FAULTS[fault], seed=at)
        client = CrashingClient(self.client, at, after)
        try:
            push(self.local, client, PushOptions(max_attempts=10_000, base_delay=0.001,  # type: ignore[arg-type]
                                                 max_delay=0.005, max_wait=0.1))
        except Crash:
            self.crashed = True
        finally:
            self.srv.faults = FaultPlan()
        self.check_finished_keys()

    # --- invariants -----------------------------------------------------------------------------

    @invariant()
    def nothing_in_flight_unless_crashed(self) -> None:
        if hasattr(self, "local") and not self.crashed:
            with self.local.session() as s:
                assert outbox_store.list_ops(s, states=["in_flight"]) == []

    @invariant()
    def no_upload_or_delete_applied_twice(self) -> None:
        """Count what the server APPLIED (answered 200, or dropped the connection after its
        handler ran): at most one upload per local upload edit (ours are the 3-byte PUTs),
        at most one deleteFiles per delete made (ours and the other user's)."""
        if not hasattr(self, "srv"):
            return
        applied = [e for e in self.srv.request_log.entries()
                   if e.status == 200 or (e.fault or "").endswith("drop_after")]
        for rid in self.run_ids:
            puts = [e for e in applied if e.route == "storage_put" and e.request_bytes == 3
                    and e.path.endswith(f"/{rid}/{FILE}")]
            assert len(puts) <= self.uploads.get(rid, 0), (rid, puts)
        deletes = [e for e in applied if "deleteFiles" in e.operations]
        assert len(deletes) <= self.deletes, deletes

    @rule()
    def quiesce_and_check(self) -> None:
        """Heal, drain, pull; then every invariant of the module docstring."""
        self.srv.faults = FaultPlan()
        for _ in range(20):
            push(self.local, self.client, PushOptions(max_attempts=10_000, base_delay=0.001,
                                                      max_delay=0.005, max_wait=1.0))
            if not self.owed():
                break
        assert not self.owed(), "the outbox did not drain after the faults healed"
        self.crashed = False
        self.full_pull()
        with self.local.session() as s:
            ops = outbox_store.list_ops(s)
            conflicts = outbox_store.list_conflicts(s)
        assert not [o for o in ops if o.state == "failed"], "no terminal error was injected"
        for o in ops:
            assert o.state in ("conflict", "done"), o
            if o.state == "conflict" or o.payload.get("conflicted"):
                assert any(c.op_id == o.id for c in conflicts), o
            if o.state == "conflict":  # parked with its reason
                assert "changed upstream" in (o.last_error or ""), o
        for rid in self.run_ids:
            assert self.view(rid) == self.server(rid), f"local != server for {rid}"
        self.check_finished_keys()

    def check_finished_keys(self) -> None:
        """Check every key the local store no longer owes against its event history.

        Called after each push: between the push and this check nothing else happens, so
        a key the push finished with shows exactly the push's outcome.
        """
        with self.local.session() as s:
            conflicts = outbox_store.list_conflicts(s)
            refs = outbox_store.run_refs(s, [c.run_pk for c in conflicts])
        conflicted: dict[tuple[str, str], float] = {}
        prefix = {"summary": "s:", "config": "c:", "meta": "n:"}
        for c in conflicts:
            k = (refs[c.run_pk].run_id,
                 "f" if c.kind.startswith("file") else prefix[c.kind] + c.key)
            conflicted[k] = max(conflicted.get(k, 0.0), c.created_at)
        owed = self.owed()
        for rid in self.run_ids:
            server = self.server(rid)
            for key, value in server.items():
                if (rid, key) not in owed:
                    self.check_key(rid, key, value, conflicted.get((rid, key)))

    def check_key(self, rid: str, key: str, value: Any, conflict_at: float | None) -> None:
        events = self.events.get((rid, key), [])
        if not events:
            return
        kind, last, owed, _, _ = events[-1]
        local_at = [i for i, e in enumerate(events) if e[0] == "local" and not e[2]]
        if kind == "local":
            start = local_at[-1]
            if conflict_at is not None and conflict_at >= events[start][4]:
                # Parked, not written: legitimate only if upstream wrote the key too.
                assert any(e[0] == "upstream" for e in events), \
                    f"{rid} {key}: conflict without an upstream change"
            else:
                assert value == last, f"{rid} {key}: local edit {last!r} lost (server {value!r})"
            return
        if not owed:
            assert value == last, f"{rid} {key}: upstream {last!r} clobbered by {value!r}"
            return
        # The upstream edit came while a local intent was still owed. The intent began at
        # the last local edit made while nothing was owed; its base is what the view showed
        # then, and every value it wrote since may have landed (crashes, lost answers).
        start = local_at[-1]
        base = events[start][3]
        ours = [e[1] for e in events[start:] if e[0] == "local"]
        if key.startswith("t:") or last == base or last in ours:
            # Tags are set deltas (ours applies on top); upstream back at the base, or at one
            # of our values, is no conflict: the intent applies.
            assert value in (last, ours[-1]), (rid, key, value, events)
        else:
            assert value == last, (f"{rid} {key}: upstream {last!r} changed the key under an "
                                   f"owed edit and was overwritten by {value!r} (lost update)")


OutboxModel.TestCase.settings = settings(
    # 24 examples at MIRROR_STRESS_SCALE=1 (CI runs 0.2: 5); MIRROR_MODEL_EXAMPLES overrides.
    max_examples=int(os.environ.get("MIRROR_MODEL_EXAMPLES") or max(
        2, round(24 * float(os.environ.get("MIRROR_STRESS_SCALE", "1"))))),
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.slow
class TestOutboxModel(OutboxModel.TestCase):  # type: ignore[name-defined,misc]
    pass
