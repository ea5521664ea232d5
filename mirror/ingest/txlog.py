"""Frames of a wandb transaction log (``run-<id>.wandb``), read incrementally and safely.

The SDK writes every record of an offline run to this file in LevelDB's log format with
a W&B header (protocol facts, from the SDK's writers):

* a 7-byte header: ``b":W&B"``, magic ``0xBEE1`` (little-endian uint16), version ``0``;
* then 32 KiB blocks of chunks: ``crc32 (uint32 LE) | length (uint16 LE) | type (uint8) |
  data``; a chunk never crosses a block boundary, and a block's last < 7 bytes are zero
  padding; ``type`` is FULL (1) or FIRST (2) / MIDDLE (3) / LAST (4) for a record split
  over blocks. The checksum is zlib's CRC-32 of the data, seeded with the CRC-32 of the
  type byte (not LevelDB's masked CRC-32C).

wandb >= 0.2x reads these files only in its Go core; the Python ``DataStore`` of older
releases is gone from 0.31.0 (and refused to run outside the SDK's internal process), so
this module frames the bytes and the wandb package's own protobuf ``Record`` parses each
record (:mod:`mirror.ingest.records`).

Reading is **incremental and verifiable**: :func:`scan` starts at any record boundary an
earlier scan returned and feeds the bytes of every *complete* record it yields into a
running sha256, so a caller that keeps ``(offset, sha256)`` can later tell a log that
grew (same prefix: resume at ``offset``) from one that was rewritten (read it whole). A
truncated or corrupt tail is not an exception: the scan stops at the last good record
and says why in :attr:`Scan.problem` (a log the SDK is still writing usually ends in a
partial record; the next scan picks it up once it is complete).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from mirror.errors import ImportError_

__all__ = ["BLOCK", "HEADER", "Frame", "Scan", "prefix_digest", "scan"]

BLOCK = 32768
_CHUNK_HEADER = 7
HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (_FULL, _FIRST, _MIDDLE, _LAST)}
_unpack = struct.Struct("<IHB").unpack_from


@dataclass(frozen=True)
class Frame:
    """One complete record: its bytes and where it ends in the file (a resume point)."""

    data: bytes
    end: int


@dataclass
class Scan:
    """The outcome of one :func:`scan`, filled in while its frames are consumed.

    ``end`` is the offset just past the last complete record (where the next scan
    starts), ``records`` how many complete records were read, ``digest`` the sha256 of
    bytes ``[0, end)`` and ``problem`` why the scan stopped before the end of the file
    (None: it read every byte).
    """

    path: Path
    start: int
    end: int
    records: int = 0
    problem: str | None = None
    truncated: bool = False  # the tail is an incomplete record, not a corrupt one
    _hash: Any = field(default=None, repr=False)

    @property
    def digest(self) -> str:
        return str(self._hash.hexdigest())


def prefix_digest(path: Path, length: int) -> tuple[Any, int]:
    """A sha256 object over the first ``length`` bytes of ``path`` and how many it read
    (fewer when the file is shorter now: it was rewritten)."""
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as fh:
        while done < length:
            buf = fh.read(min(1 << 20, length - done))
            if not buf:
                break
            h.update(buf)
            done += len(buf)
    return h, done


def check_header(path: Path) -> None:
    """Raise :class:`ImportError_` unless ``path`` starts with the W&B log header."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(HEADER))
    except OSError as exc:
        raise ImportError_(f"cannot read {path}: {exc.strerror or exc}") from exc
    if head != HEADER:
        what = "is empty" if not head else "does not start with the W&B log header"
        raise ImportError_(f"{path} {what}: not a wandb transaction log",
                           hint="Give the folder of an offline run (wandb/offline-run-*), "
                           "written by the SDK with WANDB_MODE=offline.")


def scan(path: Path, start: int = 0, prefix: Any = None) -> tuple[Scan, Iterator[Frame]]:
    """Frames of ``path`` from byte ``start`` (0 or an ``end`` a previous scan returned).

    ``prefix`` is the sha256 object of bytes ``[0, start)`` (see :func:`prefix_digest`);
    it is extended with every complete record. Returns the :class:`Scan` (complete once
    the iterator is exhausted) and the iterator.
    """
    if start == 0:
        check_header(path)
    result = Scan(path=path, start=start, end=max(start, len(HEADER)))
    result._hash = prefix if prefix is not None else hashlib.sha256()
    return result, _frames(path, result)


def _frames(path: Path, out: Scan) -> Iterator[Frame]:
    with open(path, "rb") as fh:
        if out.start == 0:
            out._hash.update(fh.read(len(HEADER)))
        yield from _read(fh, out)


def _read(fh: BinaryIO, out: Scan) -> Iterator[Frame]:
    pos = out.end  # absolute offset of the next chunk
    block_start = pos - pos % BLOCK
    fh.seek(block_start)
    block = fh.read(BLOCK)
    i = pos - block_start
    pending: list[bytes] = []  # chunks of a split record (data only)
    raw: list[bytes] = []  # the same chunks with headers and padding, for the digest
    update = out._hash.update
    while True:
        if BLOCK - i < _CHUNK_HEADER:  # the block's zero padding
            pad = block[i:]
            if len(block) < BLOCK:  # the file ends inside the padding: wait for more
                if pad.strip(b"\x00"):
                    out.problem = f"corrupt padding at byte {block_start + i}"
                elif pending:
                    out.problem, out.truncated = "the last record is incomplete", True
                return
            if pad.strip(b"\x00"):
                out.problem = f"corrupt padding at byte {block_start + i}"
                return
            raw.append(pad)
            block_start += BLOCK
            block = fh.read(BLOCK)
            i = 0
            if not pending:
                update(b"".join(raw))
                raw.clear()
                out.end = block_start
        if i >= len(block):
            if pending:
                out.problem, out.truncated = "the last record is incomplete", True
            return
        if len(block) - i < _CHUNK_HEADER:
            out.problem, out.truncated = "the last record header is incomplete", True
            return
        crc, length, kind = _unpack(block, i)
        data_end = i + _CHUNK_HEADER + length
        if kind not in _TYPE_CRC or data_end > BLOCK:
            out.problem = f"corrupt record header at byte {block_start + i}"
            return
        if data_end > len(block):
            out.problem, out.truncated = "the last record is incomplete", True
            return
        data = block[i + _CHUNK_HEADER:data_end]
        if zlib.crc32(data, _TYPE_CRC[kind]) != crc:
            out.problem = f"checksum mismatch in the record at byte {block_start + i}"
            return
        if (kind in (_FULL, _FIRST)) == bool(pending):
            out.problem = f"record chunks out of order at byte {block_start + i}"
            return
        raw.append(block[i:data_end])
        i = data_end
        if kind in (_FIRST, _MIDDLE):
            pending.append(data)
            continue
        if pending:
            pending.append(data)
            data = b"".join(pending)
            pending.clear()
        update(b"".join(raw))
        raw.clear()
        out.end = block_start + i
        out.records += 1
        yield Frame(data, out.end)
