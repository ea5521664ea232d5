"""The house rule of DESIGN.md, checked precisely: each library has one owning package.

ruff's banned-api rule (pyproject.toml) flags the imports in the editor; this test is
exact about *which* package may import *which* library (ruff's per-file ignores cannot
tell sqlalchemy from requests), and also catches imports hidden inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mirror"

OWNERS = {
    "sqlmodel": "store",
    "sqlalchemy": "store",
    "alembic": "store",
    "requests": "upstream",
    "mlflow": "importers",
    "wandb": "ingest",  # the record reader of offline-run folders
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize(
    "path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG.parent))
)
def test_library_imports_stay_in_their_package(path: Path) -> None:
    rel = path.relative_to(PKG)
    subpackage = rel.parts[0] if len(rel.parts) > 1 else None
    bad = []
    for lineno, module in _imports(path):
        top = module.split(".")[0]
        owner = OWNERS.get(top)
        if owner is not None and subpackage != owner:
            bad.append(f"{rel}:{lineno} imports {module} (only mirror/{owner} may)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("library", "owner"), [("mlflow", "importers"), ("wandb", "ingest")])
def test_optional_extras_are_imported_lazily(library: str, owner: str) -> None:
    """mlflow and wandb are optional extras: never imported at module level."""
    for path in (PKG / owner).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n.split(".")[0] == library for n in names), (
                f"{path}: import {library} inside the functions that need it"
            )
