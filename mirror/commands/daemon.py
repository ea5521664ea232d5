"""``mirror daemon``: keep the store current in the background (see ``docs/daemon.md``).

Mounted by ``mirror/cli.py`` as a single command (``app.command("daemon")(daemon_cmd)``);
``python -m mirror.commands.daemon`` runs the same command on its own. Without
``--foreground`` the command detaches (POSIX double fork) and returns once the daemon
runs; with it, the daemon runs in this process and logs to stderr as well as to its
file, which is what systemd and launchd want.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from mirror.commands.common import err, print_error
from mirror.errors import MirrorError

__all__ = ["app", "daemon_cmd", "main"]


def daemon_cmd(
    interval: Annotated[
        float, typer.Option("--interval", min=0.05, help="Seconds between pulls (and timer "
                            "pushes/imports); also the cap of the offline backoff.")
    ] = 60.0,
    project: Annotated[
        list[str] | None,
        typer.Option("--project", help="ENTITY/PROJECT (or ENTITY) to keep pulled "
                     "(repeatable; default: every project synced before)."),
    ] = None,
    watch_mlflow: Annotated[
        list[str] | None,
        typer.Option("--watch-mlflow", help="MLflow tracking URI to import continuously: "
                     "sqlite:///mlflow.db, a file-store folder, or http(s):// (repeatable)."),
    ] = None,
    mlflow_entity: Annotated[
        str | None, typer.Option("--mlflow-entity", help="W&B entity for watched MLflow "
                                 "runs (default: WANDB_ENTITY, else the key's owner).")
    ] = None,
    mlflow_project: Annotated[
        str | None, typer.Option("--mlflow-project", help="W&B project for every watched "
                                 "MLflow run (default: one per experiment).")
    ] = None,
    watch_wandb: Annotated[
        list[Path] | None,
        typer.Option("--watch-wandb", help="Folder of offline wandb runs (wandb/, or the "
                     "WANDB_DIR holding it) to ingest as local runs, new and growing ones "
                     "(repeatable).")
    ] = None,
    wandb_project: Annotated[
        str | None, typer.Option("--wandb-project", help="ENTITY/PROJECT (or PROJECT) for "
                                 "watched offline runs (default: each run's own).")
    ] = None,
    foreground: Annotated[
        bool, typer.Option("--foreground", help="Stay in the foreground and log to stderr "
                           "too (use this under systemd/launchd).")
    ] = False,
    no_pull: Annotated[
        bool, typer.Option("--no-pull", help="Only push, upload and import; never pull.")
    ] = False,
    uploads_dir: Annotated[
        Path | None, typer.Option("--uploads-dir", help="Drop folder (default: "
                                  "$MIRROR_HOME/uploads).")
    ] = None,
    settle: Annotated[
        float, typer.Option("--settle", min=0.0, help="Seconds a dropped file must stay "
                            "unchanged before it is uploaded.")
    ] = 2.0,
    max_backoff: Annotated[
        float | None, typer.Option("--max-backoff", min=0.05, help="Longest wait between "
                                   "attempts while offline (default: --interval).")
    ] = None,
    full_every: Annotated[
        int, typer.Option("--full-every", min=1, help="Every N-th pull lists every run "
                          "(anti-entropy: deletions, edits that moved no timestamp).")
    ] = 12,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
    store: Annotated[
        Path | None,
        typer.Option("--store", help="SQLite store file (default: $MIRROR_DB_URL, else "
                     "$MIRROR_HOME/mirror.db).", show_default=False),
    ] = None,
) -> None:
    """Keep the mirror current: pull projects, push the outbox, upload dropped files,
    import watched MLflow stores, ingest watched offline wandb runs. One daemon per store;
    SIGTERM/Ctrl-C stop it.

    Offline, it keeps working locally and retries the server with capped exponential
    backoff; `mirror status` shows what it does. Log: $MIRROR_HOME/logs/daemon.log.

    Example: mirror daemon --project my-team/my-project --watch-mlflow sqlite:///mlflow.db
    """
    import logging

    from mirror.daemon.loop import DaemonConfig, run_daemon
    from mirror.settings import Settings

    try:
        settings = Settings.from_env()
        if store is not None:
            settings = settings.with_store(store)
        config = DaemonConfig(
            interval=interval, projects=tuple(project or ()),
            watch_mlflow=tuple(watch_mlflow or ()), mlflow_entity=mlflow_entity,
            mlflow_project=mlflow_project,
            watch_wandb=tuple(str(p) for p in watch_wandb or ()), wandb_project=wandb_project,
            uploads_dir=uploads_dir.expanduser().resolve() if uploads_dir else None,
            settle=settle, max_backoff=max_backoff, pull=not no_pull, full_every=full_every)
        settings.require_api_key()
    except MirrorError as exc:
        _fail(exc)
    ready = None
    if not foreground:
        from mirror.daemon.detach import can_detach, detach

        if can_detach():
            ready = detach()
        else:  # pragma: no cover - Windows
            err.print("this platform cannot detach; running in the foreground")
    level = logging.DEBUG if verbose else logging.INFO
    try:
        code = run_daemon(settings, config, log_to_stderr=ready is None, on_ready=ready,
                          log_level=level)
    except MirrorError as exc:
        _fail(exc)
    raise typer.Exit(code)


def _fail(exc: MirrorError) -> NoReturn:
    print_error(exc)
    raise typer.Exit(1)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command(name="daemon")(daemon_cmd)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
