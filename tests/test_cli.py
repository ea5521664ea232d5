"""The command line, run as a user runs it: a subprocess of the installed entry point."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from mirror import __version__


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mirror.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_version_and_help() -> None:
    res = run_cli("--version")
    assert res.returncode == 0
    assert __version__ in res.stdout
    res = run_cli("--help")
    assert res.returncode == 0
    for command in ("db", "status"):
        assert command in res.stdout


def test_every_command_has_help_with_an_example() -> None:
    for args in (["db", "upgrade"], ["db", "info"], ["status"]):
        res = run_cli(*args, "--help")
        assert res.returncode == 0, res.stderr
        assert "Example:" in res.stdout, f"{args} --help has no example"


def test_db_upgrade_info_status(tmp_path: Path) -> None:
    db = tmp_path / "mirror.db"
    res = run_cli("db", "upgrade", "--store", str(db), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["created"] is True and info["revision"]
    res = run_cli("db", "info", "--store", str(db), "--json")
    assert res.returncode == 0, res.stderr
    info2 = json.loads(res.stdout)
    assert info2["revision"] == info2["head"] == info["revision"]
    assert info2["counts"]["run"] == 0
    res = run_cli("status", "--json", env={"MIRROR_HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["runs"] == 0


def test_refusal_is_a_clear_error_and_leaves_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "notes.db"
    bad.write_text("my notes, not a database\n")
    before = hashlib.sha256(bad.read_bytes()).hexdigest()
    res = run_cli("db", "upgrade", "--store", str(bad))
    assert res.returncode == 1
    assert "not a SQLite database" in res.stderr
    assert "hint:" in res.stderr
    assert "Traceback" not in res.stderr
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == before


def test_missing_store_is_reported_not_created(tmp_path: Path) -> None:
    res = run_cli("db", "info", "--store", str(tmp_path / "none.db"))
    assert res.returncode == 1
    assert "no store at" in res.stderr
    assert not (tmp_path / "none.db").exists()
