"""The write-ahead log: Raft's hard state, log and snapshots in real files.

Layout of a WAL directory:

- ``wal-NNNNNNNN.log`` segments of records ``[u32 length][u32 crc32c][body]``, where the
  body is one type byte and a msgpack payload and the CRC covers the body. Record types:
  one ``Persist`` effect ``[term, vote, first_index, [[term, kind, data], ...]]``
  (the entries replace the log from ``first_index`` on; ``first_index`` is nil when the
  log is unchanged), so each effect is atomic on recovery; a snapshot marker
  ``[index, term, keep_log, file]``.
- ``snap-<index>-<term>.snap``: one snapshot, ``PXSN`` + u32 crc32c + msgpack, written to a
  temporary name, fsynced, then renamed into place (atomic), and the directory fsynced.

Durability promise: :meth:`WriteAheadLog.append` only encodes into memory; when
:meth:`WriteAheadLog.sync` returns, everything appended before it is on disk (one
``write`` and one ``fsync`` for the whole batch, however many ``Persist`` effects it
holds). A crash loses at most what was appended since the last completed ``sync``.
Recovery (:meth:`WriteAheadLog.open`) replays the segments and truncates a torn or
corrupt tail of the last segment; damage anywhere else raises ``StorageCorrupt``.
After a snapshot is durable the log is rewritten into a fresh segment holding just the
hard state, the snapshot marker and the entries after it; older segments and snapshot
files are then deleted.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Any

import msgpack

from .. import core
from ._core import DurableState
from ._effects import Persist, PersistSnapshot
from ._errors import StorageCorrupt
from ._messages import ENTRY_CONFIG, Entry, Snapshot
from ._storage import apply_persist

_log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_SNAP_HEADER = struct.Struct("<4sI")
_SNAP_MAGIC = b"PXSN"
_R_PERSIST = 1
_R_SNAPSHOT = 3
MAX_RECORD = 1 << 30
"""Largest record body accepted on recovery; a longer length field means a torn header."""


def _segment_name(seq: int) -> str:
    return f"wal-{seq:08d}.log"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _record(kind: int, payload: Any) -> bytes:
    body = bytes([kind]) + msgpack.packb(payload, use_bin_type=True)
    return _HEADER.pack(len(body), core.crc32c(body)) + body


def _persist_payload(term: int, vote: Any, first: int | None, entries: tuple[Entry, ...] | list[Entry]) -> list[Any]:
    return [term, vote, first, [[e.term, e.kind, e.data] for e in entries]]


class WriteAheadLog:
    """A directory of WAL segments and snapshots. Build one with :meth:`open`."""

    def __init__(self, directory: Path, state: DurableState, seq: int, *, fsync: bool) -> None:
        self.directory = directory
        self.state = state
        self.fsync = fsync
        self._seq = seq
        self._fd = os.open(directory / _segment_name(seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._buffer: list[bytes] = []
        self._compact_pending = False
        self.syncs = 0
        self.bytes_written = 0

    # -- opening and recovery -----------------------------------------------------------

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, fsync: bool = True) -> WriteAheadLog:
        """Open (creating if needed) the WAL in ``directory`` and recover its state.

        The recovered :class:`DurableState` is ``wal.state``; build the RaftNode from
        ``wal.load()``.
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        segments = sorted(p for p in path.glob("wal-*.log"))
        state = DurableState()
        for position, segment in enumerate(segments):
            cls._replay(segment, state, last=position == len(segments) - 1)
        cls._validate(path, state)
        for leftover in path.glob("*.tmp"):
            leftover.unlink()
        current = state.snapshot
        for snap_file in path.glob("snap-*.snap"):
            if current is None or snap_file.name != cls._snap_name(current):
                snap_file.unlink()
        seq = int(segments[-1].name[4:12]) if segments else 1
        return cls(path, state, seq, fsync=fsync)

    @staticmethod
    def _snap_name(snap: Snapshot) -> str:
        return f"snap-{snap.index:020d}-{snap.term:020d}.snap"

    @classmethod
    def _replay(cls, segment: Path, state: DurableState, *, last: bool) -> None:
        data = segment.read_bytes()
        pos = 0
        size = len(data)
        while pos < size:
            problem = None
            if pos + _HEADER.size > size:
                problem = "torn record header"
            else:
                length, crc = _HEADER.unpack_from(data, pos)
                end = pos + _HEADER.size + length
                if length == 0 or length > MAX_RECORD or end > size:
                    problem = "torn record"
                else:
                    body = data[pos + _HEADER.size : end]
                    if core.crc32c(body) != crc:
                        problem = "checksum mismatch"
                    else:
                        try:
                            cls._apply_record(segment.parent, state, body)
                        except StorageCorrupt:
                            raise
                        except Exception as exc:
                            problem = f"undecodable record: {exc}"
            if problem is not None:
                if not last:
                    raise StorageCorrupt(segment, pos, problem)
                _log.warning("%s: %s at byte %d; truncating the torn tail", segment, problem, pos)
                with open(segment, "r+b") as handle:
                    handle.truncate(pos)
                    handle.flush()
                    os.fsync(handle.fileno())
                return
            pos = end

    @classmethod
    def _apply_record(cls, directory: Path, state: DurableState, body: bytes) -> None:
        kind = body[0]
        payload = msgpack.unpackb(body[1:], raw=False, strict_map_key=False)
        if kind == _R_PERSIST:
            term, vote, first, raw = payload
            if type(term) is not int or (first is not None and type(first) is not int):
                raise ValueError("bad persist record")
            state.term = term
            state.vote = vote
            if first is None:
                return
            entries = []
            for offset, (term, entry_kind, data) in enumerate(raw):
                if entry_kind == ENTRY_CONFIG:
                    data = tuple(data)
                entries.append(Entry(term, first + offset, entry_kind, data))
            log = state.entries
            base = state.snapshot.index if state.snapshot is not None else 0
            expected = log[-1].index + 1 if log else base + 1
            if first > expected:
                raise ValueError(f"entries at {first} leave a gap before them (expected {expected})")
            if log:
                del log[max(first - log[0].index, 0) :]
            log.extend(e for e in entries if e.index > base)
        elif kind == _R_SNAPSHOT:
            index, term, keep, name = payload
            snap = cls._read_snapshot(directory / name)
            if (snap.index, snap.term) != (index, term):
                raise StorageCorrupt(directory / name, 0, "snapshot does not match its marker")
            state.snapshot = snap
            state.entries = [e for e in state.entries if e.index > index] if keep else []
        else:
            raise ValueError(f"unknown record type {kind}")

    @staticmethod
    def _validate(path: Path, state: DurableState) -> None:
        entries = state.entries
        if not entries:
            return
        expected = state.snapshot.index + 1 if state.snapshot is not None else 1
        if entries[0].index != expected:
            raise StorageCorrupt(path, 0, f"log starts at {entries[0].index}, expected {expected}")

    @staticmethod
    def _read_snapshot(path: Path) -> Snapshot:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StorageCorrupt(path, 0, f"snapshot unreadable: {exc}") from exc
        if len(data) < _SNAP_HEADER.size:
            raise StorageCorrupt(path, 0, "snapshot too short")
        magic, crc = _SNAP_HEADER.unpack_from(data)
        body = data[_SNAP_HEADER.size :]
        if magic != _SNAP_MAGIC or core.crc32c(body) != crc:
            raise StorageCorrupt(path, 0, "snapshot checksum mismatch")
        index, term, config, payload = msgpack.unpackb(body, raw=False, strict_map_key=False)
        return Snapshot(index, term, tuple(config), payload)

    # -- writing ------------------------------------------------------------------------

    def load(self) -> DurableState:
        """A copy of the durable state (what a restarted RaftNode is built from)."""
        s = self.state
        return DurableState(s.term, s.vote, s.snapshot, list(s.entries))

    def append(self, effects: Any) -> None:
        """Encode the ``Persist``/``PersistSnapshot`` effects among ``effects``; durable after :meth:`sync`.

        Snapshot files are written (and fsynced) here; only their markers wait for ``sync``.
        """
        buffer = self._buffer
        state = self.state
        for effect in effects:
            kind = type(effect)
            if kind is Persist:
                if effect.truncate_from is not None:
                    first = effect.truncate_from
                elif effect.entries:
                    first = effect.entries[0].index
                else:
                    first = None
                buffer.append(_record(_R_PERSIST, _persist_payload(effect.term, effect.vote, first, effect.entries)))
                apply_persist(state, effect)
            elif kind is PersistSnapshot:
                snap = effect.snapshot
                name = self._write_snapshot(snap)
                buffer.append(_record(_R_SNAPSHOT, [snap.index, snap.term, effect.keep_log, name]))
                apply_persist(state, effect)
                self._compact_pending = True

    def sync(self) -> None:
        """Write everything appended in one ``write`` and make it durable with one ``fsync``."""
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer = []
            self._write_all(self._fd, data)
            if self.fsync:
                os.fsync(self._fd)
            self.syncs += 1
        if self._compact_pending:
            self._compact_pending = False
            self._rewrite()

    def persist(self, effects: Any) -> None:
        """``append(effects)`` then ``sync()``."""
        self.append(effects)
        self.sync()

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        self.bytes_written += len(data)

    def _write_snapshot(self, snap: Snapshot) -> str:
        name = self._snap_name(snap)
        body = msgpack.packb([snap.index, snap.term, list(snap.config), snap.data], use_bin_type=True)
        tmp = self.directory / (name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._write_all(fd, _SNAP_HEADER.pack(_SNAP_MAGIC, core.crc32c(body)) + body)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / name)
        if self.fsync:
            _fsync_dir(self.directory)
        return name

    def _rewrite(self) -> None:
        """Start a fresh segment holding the whole durable state, then drop older files."""
        state = self.state
        records = []
        snap = state.snapshot
        if snap is not None:
            records.append(_record(_R_SNAPSHOT, [snap.index, snap.term, True, self._snap_name(snap)]))
        first = state.entries[0].index if state.entries else None
        records.append(_record(_R_PERSIST, _persist_payload(state.term, state.vote, first, state.entries)))
        old_seq = self._seq
        self._seq += 1
        fd = os.open(self.directory / _segment_name(self._seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._write_all(fd, b"".join(records))
        if self.fsync:
            os.fsync(fd)
            _fsync_dir(self.directory)
        os.close(self._fd)
        self._fd = fd
        for segment in self.directory.glob("wal-*.log"):
            if int(segment.name[4:12]) <= old_seq:
                segment.unlink()
        keep = self._snap_name(snap) if snap is not None else None
        for snap_file in self.directory.glob("snap-*.snap"):
            if snap_file.name != keep:
                snap_file.unlink()
        if self.fsync:
            _fsync_dir(self.directory)
