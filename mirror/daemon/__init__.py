"""The sync daemon: ``mirror daemon`` keeps one store current while the network allows.

Pull the configured projects, replay the outbox, upload the drop folder and import
watched MLflow stores, offline-aware and crash-only. Modules: :mod:`~mirror.daemon.loop`
(the :class:`Daemon` and ``run_daemon``), :mod:`~mirror.daemon.workers` (probe, pull,
push: the network workers), :mod:`~mirror.daemon.local` (edits, drop folder, MLflow:
the local ones), :mod:`~mirror.daemon.threads` (their one loop shape),
:mod:`~mirror.daemon.backoff` (online/offline with capped backoff),
:mod:`~mirror.daemon.lock` (one daemon per store), :mod:`~mirror.daemon.status` (what
``mirror status`` shows), :mod:`~mirror.daemon.logs` (the rotating log file) and
:mod:`~mirror.daemon.detach` (running in the background).
"""

from mirror.daemon.lock import DaemonRunningError
from mirror.daemon.loop import Daemon, DaemonConfig, run_daemon
from mirror.daemon.status import daemon_status, format_status

__all__ = [
    "Daemon",
    "DaemonConfig",
    "DaemonRunningError",
    "daemon_status",
    "format_status",
    "run_daemon",
]
