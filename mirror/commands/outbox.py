"""``mirror outbox``: see and steer the queued edits (list, show, retry, discard, resolve).

Mounted by ``mirror/cli.py`` as a group (``app.add_typer(outbox_app, name="outbox")``).
Nothing here talks to the network: these commands only read and change the local queue;
``mirror push`` sends it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mirror.commands.common import JsonOpt, StoreOpt, emit_json, err, handle_errors, settings_for

__all__ = ["outbox_app"]

outbox_app = typer.Typer(
    name="outbox",
    help="See and steer queued offline edits: list, show, retry, discard, resolve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

STATES = ("pending", "in_flight", "retry", "held", "done", "failed", "conflict")


def _open(store: Path | None) -> Any:
    from mirror.store import open_store

    return open_store(settings_for(store), create=False)


def _describe(op: Any) -> str:
    """One line saying what an op changes."""
    p = op.payload
    if op.kind in ("summary", "config", "meta"):
        parts = [f"{k}={_cell(v)}" for k, v in p.get("keys", {}).items()]
        text = ", ".join(parts)
    elif op.kind == "tags":
        text = " ".join([f"+{t}" for t in p.get("add", [])] +
                        [f"-{t}" for t in p.get("remove", [])])
    elif op.kind == "file_put":
        text = f"{p.get('name')} ({p.get('size')} bytes)"
    elif op.kind == "file_delete":
        text = str(p.get("name"))
    else:
        text = ""
    conflicted = p.get("conflicted")
    if conflicted:
        text += f" [conflict: {', '.join(conflicted)}]"
    return text if len(text) <= 80 else text[:77] + "..."


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return "(deleted)" if not value else _short(value[0])
    return _short(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 30 else text[:27] + "..."


def _op_dict(op: Any, run: str) -> dict[str, Any]:
    return {"id": op.id, "run": run, "kind": op.kind, "state": op.state,
            "attempts": op.attempts, "created_at": op.created_at,
            "next_attempt_at": op.next_attempt_at, "last_error": op.last_error,
            "payload": op.payload, "base": op.base}


@outbox_app.command("list")
@handle_errors
def list_cmd(
    state: Annotated[
        list[str] | None,
        typer.Option("--state", help=f"Only these states (repeatable): {', '.join(STATES)}."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many ops.")] = 200,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List queued ops (oldest first) with their state, attempts and last error.

    Example: mirror outbox list --state conflict --state failed
    """
    from mirror.outbox.status import outbox_status
    from mirror.store import outbox as outbox_store

    for name in state or []:
        if name not in STATES:
            raise typer.BadParameter(f"unknown state {name!r}", param_hint="--state")
    s = _open(store)
    try:
        with s.session() as session:
            ops = outbox_store.list_ops(session, states=state or None, limit=limit)
            refs = outbox_store.run_refs(session, [op.run_pk for op in ops])
        status = outbox_status(s)
    finally:
        s.close()
    paths = {pk: ref.path for pk, ref in refs.items()}
    if json_out:
        emit_json({"status": status,
                   "ops": [_op_dict(op, paths.get(op.run_pk, "?")) for op in ops]})
        return
    now = time.time()
    table = Table(title=f"outbox: {status['pending']} pending, {status['conflicts']} "
                  f"conflict(s), {status['dead_letters']} dead letter(s)")
    for col in ("id", "run", "kind", "state", "tries", "age", "change", "last error"):
        table.add_column(col, overflow="fold")
    for op in ops:
        table.add_row(str(op.id), paths.get(op.run_pk, "?"), op.kind, op.state,
                      str(op.attempts), _age(now - op.created_at), _describe(op),
                      op.last_error or "")
    err.print(table)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


@outbox_app.command("show")
@handle_errors
def show_cmd(
    op_id: Annotated[int, typer.Argument(help="The op's id (see `mirror outbox list`).")],
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show one op in full: payload, base values, state, error and its conflicts.

    Example: mirror outbox show 12
    """
    from mirror.outbox.resolve import OutboxActionError
    from mirror.store import outbox as outbox_store

    s = _open(store)
    try:
        with s.session() as session:
            op = outbox_store.get_op(session, op_id)
            if op is None:
                raise OutboxActionError(f"no outbox op {op_id}")
            ref = outbox_store.run_refs(session, [op.run_pk]).get(op.run_pk)
            conflicts = outbox_store.list_conflicts(session, op_id=op_id, unresolved=False)
    finally:
        s.close()
    doc = _op_dict(op, ref.path if ref else "?")
    doc["conflicts"] = [
        {"id": c.id, "key": c.key, "base": c.base, "local": c.local, "remote": c.remote,
         "resolved": c.resolution} for c in conflicts
    ]
    if json_out:
        emit_json(doc)
        return
    table = Table(title=f"outbox op {op_id}", show_header=False)
    for key in ("run", "kind", "state", "attempts", "last_error"):
        table.add_row(key, str(doc[key]))
    table.add_row("change", _describe(op))
    table.add_row("payload", repr(op.payload))
    table.add_row("base", repr(op.base))
    for c in doc["conflicts"]:
        table.add_row(f"conflict {c['key']}",
                      f"base {_cell(c['base'])} | ours {_cell(c['local'])} | "
                      f"theirs {_cell(c['remote'])}" + (f" ({c['resolved']})"
                                                        if c["resolved"] else ""))
    err.print(table)


@outbox_app.command("retry")
@handle_errors
def retry_cmd(
    op_ids: Annotated[list[int] | None, typer.Argument(help="Op ids (default: every dead "
                                                       "letter).")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Make dead letters (or the given ops) due again; `mirror push` then sends them.

    Example: mirror outbox retry && mirror push
    """
    from mirror.outbox.resolve import retry_ops

    s = _open(store)
    try:
        n = retry_ops(s, list(op_ids) if op_ids else None)
    finally:
        s.close()
    if json_out:
        emit_json({"retried": n})
    else:
        err.print(f"{n} op(s) due again; run `mirror push` to send them.")


@outbox_app.command("discard")
@handle_errors
def discard_cmd(
    op_ids: Annotated[list[int], typer.Argument(help="Op ids to drop for good.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Drop ops: their edits are never pushed and leave the local view.

    Example: mirror outbox discard 12 13 --yes
    """
    from mirror.outbox.resolve import discard_ops

    if not yes and not json_out:
        typer.confirm(f"Discard {len(op_ids)} op(s)? Their edits will not be pushed.",
                      abort=True, err=True)
    s = _open(store)
    try:
        n = discard_ops(s, list(op_ids))
    finally:
        s.close()
    if json_out:
        emit_json({"discarded": n})
    else:
        err.print(f"discarded {n} op(s).")


@outbox_app.command("resolve")
@handle_errors
def resolve_cmd(
    op_id: Annotated[int, typer.Argument(help="The conflicted op's id.")],
    ours: Annotated[bool, typer.Option("--ours", help="Keep the local value (queued again, "
                                       "based on upstream's current value).")] = False,
    theirs: Annotated[bool, typer.Option("--theirs", help="Keep upstream's value; drop "
                                         "the local one.")] = False,
    key: Annotated[str | None, typer.Option("--key", help="Only this key (default: every "
                                            "conflicted key of the op).")] = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Settle a conflict: keep ours (re-queue) or theirs (drop ours).

    Example: mirror outbox resolve 12 --ours && mirror push
    """
    from mirror.outbox.resolve import resolve_conflict

    if ours == theirs:
        raise typer.BadParameter("give exactly one of --ours or --theirs")
    s = _open(store)
    try:
        result = resolve_conflict(s, op_id, "ours" if ours else "theirs", key=key)
    finally:
        s.close()
    if json_out:
        emit_json(result)
    elif result["requeued_op"] is not None:
        err.print(f"resolved {result['resolved']} conflict(s) with the local value: queued "
                  f"as op {result['requeued_op']}; run `mirror push`.")
    else:
        err.print(f"resolved {result['resolved']} conflict(s) with upstream's value.")


@outbox_app.command("status")
@handle_errors
def status_cmd(store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """The queue in figures: pending, oldest age, conflicts, dead letters, last push.

    Example: mirror outbox status --json
    """
    from mirror.outbox.status import outbox_status

    s = _open(store)
    try:
        status = outbox_status(s)
    finally:
        s.close()
    if json_out:
        emit_json(status)
        return
    table = Table(title="outbox", show_header=False)
    for key, value in status.items():
        if key == "by_state":
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "empty"
        elif key == "last_push" and isinstance(value, dict):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value.get("at", 0)))
            value = (f"{when}: {'ok' if value.get('ok') else 'incomplete'}, "
                     f"{value.get('acked', 0)} acked" +
                     (f", paused: {value['paused']}" if value.get("paused") else ""))
        table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    err.print(table)


def main() -> None:
    """``python -m mirror.commands.outbox ...``: the group on its own."""
    outbox_app()


if __name__ == "__main__":
    main()
