"""The daemon's log: a rotating file under ``MIRROR_HOME`` (and stderr in the foreground).

Rotation keeps an always-on process from filling the disk of the laptop it serves
(5 MB x 4 files by default). Messages never contain the API key: they are built from our
own typed errors, whose messages are made from explicit fields (``mirror.errors``).
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["configure_logging", "log_to_stderr"]

FORMAT = "%(asctime)s %(levelname)-7s %(threadName)s %(name)s: %(message)s"


def configure_logging(
    path: Path,
    *,
    stderr: bool = False,
    level: int = logging.INFO,
    max_bytes: int = 5 * 1024 * 1024,
    backups: int = 3,
) -> Callable[[], None]:
    """Send the ``mirror`` loggers to ``path`` (rotated) and optionally stderr.

    Returns a function that removes and closes the handlers again (tests, and a clean
    shutdown that wants the last lines flushed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("mirror")
    fmt = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = []
    file_handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handlers.append(file_handler)
    if stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    old_level = logger.level
    logger.setLevel(level)

    def remove() -> None:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(old_level)

    return remove


def log_to_stderr(level: int = logging.INFO) -> Callable[[], None]:
    """Also send the ``mirror`` loggers to stderr (foreground mode); returns the remover."""
    logger = logging.getLogger("mirror")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(level)
    logger.addHandler(handler)

    def remove() -> None:
        logger.removeHandler(handler)
        handler.close()

    return remove
