"""wandb-mirror: an offline-first local mirror of Weights & Biases data.

``from mirror import Api`` is the drop-in for ``import wandb; wandb.Api``: the same
objects, read from the local store. The API names are imported on first use so that the
command line starts fast.
"""

from typing import Any

__version__ = "0.1.0"

_API_NAMES = ("Api", "CommError", "File", "Files", "Histogram", "Project", "Run", "Runs",
              "Sweep")

__all__ = ["__version__", *_API_NAMES]


def __getattr__(name: str) -> Any:
    if name in _API_NAMES:
        import mirror.api

        return getattr(mirror.api, name)
    raise AttributeError(f"module 'mirror' has no attribute {name!r}")
