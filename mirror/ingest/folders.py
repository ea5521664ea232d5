"""Finding offline runs on disk: a run folder, its log file, or a ``wandb/`` folder.

``wandb.init()`` with ``WANDB_MODE=offline`` writes ``<dir>/wandb/offline-run-<time>-<id>/``
holding ``run-<id>.wandb`` (the transaction log) and ``files/`` (what the run saved).
A path given by the user may be any of:

* a run folder (``offline-run-*``, or an online ``run-*`` folder named explicitly);
* the ``run-<id>.wandb`` file itself;
* a ``wandb/`` folder, or the folder that holds one (``WANDB_DIR``): every
  ``offline-run-*`` folder inside (online ``run-*`` folders there are already on a server
  and are left alone; the ``latest-run`` symlink is skipped).

Anything else is refused with a message that says what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mirror.errors import ImportError_

__all__ = ["OfflineRun", "find_runs"]

_HINT = ("Give an offline run folder (wandb/offline-run-*), its run-*.wandb file, or a "
         "wandb/ folder of them, as written by the SDK with WANDB_MODE=offline.")


@dataclass(frozen=True)
class OfflineRun:
    """One offline run on disk: its folder (resolved), log file and run id."""

    folder: Path
    log: Path
    run_id: str

    @property
    def files_dir(self) -> Path:
        return self.folder / "files"


def _run_in(folder: Path) -> OfflineRun | None:
    logs = sorted(p for p in folder.glob("run-*.wandb") if p.is_file())
    if not logs:
        return None
    if len(logs) > 1:
        raise ImportError_(f"{folder} holds {len(logs)} transaction logs "
                           f"({', '.join(p.name for p in logs)}); expected one", hint=_HINT)
    log = logs[0]
    return OfflineRun(folder.resolve(), log.resolve(), log.name[len("run-"):-len(".wandb")])


def find_runs(path: str | Path, *, allow_empty: bool = False) -> list[OfflineRun]:
    """The offline runs ``path`` names (see the module docstring), in folder order.

    ``allow_empty``: a folder without runs (yet) gives ``[]`` instead of an error (the
    daemon watches ``wandb/`` folders before the first run appears).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ImportError_(f"{p} does not exist", hint=_HINT)
    if p.is_file():
        if p.suffix != ".wandb" or not p.name.startswith("run-"):
            raise ImportError_(f"{p} is not a wandb transaction log (run-<id>.wandb)",
                               hint=_HINT)
        run = _run_in(p.parent)
        assert run is not None
        return [run]
    run = _run_in(p)
    if run is not None:
        return [run]
    for root in (p, p / "wandb"):
        if not root.is_dir():
            continue
        found = [r for d in sorted(root.glob("offline-run-*"))
                 if d.is_dir() and not d.is_symlink() and (r := _run_in(d)) is not None]
        if found:
            return found
    if allow_empty and p.is_dir():
        return []
    raise ImportError_(f"{p} is not an offline wandb run: no run-*.wandb in it, and no "
                       "offline-run-* folders in it or in its wandb/ folder", hint=_HINT)
