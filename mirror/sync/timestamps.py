"""Server timestamps, shifted without changing their format.

Incremental listing sends the watermark back to the server as a string in the server's
own format: ``2024-01-01T00:00:00Z`` (SaaS), the same without ``Z`` (older servers),
sometimes with a fraction. A timestamp in another format may silently match nothing, so
we only ever shift the value and re-render it the way it came.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_TS = re.compile(
    r"^(?P<base>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(?P<frac>\.\d+)?(?P<tz>Z|[+-]\d{2}:?\d{2})?$"
)


def shift(ts: str, seconds: float) -> str:
    """``ts`` moved by ``seconds``, rendered in ``ts``'s own format.

    Unknown formats are returned unchanged (the safe choice: a later watermark only
    re-lists more runs, which key de-duplication absorbs).
    """
    m = _TS.match(ts)
    if m is None:
        return ts
    sep = "T" if "T" in m.group("base") else " "
    base = datetime.strptime(m.group("base").replace(" ", "T"), "%Y-%m-%dT%H:%M:%S")
    frac = m.group("frac") or ""
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    moved = base + timedelta(microseconds=micro) + timedelta(seconds=seconds)
    out = moved.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if frac:
        digits = len(frac) - 1
        out += "." + f"{moved.microsecond:06d}"[:digits].ljust(digits, "0")
    return out + (m.group("tz") or "")


def latest(values: list[str | None]) -> str | None:
    """The greatest timestamp string (ISO strings of one format sort as text)."""
    present = [v for v in values if v]
    return max(present) if present else None
