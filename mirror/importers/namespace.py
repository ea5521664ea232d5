"""Where imported runs go on W&B: ``Namespace(entity, project)``.

The same small value W&B's removed importer exported (``wandb.apis.importers.Namespace``),
so scripts written for it run unchanged. An empty or None field means "use the default"
(the configured entity; the project mapped from the MLflow experiment), as there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Namespace:
    """A W&B ``entity/project`` to import into (either part may be left empty)."""

    entity: str | None = None
    project: str | None = None

    @classmethod
    def from_path(cls, path: str) -> Namespace:
        """``Namespace.from_path("team/proj")``; ``"proj"`` alone sets only the project."""
        parts = [p for p in path.strip().strip("/").split("/")]
        if len(parts) == 1:
            return cls(None, parts[0] or None)
        if len(parts) == 2:
            return cls(parts[0] or None, parts[1] or None)
        raise ValueError(f"expected ENTITY/PROJECT, got {path!r}")

    @property
    def path(self) -> str:
        return f"{self.entity or ''}/{self.project or ''}"

    @property
    def send_manager_overrides(self) -> dict[str, Any]:
        """The non-empty fields, as W&B's importer exposed them."""
        return {k: v for k, v in (("entity", self.entity), ("project", self.project)) if v}


__all__ = ["Namespace"]
