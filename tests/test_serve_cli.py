"""`mirror serve` as a user runs it: a subprocess, then an unchanged wandb script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_serve_prints_the_environment_and_scripts_work_unchanged(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirror.cli", "serve", "--store", str(tmp_path / "m.db"),
         "--seed", "demo", "--authoritative", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        env_lines = [proc.stdout.readline().strip() for _ in range(2)]
        exports = dict(line.removeprefix("export ").split("=", 1) for line in env_lines)
        assert exports["WANDB_BASE_URL"].startswith("http://127.0.0.1:")
        assert len(exports["WANDB_API_KEY"]) >= 40
        script = (
            "import wandb\n"
            "api = wandb.Api()\n"
            "runs = api.runs('mirror/demo', filters={'state': 'finished'})\n"
            "print(len(runs), sorted(r.state for r in runs)[0])\n"
        )
        env = {**os.environ, **exports, "WANDB_SILENT": "true"}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        count, state = done.stdout.split()
        assert int(count) > 0 and state == "finished"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert exports["WANDB_API_KEY"] not in err, "the key was printed to the log"


def test_serve_refuses_a_short_key(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mirror.cli", "serve", "--store", str(tmp_path / "m.db"),
         "--api-key", "short", "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "40" in done.stderr and "Traceback" not in done.stderr
