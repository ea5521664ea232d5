"""Running in the background without a service manager: the classic POSIX double fork.

``mirror daemon`` without ``--foreground`` detaches: the command returns once the daemon
is running (or prints why it could not start, e.g. another daemon holds the store, with
exit code 1), and the daemon lives on in a new session with no terminal. The parent
learns the outcome through a pipe, so "started" is never printed for a daemon that then
refused to start. Under systemd or launchd, use ``--foreground`` instead (they supervise
the process themselves); on platforms without ``fork`` the daemon stays in the foreground.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

__all__ = ["can_detach", "detach"]


def can_detach() -> bool:
    return hasattr(os, "fork") and hasattr(os, "setsid")


def detach(*, timeout: float = 60.0) -> Callable[[str | None], None]:
    """Fork into the background; returns ``ready(error)`` in the daemon process.

    The original process never returns: it waits for the daemon's ``ready`` call, prints
    ``started mirror daemon (pid N)`` or the error to stderr, and exits 0 or 1. The daemon
    process must call ``ready(None)`` once running, or ``ready(message)`` on failure.
    Must be called before any thread is started (``fork`` copies only the caller).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid > 0:  # the original process: report what the daemon says, then leave
        os.close(write_fd)
        code = _wait_for_report(read_fd, timeout)
        os.waitpid(pid, 0)  # the intermediate child exits at once
        os._exit(code)
    os.close(read_fd)
    os.setsid()  # a new session: no controlling terminal, immune to the shell's hangup
    if os.fork() > 0:
        os._exit(0)  # the intermediate child: the daemon is re-parented to init

    def ready(error: str | None) -> None:
        message = f"error {error}\n" if error else f"ok {os.getpid()}\n"
        try:
            os.write(write_fd, message.encode("utf-8", "replace"))
            os.close(write_fd)
        except OSError:
            pass
        _redirect_stdio()  # the original process printed the outcome; say nothing twice

    return ready


def _wait_for_report(fd: int, timeout: float) -> int:
    import select

    chunks: list[bytes] = []
    ready, _, _ = select.select([fd], [], [], timeout)
    while ready:
        data = os.read(fd, 4096)
        if not data:
            break
        chunks.append(data)
        ready, _, _ = select.select([fd], [], [], timeout)
    os.close(fd)
    text = b"".join(chunks).decode("utf-8", "replace").strip()
    if text.startswith("ok "):
        sys.stderr.write(f"started mirror daemon (pid {text[3:]}); "
                         "`mirror status` shows what it does\n")
        return 0
    if text.startswith("error "):
        sys.stderr.write(f"error: {text[6:]}\n")
        return 1
    sys.stderr.write("error: the daemon exited before reporting that it runs; see its log\n")
    return 1


def _redirect_stdio() -> None:
    """Point stdin/stdout/stderr at /dev/null: the terminal may be gone any moment."""
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
