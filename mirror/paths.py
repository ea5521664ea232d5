"""Names, ids and timestamps as W&B spells them, and the guard on run file names.

Run file names arrive from the network (a signed URL's path, a file_stream body, a
``createRunFiles`` list) and may later become paths on a user's disk when the mirror or
the official client downloads them. So every name is checked once, at the edge, by
:func:`validate_run_file_name`: a name that could escape its folder on any platform is
refused with :class:`mirror.errors.UnsafePathError` instead of being "cleaned", because a
silently rewritten name would alias another file.
"""

from __future__ import annotations

import base64
import re
import time

from mirror.errors import UnsafePathError

MAX_NAME_BYTES = 4096
"""Longest accepted run file name (UTF-8 bytes); W&B's own limit is lower."""

_DRIVE = re.compile(r"^[A-Za-z]:")


def validate_run_file_name(name: str) -> str:
    """Return ``name`` unchanged if it is a safe run-relative path, else raise.

    Refused: empty names, NUL and other control characters, backslashes (a separator on
    Windows), absolute paths (``/x``, ``C:x``), empty segments (``a//b``, ``a/``) and
    ``.``/``..`` segments. Nothing is normalised: ``a/./b`` is refused, not rewritten.
    """
    if not isinstance(name, str) or not name:
        raise UnsafePathError(str(name), "the name is empty")
    if "\x00" in name:
        raise UnsafePathError(name, "it contains a NUL character")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise UnsafePathError(name, "it contains a control character")
    if "\\" in name:
        raise UnsafePathError(name, "it contains a backslash")
    if name.startswith("/") or _DRIVE.match(name):
        raise UnsafePathError(name, "it is an absolute path")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise UnsafePathError(name[:64] + "...", f"it is longer than {MAX_NAME_BYTES} bytes")
    for segment in name.split("/"):
        if segment == "":
            raise UnsafePathError(name, "it has an empty path segment")
        if segment in (".", ".."):
            raise UnsafePathError(name, f"it has a {segment!r} path segment")
    return name


def validate_path_part(part: str, what: str) -> str:
    """Check one entity/project/run id taken from a URL path (a single, plain segment)."""
    if not part or part in (".", "..") or "/" in part or "\\" in part:
        raise UnsafePathError(part, f"not a valid {what}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in part):
        raise UnsafePathError(part, f"the {what} contains a control character")
    return part


def wandb_time(ts: float | None = None) -> str:
    """``ts`` (epoch seconds, default now) as W&B writes times: ``2024-01-01T00:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if ts is None else ts))


def run_storage_id(entity: str, project: str, run_id: str) -> str:
    """The opaque ``Run.id`` W&B computes: base64 of ``Run:v1:{run}:{project}:{entity}``."""
    raw = f"Run:v1:{run_id}:{project}:{entity}".encode()
    return base64.b64encode(raw).decode("ascii")
