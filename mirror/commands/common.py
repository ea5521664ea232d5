"""What every ``mirror`` command shares: the consoles, ``--store``/``--json``, settings
built at the edge, and the error-to-exit-code rule.

It lives here rather than in ``mirror/cli.py`` because ``cli.py`` mounts the command
modules, so they cannot import it without a cycle.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from mirror.errors import MirrorError
from mirror.settings import Settings

__all__ = ["F", "JsonOpt", "StoreOpt", "emit_json", "err", "handle_errors", "out",
           "print_error", "settings_for"]

F = TypeVar("F", bound=Callable[..., Any])

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

StoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--store",
        help="SQLite store file (default: $MIRROR_DB_URL, else $MIRROR_HOME/mirror.db).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


def settings_for(store: Path | None) -> Settings:
    """Build settings at the edge: the environment, then the command's ``--store``."""
    settings = Settings.from_env()
    return settings.with_store(store) if store is not None else settings


def print_error(exc: MirrorError) -> None:
    """A ``MirrorError`` as one message plus its hint on stderr, no traceback."""
    err.print(f"[bold red]error:[/] {exc.message}", highlight=False, markup=True)
    if exc.hint:
        err.print(f"[yellow]hint:[/] {exc.hint}", highlight=False)


def handle_errors(fn: F) -> F:
    """A ``MirrorError`` becomes its message and hint on stderr and exit code 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MirrorError as exc:
            print_error(exc)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def emit_json(data: Any) -> None:
    """``--json`` output: one indented document on stdout (human output is on stderr)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
