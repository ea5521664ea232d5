"""What an op says, and the algebra on it: patches, coalescing, the read overlay. No I/O.

W&B's ``upsertBucket`` replaces whole documents (summary, config, tags) and offers no
compare-and-set, so an op never stores a snapshot: it stores, per key, the new value AND
the value it replaced when the edit was made (its *base*), which is what the 3-way merge
at replay compares the fresh upstream value with (:mod:`mirror.outbox.merge`).

Payload shapes (``payload`` / ``base`` columns of ``outbox_op``):

* ``summary``, ``config``, ``meta``: ``{"keys": {key: cell}}`` / ``{"keys": {key: cell}}``.
  A *cell* is ``[value]`` when the key holds ``value`` and ``[]`` when it is absent, so a
  deleted key (the guide's rename pattern) is ``[]`` and a key set to JSON ``null`` is
  ``[None]``: no marker value can collide with user data. Config values are unwrapped
  (``run.config`` values, not W&B's ``{"value", "desc"}``); meta keys are RunRecord field
  names (``display_name``, ``notes``, ``description``, ``group_name``, ``job_type``).
* ``tags``: ``{"add": [...], "remove": [...]}`` / ``{"tags": [...]}``: set deltas, which
  commute with upstream tag changes and are idempotent, so they never conflict.
* ``file_put``: ``{"name", "blob", "md5", "size", "mimetype"}`` / ``{"md5": base md5 or
  None}``; ``file_delete``: ``{"name"}`` / ``{"md5": ...}``.
* A coalesced op may add alternative bases, values an earlier op already sent (see
  :func:`coalesce`): ``base["also"]`` is ``{key: [cell, ...]}`` for fields, a list of
  md5s (None: no file) for files.
* ``create_run``: ``{}`` (the run's local state is uploaded as a whole).

An acknowledged op whose keys partly conflicted carries ``payload["conflicted"]``: those
keys were not written and are not overlaid.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mirror.paths import wandb_time
from mirror.records import FileRecord, RunRecord
from mirror.store.outbox import FIELD_KINDS, FILE_KINDS, OpRecord

META_FIELDS: dict[str, str] = {
    "display_name": "displayName",
    "notes": "notes",
    "description": "description",
    "group_name": "groupName",
    "job_type": "jobType",
}
"""Run fields a user edits with ``run.update()``, and their ``UpsertBucketInput`` names."""

Cell = list[Any]


# --- values ------------------------------------------------------------------------------


def cell(doc: Mapping[str, Any] | None, key: str) -> Cell:
    """``[doc[key]]`` if the key is present, else ``[]``."""
    return [doc[key]] if doc is not None and key in doc else []


def same_value(a: Any, b: Any) -> bool:
    """Equal as JSON values: numbers by value (1 == 1.0; NaN == NaN), booleans apart from
    numbers, dicts regardless of key order.

    Values round-trip through other clients (the Go-based wandb-core prints ``1.0`` as
    ``1``), so a byte comparison would see changes nobody made.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return bool(a == b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def same_cell(a: Cell, b: Cell) -> bool:
    return len(a) == len(b) and (not a or same_value(a[0], b[0]))


def unwrap(value: Any) -> Any:
    """A config entry's value: W&B stores ``{"value": v, "desc": d}``."""
    return value["value"] if isinstance(value, dict) and "value" in value else value


def unwrapped_config(wrapped: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every key of a stored (wrapped) config, unwrapped; ``_wandb`` included."""
    return {k: unwrap(v) for k, v in (wrapped or {}).items()}


def meta_value(value: Any) -> Any:
    """Meta fields compare with ``None`` and ``""`` as one: ``upsertBucket`` cannot send
    null (a null field means "keep"), so clearing a field sends the empty string."""
    return "" if value is None else value


# --- building ops --------------------------------------------------------------------------


def doc_patch(
    before: Mapping[str, Any], after: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(payload, base)`` of the keys that differ between two documents, or None.

    Keys set or changed get ``[new]``, keys removed get ``[]``; the base holds the cells
    they replace.
    """
    keys: dict[str, Cell] = {}
    base: dict[str, Cell] = {}
    for key in [*after.keys(), *(k for k in before if k not in after)]:
        old, new = cell(before, key), cell(after, key)
        if not same_cell(old, new):
            keys[key] = copy.deepcopy(new)
            base[key] = copy.deepcopy(old)
    return ({"keys": keys}, {"keys": base}) if keys else None


def meta_patch(
    before: Mapping[str, Any], after: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(payload, base)`` for changed meta fields (``None`` and ``""`` are the same)."""
    keys: dict[str, Cell] = {}
    base: dict[str, Cell] = {}
    for name in META_FIELDS:
        if name not in after:
            continue
        old, new = before.get(name), after[name]
        if meta_value(old) != meta_value(new):
            keys[name] = [new]
            base[name] = [old]
    return ({"keys": keys}, {"keys": base}) if keys else None


def tags_patch(
    before: Sequence[str], after: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(payload, base)`` as add/remove sets, or None when the sets are equal."""
    add = [t for t in dict.fromkeys(after) if t not in before]
    remove = [t for t in dict.fromkeys(before) if t not in after]
    if not add and not remove:
        return None
    return {"add": add, "remove": remove}, {"tags": list(before)}


# --- coalescing ----------------------------------------------------------------------------


@dataclass
class Coalesced:
    """One op that stands for several of the same slot: ``merged`` were folded into it."""

    op: OpRecord
    merged: list[int] = field(default_factory=list)


def coalesce(ops: Sequence[OpRecord]) -> list[Coalesced]:
    """Fold a run's ops (id order, none in flight) into one op per slot.

    Per key the last value wins and the earliest base is kept (the value upstream had
    before ANY of these edits, which is what the merge must compare with); tag deltas
    compose in order; a file's last put or delete wins. The survivor is the slot's first
    op, so ids (and thus the order of slots) are preserved.

    An op that was already sent (``attempts > 0``: its answer was lost, or its pusher died)
    may have landed, so the value it wrote is upstream's value as legitimately as the
    earliest base: such values are kept as alternative bases (``base["also"]``), or the
    next edit of the same key would meet our own earlier write and call it a conflict.
    """
    out: dict[str, Coalesced] = {}
    for op in ops:
        slot = op.slot
        if slot not in out:
            first = replace(op, payload=copy.deepcopy(op.payload), base=copy.deepcopy(op.base))
            out[slot] = Coalesced(_with_sent_values(first, op))
            continue
        target = out[slot]
        target.merged.append(op.id)
        target.op = _with_sent_values(_fold(target.op, op), op)
    return list(out.values())


def _with_sent_values(acc: OpRecord, op: OpRecord) -> OpRecord:
    """Record the values ``op`` wrote as alternative bases of ``acc`` if it was sent."""
    if op.attempts <= 0:
        return acc
    base = dict(acc.base)
    if op.kind in ("summary", "config", "meta"):
        also: dict[str, list[Cell]] = {k: list(v) for k, v in base.get("also", {}).items()}
        for key, value in op.payload.get("keys", {}).items():
            cells = also.setdefault(key, [])
            if value not in cells:
                cells.append(copy.deepcopy(value))
        base["also"] = also
    elif op.kind in FILE_KINDS:
        sent = op.payload.get("md5") if op.kind == "file_put" else None
        md5s = list(base.get("also", []))
        if sent not in md5s:
            md5s.append(sent)
        base["also"] = md5s
    else:
        return acc
    return replace(acc, base=base)


def _fold(first: OpRecord, later: OpRecord) -> OpRecord:
    if first.kind in ("summary", "config", "meta"):
        keys = dict(first.payload.get("keys", {}))
        base = dict(first.base.get("keys", {}))
        for key, value in later.payload.get("keys", {}).items():
            keys[key] = value
            if key not in base:
                base[key] = later.base.get("keys", {}).get(key, [])
        return replace(first, payload={"keys": keys}, base={**first.base, "keys": base})
    if first.kind == "tags":
        add, remove = list(first.payload.get("add", [])), list(first.payload.get("remove", []))
        for tag in later.payload.get("remove", []):
            add = [t for t in add if t != tag]
            if tag not in remove:
                remove.append(tag)
        for tag in later.payload.get("add", []):
            remove = [t for t in remove if t != tag]
            if tag not in add:
                add.append(tag)
        return replace(first, payload={"add": add, "remove": remove})
    if first.kind in FILE_KINDS:
        return replace(first, kind=later.kind, payload=copy.deepcopy(later.payload),
                       base=dict(first.base))
    return first  # create_run: one upload stands for all


# --- the read overlay ----------------------------------------------------------------------


def overlay_run(rec: RunRecord, ops: Iterable[OpRecord]) -> RunRecord:
    """Apply field ops (id order) to ``rec`` in place: what the user sees locally.

    ``rec`` must have its documents decoded. Keys an acknowledged op left in conflict
    are skipped (the conflict is parked; the view shows upstream's value).
    """
    for op in ops:
        if op.kind not in FIELD_KINDS:
            continue
        skip = set(op.payload.get("conflicted", []))
        if op.kind == "tags":
            rec.tags = apply_tags(rec.tags or [], op.payload)
            continue
        keys = {k: v for k, v in op.payload.get("keys", {}).items() if k not in skip}
        if not keys:
            continue
        if op.kind == "summary":
            rec.summary = apply_cells(rec.summary, keys)
        elif op.kind == "config":
            rec.config = apply_config_cells(rec.config, keys)
        else:
            for name, value in keys.items():
                if name in META_FIELDS and value:
                    setattr(rec, name, value[0])
    return rec


def apply_cells(doc: Mapping[str, Any] | None, keys: Mapping[str, Cell]) -> dict[str, Any]:
    out = dict(doc or {})
    for key, value in keys.items():
        if value:
            out[key] = copy.deepcopy(value[0])
        else:
            out.pop(key, None)
    return out


def apply_config_cells(
    wrapped: Mapping[str, Any] | None, keys: Mapping[str, Cell]
) -> dict[str, Any]:
    """Set/remove unwrapped values in a wrapped config, keeping each entry's ``desc``."""
    out = dict(wrapped or {})
    for key, value in keys.items():
        if not value:
            out.pop(key, None)
            continue
        old = out.get(key)
        desc = old.get("desc") if isinstance(old, dict) and "value" in old else None
        out[key] = {"value": copy.deepcopy(value[0]), "desc": desc}
    return out


def apply_tags(tags: Sequence[str], payload: Mapping[str, Any]) -> list[str]:
    removed = set(payload.get("remove", []))
    out = [t for t in tags if t not in removed]
    out += [t for t in payload.get("add", []) if t not in out]
    return out


def overlay_files(files: Iterable[FileRecord], ops: Iterable[OpRecord]) -> list[FileRecord]:
    """A run's files with pending puts added/replaced and deletes removed, by name."""
    by_name = {f.name: f for f in files}
    for op in ops:
        name = op.payload.get("name")
        if not isinstance(name, str) or op.payload.get("conflicted"):
            continue
        if op.kind == "file_delete":
            by_name.pop(name, None)
        elif op.kind == "file_put":
            by_name[name] = put_record(op)
    return [by_name[n] for n in sorted(by_name)]


def put_record(op: OpRecord) -> FileRecord:
    """The file a pending upload will create, as a listing shows it (bytes are cached)."""
    p = op.payload
    return FileRecord(
        name=str(p["name"]),
        size_bytes=p.get("size"),
        md5=p.get("md5"),
        mimetype=p.get("mimetype"),
        updated_at=wandb_time(op.created_at),
        blob_hash=p.get("blob"),
    )
