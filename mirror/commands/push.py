"""``mirror push``: replay the outbox's queued edits to W&B.

Mounted by ``mirror/cli.py`` as a single command (``app.command("push")(push_cmd)``);
``python -m mirror.commands.push`` runs the same command on its own (the kill test starts
it that way). Human output goes to stderr, ``--json`` prints the report on stdout.

Exit codes: 0 when every op taken was acknowledged; 1 when something needs attention or
time: a conflict, a dead letter, a paused queue (401), ops held (run still running
upstream) or still waiting out a backoff; 2 for bad usage.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from mirror.commands.common import JsonOpt, StoreOpt, emit_json, err, handle_errors, settings_for

__all__ = ["app", "main", "push_cmd"]

@handle_errors
def push_cmd(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (runs, keys, files, requests); "
                           "send nothing.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Write to runs still running upstream too (their "
                           "SDK may overwrite the edit when it finishes).")
    ] = False,
    max_wait: Annotated[
        float, typer.Option("--max-wait", min=0.0, help="Seconds to keep retrying ops that "
                            "back off (429, 5xx, network) before leaving them for later.")
    ] = 60.0,
    batch_runs: Annotated[
        int, typer.Option("--batch-runs", min=1, max=500, help="Runs read, and written, per "
                          "request (lower it for runs with very large summaries).")
    ] = 50,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Push queued offline edits (summary, config, tags, notes, files) to W&B.

    Edits are merged per key against W&B's current values right before writing, many runs
    per request; a key changed upstream since the edit becomes a conflict instead of being
    overwritten (see `mirror outbox list --state conflict`).

    Example: mirror push --dry-run && mirror push
    """
    from mirror.outbox.replay import PushOptions, plan_push, push
    from mirror.store import open_store

    settings = settings_for(store)
    options = PushOptions(force=force, max_wait=max_wait, batch_runs=batch_runs)
    s = open_store(settings, create=False)
    try:
        if dry_run:
            plan = plan_push(s, options)
            if json_out:
                emit_json(plan)
            else:
                print_plan(plan)
            return
        from mirror.upstream.client import WandbClient
        from mirror.upstream.http import RetryPolicy

        settings.require_api_key()
        # Short in-call retries: the outbox's own backoff (persisted per op) takes over
        # from there, so an outage costs seconds, not the client's full retry budget.
        client = WandbClient(settings, policy=RetryPolicy(max_attempts=4, max_elapsed=30.0))
        try:
            report = push(s, client, options, base_url=settings.base_url)
        finally:
            client.close()
    finally:
        s.close()
    if json_out:
        emit_json(report.as_dict())
    else:
        print_report(report)
    if not report.ok:
        raise typer.Exit(1)


def print_plan(plan: dict[str, Any]) -> None:
    table = Table(title=f"push plan: {plan['ops']} op(s) of {len(plan['runs'])} run(s)")
    for col in ("run", "summary", "config", "meta", "tags", "files"):
        table.add_column(col)
    for run in plan["runs"]:
        tags = run.get("tags") or {}
        tag_text = " ".join([f"+{t}" for t in tags.get("add", [])]
                            + [f"-{t}" for t in tags.get("remove", [])])
        files = [f"+{n}" for n in run.get("upload", [])] + \
            [f"-{n}" for n in run.get("delete", [])]
        if run.get("create"):
            files.insert(0, "(create run)")
        table.add_row(str(run["run"]), ", ".join(run.get("summary", [])),
                      ", ".join(run.get("config", [])), ", ".join(run.get("meta", [])),
                      tag_text, " ".join(files))
    err.print(table)
    req = plan["requests"]
    err.print(f"requests (at least): {req['read']} read, {req['write']} write, "
              f"{req['files']} for files: {req['total']} in all")


def print_report(report: Any) -> None:
    calls = report.calls
    err.print(
        f"pushed {report.ops} op(s) of {report.runs} run(s) in {report.seconds:.1f}s: "
        f"{report.acked} acknowledged ({report.written} written, {report.already} already "
        f"upstream), {report.conflicts} conflict(s), {report.dead} dead, {report.held} held, "
        f"{report.retrying} waiting; requests: {sum(calls.values())}"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(calls.items()))})" if calls else ""),
        highlight=False,
    )
    if report.recovered:
        err.print(f"recovered {report.recovered} op(s) an interrupted push left in flight "
                  "(read back before any resend)", highlight=False)
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    for error in report.errors:
        err.print(f"[red]dead letter:[/] {error}", highlight=False)
    if report.paused:
        err.print(f"[bold red]paused:[/] {report.paused}", highlight=False)
        err.print("[yellow]hint:[/] fix the API key (WANDB_API_KEY or `wandb login`), then "
                  "run `mirror push` again.", highlight=False)
    elif report.retrying:
        err.print(f"{report.retrying} op(s) will be retried by the next `mirror push`.",
                  highlight=False)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command("push")(push_cmd)


def main() -> None:
    """``python -m mirror.commands.push [options]``: the command on its own."""
    typer.run(push_cmd)


if __name__ == "__main__":
    main()
