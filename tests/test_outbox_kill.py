"""`mirror push` SIGKILLed at seeded random moments (20 times at MIRROR_STRESS_SCALE=1),
restarted each time.

A moment is a random number of requests into the push (the server's request log counts
them), so every kill lands while the push is under way, not while Python starts. Between
kills the user keeps editing (new summary values, a tag added and the previous one
removed, a file uploaded and the previous one deleted, on every run), so every restart has
work and ops of several generations are in flight, in backoff and pending when the process
dies. At the end one clean push must exit 0 and the server must hold exactly what the
local view showed before it (the intended state): nothing lost, nothing applied twice (a
stale tag add, upload or delete replayed after a later one would show up as a resurrected
tag or file, or a missing one).
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from crash import check_store_sound, kill_after_requests

import mirror.api as mapi
from mirror.outbox.status import outbox_status
from mirror.server.faults import Fault, FaultPlan
from mirror.server.http import store_uploaded_file
from mirror.server.seed import generate
from mirror.server.testing import serve_in_thread
from mirror.settings import Settings
from mirror.store import open_store
from mirror.store import runs as store_runs
from mirror.sync.engine import SyncOptions
from mirror.sync.runner import sync
from mirror.upstream.client import WandbClient
from mirror.upstream.http import RetryPolicy

E, P = "kill", "proj"
RUNS = 24
KILLS = 20


def _scale() -> float:
    return float(os.environ.get("MIRROR_STRESS_SCALE", "1"))


def _state(summary: dict[str, Any], config: dict[str, Any], tags: list[str], notes: Any,
           files: dict[str, Any]) -> dict[str, Any]:
    return {"summary": {k: v for k, v in summary.items() if k.startswith("k")},
            "config": config, "tags": sorted(tags), "notes": notes or None,
            "files": dict(sorted(files.items()))}


def _edit(api: mapi.Api, run_ids: list[str], i: int, tmp: Path) -> None:
    """Generation ``i`` of edits on every run."""
    for n, run_id in enumerate(run_ids):
        run = api.run(f"{E}/{P}/{run_id}")
        run.summary[f"k{i % 3}"] = i * 1000 + n
        if i % 4 == 3 and "k0" in run.summary:
            del run.summary["k0"]
        run.config["gen"] = i
        run.tags.append(f"g{i}")
        if f"g{i - 1}" in run.tags:
            run.tags.remove(f"g{i - 1}")
        run.notes = f"generation {i}"
        run.update()
        if n % 3 == 0:
            path = tmp / f"file-{i}.txt"
            path.write_text(f"{run_id} generation {i}")
            run.upload_file(str(path), root=str(tmp))
            for f in run.files():
                if f.name == f"file-{i - 1}.txt":
                    f.delete()


def _snapshot(api: mapi.Api, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """What the local view shows for every run: the intended server state."""
    api.flush()
    out = {}
    for run_id in run_ids:
        view = api.run(f"{E}/{P}/{run_id}")
        out[run_id] = _state(dict(view.summary._json_dict), dict(view.config), view.tags,
                             view.notes, {f.name: f.md5 for f in view.files()})
    return out


def _server_state(up: Any, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    with up.session() as s:
        for run_id in run_ids:
            rec = store_runs.get_run(s, E, P, run_id)
            assert rec is not None and rec.pk is not None
            config = {k: v["value"] for k, v in (rec.config or {}).items() if k != "_wandb"}
            files = {f.name: f.md5 for f in store_runs.list_files(s, rec.pk)}
            out[run_id] = _state(rec.summary or {}, config, rec.tags, rec.notes, files)
    return out


@pytest.mark.slow
def test_sigkill_during_push_loses_nothing_and_applies_nothing_twice(tmp_path: Path) -> None:
    kills = max(2, round(KILLS * _scale()))  # 20 at scale 1; CI (0.2) kills 4 times
    up = open_store(tmp_path / "up" / "mirror.db")
    gen = generate(up, runs=RUNS, steps=2, keys=1, seed=11, entity=E, project=P)
    for run_id in gen.run_ids:
        store_uploaded_file(up, E, P, run_id, "seed.txt", io.BytesIO(b"seed"), size=4)
    home = tmp_path / "home"
    files_dir = tmp_path / "files"
    files_dir.mkdir()
    rng = random.Random(20261127)
    killed = generations = 0
    spent = {"sync": 0.0, "edits": 0.0, "killed pushes": 0.0, "final push": 0.0}
    clock = time.monotonic()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.monotonic()
        spent[phase] += now - clock
        clock = now

    try:
        with serve_in_thread(up) as srv:
            local = open_store(home / "mirror.db")
            settings = Settings(home=home, db_url=local.url, base_url=srv.url,
                                api_key=srv.api_key)
            client = WandbClient(settings, policy=RetryPolicy(base_delay=0.01, max_delay=0.05))
            assert sync(local, settings, [f"{E}/{P}"], SyncOptions(full=True),
                        client=client).ok
            client.close()
            lap("sync")
            api = mapi.Api(store=local, settings=settings)
            # Latency on every request stretches a push over many requests' time.
            srv.faults = FaultPlan([Fault(route="*", kind="latency", probability=1.0,
                                          latency_ms=8)])
            env = {**os.environ, "MIRROR_HOME": str(home), "WANDB_BASE_URL": srv.url,
                   "WANDB_API_KEY": srv.api_key}
            cmd = [sys.executable, "-m", "mirror.commands.push", "--json", "--batch-runs", "2",
                   "--max-wait", "5"]
            while killed < kills:
                assert generations < 3 * kills, f"only {killed} pushes killed mid-way"
                _edit(api, gen.run_ids, generations, files_dir)
                generations += 1
                lap("edits")
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                # A random moment: after 1 to 60 requests of this push (one generation's
                # push sends about 60, a push after a kill more).
                killed += kill_after_requests(proc, srv, rng.randint(1, 60))
                lap("killed pushes")
            intended = _snapshot(api, gen.run_ids)  # read-your-writes: what the user sees
            srv.faults = FaultPlan()
            final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
            lap("final push")

            status = outbox_status(local)
            assert status["pending"] == 0 and status["conflicts"] == 0
            assert status["dead_letters"] == 0
            server = _server_state(up, gen.run_ids)
            for run_id in gen.run_ids:
                assert server[run_id] == intended[run_id], run_id
                assert server[run_id]["tags"] == ["bench", f"g{generations - 1}"]
                assert server[run_id]["config"]["gen"] == generations - 1
            assert _snapshot(api, gen.run_ids) == intended  # and the view did not move
            local.close()
    finally:
        up.close()
    print(f"killed {killed} pushes mid-way over {generations} edit generations; seconds: "
          + ", ".join(f"{k} {v:.1f}" for k, v in spent.items()))
    check_store_sound(local, blobs_too=False)
