"""wandb 0.22.3 for the tests: a cached venv at ``<repo>/.venv-wandb-0.22.3``.

The mirror must serve the SDK people still run, not only the one in the dev venv, and
0.22.3 is the last release whose ``wandb sync`` uses the pure-Python sender
(``wandb-logging-protocol.md`` 5.3). Two wandb versions cannot live in one venv, so the
legacy one gets its own, made once with ``python -m venv`` + ``pip install`` (through the
machine's usual pip configuration) and reused by later runs. Concurrent test workers
(``pytest -n 2``) take a file lock; the venv counts as ready only once a marker file is
written after a successful install, so an interrupted install is redone, not trusted.

If the venv cannot be made, the tests that need it FAIL with pip's output: a silent skip
would let CI pass without ever running the legacy client.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LEGACY_VERSION = "0.22.3"
REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_DIR = REPO_ROOT / f".venv-wandb-{LEGACY_VERSION}"
_READY = VENV_DIR / ".mirror-ready"
INSTALL_TIMEOUT = 600.0

# The environment as the test run started: conftest's autouse fixture strips proxy and
# WANDB_* variables from each test, but pip may need the machine's own settings.
_START_ENV = dict(os.environ)


def venv_python(venv: Path = VENV_DIR) -> Path:
    return venv / "bin" / "python"


def _install(venv: Path) -> None:
    """Make the venv from scratch; raises ``RuntimeError`` with the failing output."""
    shutil.rmtree(venv, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"wandb=={LEGACY_VERSION}"],
    ]
    for cmd in steps:
        try:
            proc = subprocess.run(cmd, env=_START_ENV, capture_output=True, text=True,
                                  timeout=INSTALL_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"`{' '.join(cmd)}` took over {INSTALL_TIMEOUT:.0f}s") from exc
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    check = subprocess.run(
        [str(venv_python(venv)), "-c", "import wandb; print(wandb.__version__)"],
        env=_START_ENV, capture_output=True, text=True, timeout=120, check=False,
    )
    if check.stdout.strip() != LEGACY_VERSION:
        raise RuntimeError(f"the new venv imports wandb {check.stdout.strip()!r}, not "
                           f"{LEGACY_VERSION}: {check.stderr[-2000:]}")


def ensure_legacy_wandb(venv: Path = VENV_DIR) -> Path:
    """The python of a venv holding wandb 0.22.3, made on first use; raises RuntimeError."""
    ready = venv / _READY.name
    if ready.is_file() and venv_python(venv).exists():
        return venv_python(venv)
    lock_path = venv.parent / f"{venv.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be installing right now
        try:
            if not (ready.is_file() and venv_python(venv).exists()):
                _install(venv)
                ready.write_text(f"wandb=={LEGACY_VERSION}\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return venv_python(venv)


@pytest.fixture(scope="session")
def legacy_wandb_python() -> Path:
    """Session fixture: the interpreter of the wandb 0.22.3 venv (fails, never skips)."""
    try:
        return ensure_legacy_wandb()
    except RuntimeError as exc:
        pytest.fail(
            f"could not provide wandb {LEGACY_VERSION} in {VENV_DIR}: {exc}\n"
            f"Make it by hand with: python -m venv {VENV_DIR} && "
            f"{venv_python()} -m pip install wandb=={LEGACY_VERSION} && touch {_READY}",
            pytrace=False,
        )


__all__ = ["LEGACY_VERSION", "VENV_DIR", "ensure_legacy_wandb", "legacy_wandb_python",
           "venv_python"]
