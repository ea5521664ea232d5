"""Which run files sync downloads: ``--files all|none|<glob>...`` and ``--max-file-size``."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FilePolicy:
    """Download files matching ``patterns`` (``("*",)`` = all, ``()`` = none)."""

    patterns: tuple[str, ...] = ("*",)
    max_size: int | None = None

    @classmethod
    def parse(cls, specs: Sequence[str] | None, max_size: int | None = None) -> FilePolicy:
        specs = list(specs or ["all"])
        if specs == ["none"]:
            return cls((), max_size)
        if "all" in specs:
            return cls(("*",), max_size)
        return cls(tuple(specs), max_size)

    @property
    def downloads_anything(self) -> bool:
        return bool(self.patterns)

    def wants(self, name: str, size: int | None) -> bool:
        if not self.patterns:
            return False
        if self.max_size is not None and size is not None and size > self.max_size:
            return False
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)
