"""The durable de-duplication state behind exactly-once delivery.

Exactly-once needs one number per stream to survive a crash: the highest sequence number
the agent has taken. Two files in ``<data_dir>`` hold it:

- ``dedup.streams``: which stream owns which slot. An append-only file of C-core frames
  (CRC32C-checked), each a MessagePack array ``[slot, sender_node, sender_incarnation,
  agent, epoch]``, written when a stream first appears.
- ``dedup.table``: the slots, eight bytes each (little-endian), memory-mapped. Recording
  a take is one aligned 8-byte store into the mapping: no system call per message.

Durability, precisely: the store lands in the operating system's page cache the moment
it is made, before the message is handed to the agent, so it survives the *process*
being killed at any moment (an aligned 8-byte store cannot be torn by that). It reaches
the disk at the next ``msync``: with the default policy ``"interval"`` at most
``fsync_interval`` seconds later (0.05 s), with ``"always"`` before the acknowledgement
leaves (acknowledgements wait for it), with ``"never"`` when the operating system
decides. A machine crash can lose the updates of the last interval; the messages they
cover are then delivered again if the sender still retries them.

Recovery reads the stream file up to the first damaged or torn record (truncating
there) and then the slots. Compaction rewrites both files with only the live streams
(those active within the de-duplication window) when more than half the slots belong
to forgotten streams; the new files are written beside the old ones, synced and renamed
over them.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Literal

import msgpack

from . import core
from ._delivery import StreamKey
from ._errors import ConfigurationError, DecodeError

FsyncPolicy = Literal["interval", "always", "never"]
STREAMS = "dedup.streams"
TABLE = "dedup.table"
SLOT = struct.Struct("<Q")
GROW = 4096  # slots added at a time (32 KiB)


class DedupLog:
    def __init__(self, directory: Path, *, fsync: FsyncPolicy = "interval") -> None:
        if fsync not in ("interval", "always", "never"):
            raise ConfigurationError("fsync must be 'interval', 'always' or 'never'")
        self.directory = directory
        self.fsync_policy = fsync
        self._slots: dict[StreamKey, int] = {}
        self._streams_fd = -1
        self._table_fd = -1
        self._map: mmap.mmap | None = None
        self._capacity = 0
        self._store = SLOT.pack_into
        self.dirty = False
        self.records_written = 0

    # -- opening and recovery -----------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str], *, fsync: FsyncPolicy = "interval") -> tuple[DedupLog, dict[StreamKey, int]]:
        """Open (creating) the state in ``data_dir``; returns it and the recovered watermarks."""
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        log = cls(directory, fsync=fsync)
        watermarks = log._recover()
        # Start from compact files holding exactly what was recovered.
        log._rewrite(watermarks)
        return log, watermarks

    def _recover(self) -> dict[StreamKey, int]:
        streams = self.directory / STREAMS
        if not streams.exists():
            return {}
        data = streams.read_bytes()
        owners: dict[int, StreamKey] = {}
        good = 0
        while len(data) - good >= core.HEADER_SIZE:
            total = core.HEADER_SIZE + int.from_bytes(data[good + 8 : good + 12], "big")
            if total > len(data) - good or total > core.HEADER_SIZE + 64 * 1024:
                break
            try:
                [frame] = core.FrameDecoder(max_payload=64 * 1024).feed(data[good : good + total])
                record = msgpack.unpackb(frame.payload)
                if type(record) is not list or len(record) != 5 or type(record[0]) is not int:
                    break
                owners[record[0]] = (record[1], record[2], record[3], record[4])
            except (DecodeError, ValueError, TypeError, msgpack.UnpackException):
                break
            good += total
        table = self.directory / TABLE
        values = table.read_bytes() if table.exists() else b""
        watermarks: dict[StreamKey, int] = {}
        for slot, key in owners.items():
            offset = slot * SLOT.size
            if offset + SLOT.size <= len(values):
                seq = SLOT.unpack_from(values, offset)[0]
                if seq:
                    watermarks[key] = seq
        return watermarks

    # -- recording -------------------------------------------------------------------------------

    def record(self, key: StreamKey, seq: int) -> None:
        """Note that ``key``'s agent took everything up to ``seq`` (in the page cache at once)."""
        slot = self._slots.get(key)
        if slot is None:
            slot = self._new_slot(key)
        assert self._map is not None
        self._store(self._map, slot * 8, seq)
        self.records_written += 1
        self.dirty = True

    def _new_slot(self, key: StreamKey) -> int:
        slot = len(self._slots)
        if slot >= self._capacity:
            self._grow(self._capacity + GROW)
        data = core.encode_frame(msgpack.packb([slot, *key]))
        view = memoryview(data)
        while view:
            view = view[os.write(self._streams_fd, view) :]
        self._slots[key] = slot
        return slot

    def _grow(self, capacity: int) -> None:
        if self._map is not None:
            self._map.flush()
            self._map.close()
        os.ftruncate(self._table_fd, capacity * SLOT.size)
        self._map = mmap.mmap(self._table_fd, capacity * SLOT.size)
        self._capacity = capacity

    def sync(self) -> None:
        """msync the slots and fsync the stream file (blocking: call from a worker thread)."""
        if self.dirty and self._map is not None:
            self.dirty = False
            self._map.flush()
            os.fsync(self._streams_fd)

    def needs_compaction(self, live: int) -> bool:
        """Whether most slots belong to streams forgotten since (``live`` are still tracked)."""
        return len(self._slots) > 2 * GROW and live < len(self._slots) // 2

    def compact(self, live: dict[StreamKey, int]) -> None:
        """Replace both files with ones holding only ``live`` watermarks."""
        self._rewrite(live)

    def _rewrite(self, live: dict[StreamKey, int]) -> None:
        capacity = max(GROW, -(-len(live) // GROW) * GROW)
        streams_tmp = self.directory / (STREAMS + ".tmp")
        table_tmp = self.directory / (TABLE + ".tmp")
        records = []
        table = bytearray(capacity * SLOT.size)
        slots: dict[StreamKey, int] = {}
        for slot, (key, seq) in enumerate(live.items()):
            slots[key] = slot
            records.append(core.encode_frame(msgpack.packb([slot, *key])))
            SLOT.pack_into(table, slot * SLOT.size, seq)
        for path, content in ((streams_tmp, b"".join(records)), (table_tmp, bytes(table))):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        self.close()
        os.replace(table_tmp, self.directory / TABLE)
        os.replace(streams_tmp, self.directory / STREAMS)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._streams_fd = os.open(self.directory / STREAMS, os.O_WRONLY | os.O_APPEND)
        self._table_fd = os.open(self.directory / TABLE, os.O_RDWR)
        self._map = mmap.mmap(self._table_fd, capacity * SLOT.size)
        self._capacity = capacity
        self._slots = slots
        self.dirty = False

    def close(self) -> None:
        if self._map is not None:
            self._map.flush()
            self._map.close()
            self._map = None
        for fd in (self._streams_fd, self._table_fd):
            if fd >= 0:
                os.fsync(fd)
                os.close(fd)
        self._streams_fd = self._table_fd = -1
