"""The mirror answers like W&B: ``mirror.Api`` vs the official client on the same store.

A store is seeded with the demo project (20 runs of every state, a sweep, sparse and
non-finite metrics, system metrics, files) and served by ``mirror serve``; the official
``wandb.Api`` reads it over HTTP while ``mirror.Api`` reads the SAME file directly. For
every run, every read of the import/export guide must agree: run attributes, config,
summary, ``history()`` (default, ``samples``, ``keys``, events), ``scan_history()``,
files, and for the sweep its runs and ``best_run()``; for the project, runs under a set of
filters and orders.

Sampled rows agree because both sides use ``mirror.sampling.sample_evenly``;
against W&B's real servers, which rows ``samples`` picks is unspecified (it is not part of
the client contract), so only the count and the first/last rows could be compared there.

Known difference (server side, see ``test_nan_in_sampled_history``): ``sampledHistory``
rows holding NaN are inline JSON, which wandb-core (Go) cannot parse; W&B's server is
not known to send NaN there either.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

try:
    from mirror.server.seed import DEMO_RUNS, SeedResult, seed_demo
    from mirror.server.testing import RunningServer, serve_in_thread
except ImportError as exc:  # pragma: no cover - the server is written in parallel
    pytest.skip(f"mirror serve is not available yet ({exc})", allow_module_level=True)

wandb = pytest.importorskip("wandb")

from mirror.api import Api, CommError  # noqa: E402
from mirror.store import Store, open_store  # noqa: E402

pytestmark = pytest.mark.wandb_client


@dataclass
class Pair:
    """The official client and the mirror, over the same seeded store."""

    official: Any
    mirror: Api
    seeded: SeedResult
    server: RunningServer

    @property
    def path(self) -> str:
        return f"{self.seeded.entity}/{self.seeded.project}"

    def runs(self, i: int) -> tuple[Any, Any]:
        run_path = f"{self.path}/{self.seeded.run_ids[i]}"
        return self.official.run(run_path), self.mirror.run(run_path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    home = tmp_path_factory.mktemp("equality")
    with pytest.MonkeyPatch.context() as mp:
        # Module scope runs before conftest's per-test environment cleaning: do it here.
        for key in list(os.environ):
            if key.startswith(("WANDB_", "MIRROR_")) or key.lower().endswith("_proxy"):
                mp.delenv(key)
        for name in ("CONFIG", "CACHE", "DATA"):
            mp.setenv(f"WANDB_{name}_DIR", str(home / f"wandb-{name.lower()}"))
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("NETRC", str(home / "netrc"))
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        store: Store = open_store(home / "mirror.db")
        seeded = seed_demo(store)
        with serve_in_thread(store) as server:
            official = wandb.Api(overrides={"base_url": server.url}, api_key=server.api_key)
            with Api(overrides={"store": str(home / "mirror.db"),
                                "base_url": server.url}) as mirror:
                yield Pair(official, mirror, seeded, server)
        store.close()


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: NaN equals NaN, 1 equals 1.0 (wandb-core re-encodes numbers)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and isinstance(a, bool) == isinstance(b, bool)


RUN_INDEXES = range(DEMO_RUNS)
ATTRIBUTES = ("id", "name", "display_name", "state", "tags", "notes", "group", "job_type",
              "commit", "created_at", "heartbeat_at", "url", "path", "entity", "project",
              "sweep_name", "storage_id", "description", "lastHistoryStep")


@pytest.mark.parametrize("i", RUN_INDEXES)
def test_run_attributes_config_summary(pair: Pair, i: int) -> None:
    official, mirror = pair.runs(i)
    for name in ATTRIBUTES:
        assert getattr(mirror, name) == getattr(official, name), name
    assert same(mirror.config, official.config)
    assert same(mirror.rawconfig, official.rawconfig)
    assert same(mirror.summary._json_dict, official.summary._json_dict)
    assert same(mirror.history_keys, official.history_keys)
    assert same(mirror.metadata, official.metadata)


@pytest.mark.parametrize("i", RUN_INDEXES)
def test_history_sampled(pair: Pair, i: int) -> None:
    official, mirror = pair.runs(i)
    for kwargs in (
        {},
        {"samples": 7},
        {"keys": ["val_loss"]},
        {"keys": ["acc", "lr"], "samples": 13},
        {"keys": ["acc"], "x_axis": "_runtime", "samples": 5},
        {"stream": "events"},
        {"stream": "events", "samples": 3},
    ):
        want = official.history(pandas=False, **kwargs)
        got = mirror.history(pandas=False, **kwargs)
        assert same(got, want), kwargs
    frame_want, frame_got = official.history(samples=9), mirror.history(samples=9)
    assert list(frame_got.columns) == list(frame_want.columns)
    assert frame_got.shape == frame_want.shape


@pytest.mark.parametrize("i", RUN_INDEXES)
def test_scan_history(pair: Pair, i: int) -> None:
    official, mirror = pair.runs(i)
    for kwargs in ({}, {"keys": ["val_loss"]}, {"page_size": 100, "min_step": 5,
                                                "max_step": 333}):
        want = list(official.scan_history(**kwargs))
        got = list(mirror.scan_history(**kwargs))
        assert len(got) == len(want), kwargs
        assert same(got, want), kwargs


@pytest.mark.parametrize("i", RUN_INDEXES)
def test_files(pair: Pair, i: int) -> None:
    official, mirror = pair.runs(i)

    def listing(run: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        return [(f.name, f.size, f.md5, f.mimetype) for f in run.files(**kwargs)]

    assert listing(mirror) == listing(official)
    assert listing(mirror, pattern="%.json") == listing(official, pattern="%.json")
    assert len(mirror.files()) == len(official.files())


def test_file_download_bytes(pair: Pair, tmp_path: Path) -> None:
    official, mirror = pair.runs(0)
    for name in ("wandb-metadata.json", "model.pt"):
        official.file(name).download(root=str(tmp_path / "official")).close()
        mirror.file(name).download(root=str(tmp_path / "mirror")).close()
        assert (tmp_path / "mirror" / name).read_bytes() == \
            (tmp_path / "official" / name).read_bytes()


FILTERS_AND_ORDERS = [
    (None, "+created_at"),
    (None, "-created_at"),
    ({"state": "finished"}, "-summary_metrics.acc"),
    ({"config.lr": {"$gt": 0.001}}, "+config.lr.value"),
    ({"tags": "baseline"}, "-heartbeat_at"),
    ({"$or": [{"state": "crashed"}, {"jobType": "eval"}]}, "+created_at"),
    ({"$and": [{"config.optimizer.name": {"$in": ["adam", "sgd"]}},
               {"summary_metrics.val_loss": {"$lt": 0.5}}]}, "+summary_metrics.val_loss"),
    ({"displayName": {"$regex": "^[a-h]"}}, "-config.batch_size"),
    ({"group": None}, "+summary_metrics.grad_norm"),
]


@pytest.mark.parametrize(("filters", "order"), FILTERS_AND_ORDERS)
def test_runs_filters_and_orders(pair: Pair, filters: dict[str, Any] | None, order: str) -> None:
    want = pair.official.runs(pair.path, filters, order=order, per_page=7)
    got = pair.mirror.runs(pair.path, filters, order=order, per_page=7)
    assert [r.id for r in got] == [r.id for r in want]
    assert len(got) == len(want)


def test_sweep_runs_and_best_run(pair: Pair) -> None:
    sweep_path = f"{pair.path}/{pair.seeded.sweep_id}"
    want, got = pair.official.sweep(sweep_path), pair.mirror.sweep(sweep_path)
    assert [r.id for r in got.runs] == [r.id for r in want.runs]
    assert (got.name, got.state, got.config, got.order) == (
        want.name, want.state, want.config, want.order)
    for order in (None, "+val_loss", "-acc", "+config.lr", "loss"):
        best = got.best_run(order=order)
        assert best is not None and best.id == want.best_run(order=order).id, order


def test_nan_in_sampled_history(pair: Pair) -> None:
    """sampledHistory is inline JSON, which cannot carry NaN (wandb-core's Go parser
    rejects it), so the server sends null there; the local Api keeps the stored NaN."""
    failed = next(i for i in RUN_INDEXES if pair.runs(i)[1].state == "failed")
    official, mirror = pair.runs(failed)
    want = official.history(keys=["loss"], samples=2000, pandas=False)
    got = mirror.history(keys=["loss"], samples=2000, pandas=False)
    assert any(r["loss"] != r["loss"] for r in got), "the seeded failed run has no NaN loss"
    as_wire = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
               for r in got]
    assert same(as_wire, want)


def test_missing_run_and_sweep_errors_read_the_same(pair: Pair) -> None:
    for method, path in (("run", f"{pair.path}/nosuchrun"), ("sweep", f"{pair.path}/nosweep")):
        with pytest.raises(wandb.errors.CommError) as want:
            getattr(pair.official, method)(path)
        with pytest.raises(CommError) as got:
            getattr(pair.mirror, method)(path)
        assert got.value.message == str(want.value), method
