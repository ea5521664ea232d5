"""The offline ``Api``, shaped like ``wandb.Api``, reading the local store.

Change ``import wandb`` / ``wandb.Api()`` into ``from mirror.api import Api`` / ``Api()``
and a script written for W&B's public API reads the local mirror instead: no network,
same objects and attributes (see :mod:`mirror.api.api` for what differs and why).
"""

from mirror.api.api import Api
from mirror.api.errors import (
    DownloadTargetExistsError,
    FileNotCachedError,
    NotMirroredError,
    OfflineEditUnavailable,
    ProjectNotFoundError,
    RunFileNotFoundError,
    RunNotFoundError,
    SweepNotFoundError,
)
from mirror.api.files import File, Files
from mirror.api.histogram import Histogram
from mirror.api.history import HistoryScan
from mirror.api.projects import Project, Projects
from mirror.api.run import Run
from mirror.api.runs import Runs
from mirror.api.summary import Summary
from mirror.api.sweeps import Sweep
from mirror.errors import CommError

__all__ = [
    "Api",
    "CommError",
    "DownloadTargetExistsError",
    "File",
    "FileNotCachedError",
    "Files",
    "Histogram",
    "HistoryScan",
    "NotMirroredError",
    "OfflineEditUnavailable",
    "Project",
    "ProjectNotFoundError",
    "Projects",
    "Run",
    "RunFileNotFoundError",
    "RunNotFoundError",
    "Runs",
    "Summary",
    "Sweep",
    "SweepNotFoundError",
]
