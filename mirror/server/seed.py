"""Deterministic demo and benchmark data for a store (``mirror serve --seed demo``).

The server is the upstream of the project's tests, benchmarks and ``mirror demo``, and
there is no W&B account here, so the data the official client reads must be made up,
yet look like real W&B data in every way the client and the mirror care about:

* :func:`seed_demo`: one project with a bayes sweep (``metric: val_loss, minimize``) and
  20 runs covering the states (finished, failed, crashed, running), tags, groups, job
  types, wrapped and nested configs, summaries with ``NaN`` and a unicode key, one run
  whose steps start at 100, 1,000+ history steps of sparse metrics (``val_loss`` every
  10 steps, an image once), system-metric events, and the usual run files
  (``wandb-metadata.json``, ``config.yaml``, ``output.log``, ``model.pt``, a PNG).
* :func:`generate`: plain runs of any size (e.g. one run of 100,000 steps) for
  benchmarks, written through the bulk ``save_history`` path.

Everything is a function of the arguments: ids, values, timestamps (fixed, W&B's
``2024-01-01T00:00:00Z`` format) and file bytes come from ``random.Random`` seeded with a
string, so two seeds of empty stores give identical databases and blob caches, and tests
can assert on exact values. Writes are upserts by natural key, so seeding twice is a
no-op.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import yaml

from mirror.paths import run_storage_id, wandb_time
from mirror.records import FileRecord, ProjectRecord, RunRecord, SweepRecord
from mirror.server.http import merge_history_keys
from mirror.store import Store, blobs, history
from mirror.store import runs as store_runs

DEMO_EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_ADJECTIVES = ["brisk", "calm", "dark", "eager", "fancy", "gentle", "hazy", "icy", "jolly",
               "keen", "lively", "misty", "noble", "odd", "proud", "quiet", "rapid", "silent",
               "tidy", "vivid"]
_NOUNS = ["sun", "river", "forest", "meadow", "cloud", "ocean", "field", "star", "breeze",
          "dawn", "frost", "glade", "hill", "lake", "moon", "night", "pine", "rain", "sky",
          "wave"]

DEMO_RUNS = 20
IMAGE_NAME = "media/images/sample_0_abc.png"
SWEEP_CONFIG_KEYS = ("lr", "batch_size", "dropout")


@dataclass
class SeedResult:
    """What a seeding wrote (ids in creation order), for tests and the CLI's message."""

    entity: str
    project: str
    run_ids: list[str] = field(default_factory=list)
    sweep_id: str | None = None
    history_rows: int = 0
    event_rows: int = 0
    files: int = 0


def _ident(rng: random.Random, n: int = 8) -> str:
    """A W&B-style id: ``n`` chars of ``[a-z0-9]``."""
    return "".join(rng.choice(_ALPHABET) for _ in range(n))


def _png(width: int = 16, height: int = 16) -> bytes:
    """A real RGB PNG of a gradient (stored deflate blocks: byte-identical everywhere)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(
        b"\x00" + b"".join(bytes((x * 255 // (width - 1), y * 255 // (height - 1), 128))
                           for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b""))


def _wrap_config(values: dict[str, Any], wandb_meta: dict[str, Any]) -> dict[str, Any]:
    """W&B's stored config form: ``{"k": {"value": v, "desc": null}, "_wandb": {...}}``."""
    out: dict[str, Any] = {k: {"desc": None, "value": v} for k, v in values.items()}
    out["_wandb"] = {"desc": None, "value": wandb_meta}
    return out


def _config_yaml(wrapped: dict[str, Any]) -> bytes:
    """The run file ``config.yaml`` as the SDK writes it (``wandb_version: 1`` first)."""
    doc = {"wandb_version": 1, **{k: wrapped[k] for k in sorted(wrapped)}}
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode("utf-8")


def _wandb_meta(python: str = "3.11.7") -> dict[str, Any]:
    return {
        "cli_version": "0.31.0",
        "python_version": python,
        "is_jupyter_run": False,
        "is_kaggle_kernel": False,
        "start_time": DEMO_EPOCH,
        "framework": "torch",
        "m": [],
        "t": {"1": [1, 5, 55], "2": [1, 5, 55], "3": [13, 16, 23], "4": python,
              "5": "0.31.0", "8": [5], "13": "linux-x86_64"},
    }


def _save_files(store: Store, session: Any, run_pk: int, files: dict[str, bytes],
                stamp: str, mimetypes: dict[str, str]) -> None:
    for name in sorted(files):
        # Not fsynced: seeded data is regenerated at will, and fsyncs would triple the time.
        info = blobs.put_bytes(store, files[name], session=session, now=float(DEMO_EPOCH),
                               durable=False)
        store_runs.save_file(session, run_pk, FileRecord(
            name=name, size_bytes=info.size, md5=info.md5_b64,
            mimetype=mimetypes.get(name, "application/octet-stream"),
            updated_at=stamp, blob_hash=info.hash,
        ))


def _project(entity: str, project: str, description: str, run_count: int) -> ProjectRecord:
    digest = hashlib.sha256(f"{entity}/{project}".encode()).digest()
    return ProjectRecord(
        entity=entity, name=project,
        upstream_id=base64.b64encode(f"Project:v1:{project}:{entity}".encode()).decode(),
        internal_id=str(int.from_bytes(digest[:3], "big") + 1),
        description=description, created_at=wandb_time(DEMO_EPOCH), run_count=run_count,
    )


# --- the demo project -------------------------------------------------------------------


def seed_demo(store: Store, entity: str = "mirror", project: str = "demo") -> SeedResult:
    """Seed the demo project (see the module docstring); deterministic and idempotent."""
    rng = random.Random(f"wandb-mirror demo {entity}/{project}")
    result = SeedResult(entity=entity, project=project)
    run_ids = [_ident(rng) for _ in range(DEMO_RUNS)]
    sweep_id = _ident(rng)
    sweep_members = set(range(10, 15))
    states = {4: "failed", 9: "failed", 14: "failed", 7: "crashed", 12: "crashed",
              18: "running", 19: "running"}
    tag_sets = [["baseline"], ["baseline", "resnet"], ["augment"], [],
                ["resnet", "augment", "long"]]
    png = _png()
    best_sweep_loss = math.inf

    with store.transaction() as s:
        store_runs.save_project(s, _project(entity, project, "Demo project seeded by wandb-mirror",
                                      DEMO_RUNS))

    for i, run_id in enumerate(run_ids):
        r = random.Random(f"{entity}/{project}/{run_id}")
        state = states.get(i, "finished")
        in_sweep = i in sweep_members
        first_step = 100 if i == 5 else 0
        n_steps = 1000 + (i * 37) % 300
        created = DEMO_EPOCH + i * 3600
        lr = round(10 ** r.uniform(-4, -1), 6)
        batch_size = r.choice([32, 64, 128])
        dropout = round(r.uniform(0.0, 0.5), 3)
        values: dict[str, Any] = {
            "lr": lr,
            "batch_size": batch_size,
            "dropout": dropout,
            "epochs": 10 + i % 5,
            "seed": i,
            "optimizer": {"name": r.choice(["adam", "sgd", "adamw"]),
                          "betas": [0.9, 0.999], "eps": 1e-8,
                          "schedule": {"kind": "cosine", "warmup_steps": 100}},
            "model": {"arch": r.choice(["resnet18", "resnet50", "vit-s"]),
                      "layers": r.choice([2, 4, 8]), "act": "relu",
                      "widths": [64, 128, 256]},
            "dataset": "cifar10",
        }
        config = _wrap_config(values, _wandb_meta())

        decay = 0.002 + r.random() * 0.004
        floor = 0.05 + r.random() * 0.2
        rows: list[dict[str, Any]] = []
        val_losses: list[float] = []
        runtime = 0.0
        for k in range(n_steps):
            step = first_step + k
            runtime = round(k * 0.5 + r.random() * 0.01, 6)
            loss = round(floor + 2.3 * math.exp(-decay * k) + r.gauss(0, 0.02), 6)
            row: dict[str, Any] = {
                "loss": loss,
                "acc": round(max(0.0, min(1.0, 1.0 - loss / 2.5)), 6),
                "lr": round(lr * (0.5 + 0.5 * math.cos(math.pi * k / n_steps)), 8),
            }
            if k % 10 == 0:
                val = round(loss + 0.05 + abs(r.gauss(0, 0.03)), 6)
                row["val_loss"] = val
                val_losses.append(val)
            if k == 0:
                row["examples"] = {"_type": "image-file", "path": IMAGE_NAME,
                                   "sha256": hashlib.sha256(png).hexdigest(),
                                   "size": len(png), "format": "png",
                                   "width": 16, "height": 16}
            if state == "failed" and k == n_steps - 1:
                row["loss"] = math.nan  # diverged: a non-finite value in history
            row["_step"] = step
            row["_runtime"] = runtime
            row["_timestamp"] = round(created + runtime, 6)
            rows.append(row)
        last = rows[-1]
        last_step = first_step + n_steps - 1
        heartbeat = created + math.ceil(runtime)

        events: list[dict[str, Any]] = []
        t = 0.0
        while t <= runtime:
            events.append({
                "system.cpu": round(20 + 60 * r.random(), 3),
                "system.memory": round(30 + 10 * r.random(), 3),
                "system.gpu.0.gpu": round(70 + 30 * r.random(), 3),
                "system.network.sent": int(t * 1e5),
                "_runtime": round(t, 3),
                "_timestamp": round(created + t, 3),
                "_wandb": True,
            })
            t += 15.0

        best_val = min(val_losses)
        summary: dict[str, Any] = {
            "loss": last["loss"], "acc": last["acc"], "lr": last["lr"],
            "val_loss": val_losses[-1], "best_val_loss": best_val,
            "examples": rows[0]["examples"],
            "δ_loss": round(rows[0]["loss"] - last["acc"], 6),
            "精度": last["acc"],
            "_step": last_step, "_runtime": runtime, "_timestamp": last["_timestamp"],
            "_wandb": {"runtime": int(runtime)},
        }
        if state == "failed" or i == 0:
            summary["grad_norm"] = math.nan
        if in_sweep:
            best_sweep_loss = min(best_sweep_loss, val_losses[-1])

        host = f"gpu-node-{i % 4}"
        commit = hashlib.sha1(f"{project}-{i}".encode()).hexdigest()
        metadata = {
            "os": "Linux-6.5.0-1015-x86_64-with-glibc2.35",
            "python": "CPython 3.11.7",
            "startedAt": wandb_time(created),
            "args": ["--lr", str(lr), "--batch-size", str(batch_size)],
            "program": "/home/demo/project/train.py",
            "codePath": "train.py",
            "git": {"remote": "https://example.com/demo/project.git", "commit": commit},
            "email": "demo@example.com",
            "root": "/home/demo/project",
            "host": host,
            "username": "demo",
            "executable": "/home/demo/.venv/bin/python",
            "cpu_count": 8,
            "cpu_count_logical": 16,
            "gpu": "NVIDIA A100-SXM4-40GB",
            "gpu_count": 1,
            "gpu_nvidia": [{"name": "NVIDIA A100-SXM4-40GB", "memoryTotal": "42949672960"}],
            "memory": {"total": "68719476736"},
        }
        log_lines = [f"{wandb_time(created + k * 60)[:-1]}.000000 epoch {k}: "
                     f"loss={rows[min(k * 100, n_steps - 1)]['loss']}" for k in range(10)]
        if state == "failed":
            log_lines.append(f"ERROR {wandb_time(heartbeat)[:-1]}.000000 RuntimeError: "
                             "loss is NaN")
        files = {
            "wandb-metadata.json": json.dumps(metadata, indent=2).encode("utf-8"),
            "config.yaml": _config_yaml(config),
            "output.log": ("\n".join(log_lines) + "\n").encode("utf-8"),
            "model.pt": r.randbytes(200_000 + i * 5_000),
            IMAGE_NAME: png,
        }
        mimetypes = {"wandb-metadata.json": "application/json", "config.yaml": "text/yaml",
                     "output.log": "text/plain", IMAGE_NAME: "image/png"}
        stamp = wandb_time(heartbeat)
        rec = RunRecord(
            entity=entity, project=project, run_id=run_id,
            storage_id=run_storage_id(entity, project, run_id),
            display_name=f"{_ADJECTIVES[i]}-{_NOUNS[(i * 7) % len(_NOUNS)]}-{i + 1}",
            state=state, config=config, summary=summary,
            system_metrics={k: v for k, v in events[-1].items() if k != "_wandb"},
            tags=list(tag_sets[i % len(tag_sets)]) + (["sweep"] if in_sweep else []),
            notes=f"demo run {i + 1}" if i % 3 == 0 else None,
            description=None,
            group_name=None if in_sweep else ["exp-a", "exp-b", None][i % 3],
            job_type="eval" if i % 5 == 4 else "train",
            commit=commit, host=host, username=entity, user_name="Mirror Demo",
            created_at=wandb_time(created), heartbeat_at=stamp, updated_at=stamp,
            history_line_count=len(rows), events_line_count=len(events),
            file_count=len(files), last_step=last_step,
            history_keys=merge_history_keys(None, rows, last_step),
            sweep_name=sweep_id if in_sweep else None, source="wandb",
        )
        with store.transaction() as s:
            pk = store_runs.save_run(s, rec)
            history.save_history(s, pk, rows)
            history.save_events(s, pk, events)
            _save_files(store, s, pk, files, stamp, mimetypes)
        result.run_ids.append(run_id)
        result.history_rows += len(rows)
        result.event_rows += len(events)
        result.files += len(files)

    sweep_config = {
        "method": "bayes",
        "metric": {"name": "val_loss", "goal": "minimize"},
        "parameters": {
            "lr": {"distribution": "log_uniform_values", "min": 0.0001, "max": 0.1},
            "batch_size": {"values": [32, 64, 128]},
            "dropout": {"distribution": "uniform", "min": 0.0, "max": 0.5},
        },
        "program": "train.py",
    }
    with store.transaction() as s:
        store_runs.save_sweep(s, SweepRecord(
            entity=entity, project=project, sweep_id=sweep_id,
            upstream_id=base64.b64encode(
                f"Sweep:v1:{sweep_id}:{project}:{entity}".encode()).decode(),
            display_name="demo-sweep", method="bayes", state="FINISHED",
            description="Bayesian search over lr, batch_size and dropout",
            config=yaml.safe_dump(sweep_config, sort_keys=False),
            best_loss=best_sweep_loss,
            created_at=wandb_time(DEMO_EPOCH + 10 * 3600),
            updated_at=wandb_time(DEMO_EPOCH + 15 * 3600),
            run_count=len(sweep_members), run_count_expected=None,
        ))
    result.sweep_id = sweep_id
    return result


# --- benchmark sizes --------------------------------------------------------------------


def generate(
    store: Store,
    *,
    runs: int = 1,
    steps: int = 100_000,
    keys: int = 10,
    seed: int = 0,
    entity: str = "mirror",
    project: str = "bench",
    chunk: int = 20_000,
) -> SeedResult:
    """Runs of ``steps`` dense history rows with ``keys`` metrics (``m0``...), for benchmarks.

    Fast: rows go to ``save_history`` in chunks of ``chunk`` inside one transaction per
    run; ``historyKeys`` is computed directly (every key is a number in every row).
    """
    rng = random.Random(f"wandb-mirror generate {seed} {entity}/{project}")
    result = SeedResult(entity=entity, project=project)
    metric_names = [f"m{k}" for k in range(keys)]
    with store.transaction() as s:
        store_runs.save_project(s, _project(entity, project, "Benchmark data", runs))
    for i in range(runs):
        run_id = _ident(rng)
        created = DEMO_EPOCH + i * 60
        rand = rng.random
        n_events = max(1, steps // 100)
        stamp = wandb_time(created + math.ceil(steps * 0.1))
        type_counts = {name: {"typeCounts": [{"type": "number", "count": steps}]}
                       for name in [*metric_names, "_step", "_runtime", "_timestamp"]}
        rec = RunRecord(
            entity=entity, project=project, run_id=run_id,
            storage_id=run_storage_id(entity, project, run_id),
            display_name=f"bench-{i}", state="finished",
            config=_wrap_config({"steps": steps, "keys": keys, "seed": seed}, _wandb_meta()),
            summary={}, tags=["bench"], username=entity,
            created_at=wandb_time(created), heartbeat_at=stamp, updated_at=stamp,
            history_line_count=steps, events_line_count=n_events, file_count=0,
            last_step=steps - 1 if steps else None,
            history_keys={"lastStep": steps - 1 if steps else -1, "keys": type_counts},
            source="wandb",
        )
        last: dict[str, Any] = {}
        with store.transaction() as s:
            pk = store_runs.save_run(s, rec)
            for start in range(0, steps, chunk):
                rows = []
                for step in range(start, min(steps, start + chunk)):
                    row: dict[str, Any] = {name: round(rand(), 6) for name in metric_names}
                    row["_step"] = step
                    row["_runtime"] = round(step * 0.1, 3)
                    row["_timestamp"] = round(created + step * 0.1, 3)
                    rows.append(row)
                history.save_history(s, pk, rows)
                last = rows[-1]
            events = [{"system.cpu": round(100 * rand(), 3), "_runtime": float(k * 15),
                       "_timestamp": float(created + k * 15), "_wandb": True}
                      for k in range(n_events)]
            history.save_events(s, pk, events)
            store_runs.update_run(s, pk, summary=dict(last))
        result.run_ids.append(run_id)
        result.history_rows += steps
        result.event_rows += n_events
    return result


__all__ = ["DEMO_EPOCH", "IMAGE_NAME", "SeedResult", "generate", "seed_demo"]
