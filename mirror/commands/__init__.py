"""Command groups of the ``mirror`` CLI that live outside ``mirror/cli.py``.

Each module defines a typer app (or command) that ``mirror/cli.py`` mounts, so a feature's
command sits next to nothing but its own options and output, and ``cli.py`` stays a thin
index. Modules import their heavy dependencies (mlflow, the store) inside the command
function, so ``mirror --help`` stays fast and works without optional extras.
"""
