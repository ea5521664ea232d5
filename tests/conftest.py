"""Shared fixtures: a real, migrated SQLite store in tmp_path; a clean environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirror.store import Store, open_store

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """No WANDB_*/MLFLOW_*/MIRROR_* or proxy variable of the developer leaks into a test."""
    for key in list(os.environ):
        if key == "MIRROR_STRESS_SCALE":  # CI's bound on stress tests is meant for them
            continue
        if key.startswith(("WANDB_", "MLFLOW_", "MIRROR_")) or key.lower().endswith("_proxy"):
            monkeypatch.delenv(key, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / "wandb-data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("NETRC", str(home / "netrc"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "mirror.db"


@pytest.fixture
def store(store_path: Path) -> Iterator[Store]:
    """A real store file, created through the alembic migrations (never create_all)."""
    s = open_store(store_path)
    try:
        yield s
    finally:
        s.close()



@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[Store, Any]]:
    """A store seeded with the demo project (a sweep, 20 runs, history, events, files)."""
    from mirror.server.seed import seed_demo

    s = open_store(tmp_path / "upstream" / "mirror.db")
    res = seed_demo(s)
    yield s, res
    s.close()


@pytest.fixture
def server(upstream: tuple[Store, Any]) -> Iterator[Any]:
    """`mirror serve --authoritative` over ``upstream`` on a free 127.0.0.1 port, in a
    thread; stopped (connections closed, threads joined) when the test ends."""
    from mirror.server.testing import serve_in_thread

    with serve_in_thread(upstream[0], authoritative=True) as srv:
        yield srv
