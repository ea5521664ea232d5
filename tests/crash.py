"""What the kill tests share: SIGKILL a process while it talks to the server, then check
the local store is sound (imported by tests/test_sync.py, test_outbox_kill.py, test_daemon.py)."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import time
from typing import Any

from mirror.store import Store, blobs


def kill_after_requests(proc: subprocess.Popen[bytes], srv: Any, after_requests: int) -> bool:
    """SIGKILL ``proc`` once the server has seen ``after_requests`` more requests, so the
    kill lands while the process is talking to upstream (a kill during interpreter
    start-up would test nothing). False if the process finished first."""
    start = len(srv.request_log)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if len(srv.request_log) - start >= after_requests:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return True
        time.sleep(0.002)
    if proc.poll() is None:  # never got going: still a kill, but say so in the count
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return False


def check_store_sound(store: Store, *, blobs_too: bool = True) -> int:
    """Assert ``PRAGMA integrity_check`` is ok and (``blobs_too``) that every file row
    points at a recorded blob whose bytes hash to its name. Returns how many blobs the
    file rows reference."""
    assert store.path is not None
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        if not blobs_too:
            return 0
        referenced = conn.execute(
            "SELECT DISTINCT f.blob_hash, b.hash FROM run_file f "
            "LEFT JOIN blob b ON b.hash = f.blob_hash WHERE f.blob_hash IS NOT NULL"
        ).fetchall()
    finally:
        conn.close()
    for blob_hash, row in referenced:
        assert row is not None, f"a file row points at unrecorded blob {blob_hash}"
        data = blobs.blob_path(store, blob_hash).read_bytes()
        assert hashlib.sha256(data).hexdigest() == blob_hash
    return len(referenced)
