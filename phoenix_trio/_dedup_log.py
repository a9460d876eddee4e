"""The durable de-duplication log behind exactly-once delivery.

One append-only file per node (``<data_dir>/dedup.log``) records, for each exactly-once
stream, the highest sequence number its agent has taken. Records are frames of the C
core's wire format (CRC32C-checked), each holding a small MessagePack array:

- ``[0, stream_number, sender_node, sender_incarnation, agent, epoch]`` names a stream
  the first time the file mentions it;
- ``[1, stream_number, seq]``: the agent took everything up to ``seq``.

Durability, precisely: a record is written to the operating system (``os.write``)
before the message is handed to the agent, so it survives the *process* being killed
at any moment. It reaches the disk itself at the next ``fsync``: with the default policy
``"interval"`` at most ``fsync_interval`` seconds later (0.05 s), with ``"always"`` before
the acknowledgement leaves (acknowledgements wait for the fsync), with ``"never"`` when
the operating system decides. A machine crash can lose the records of the last
interval; the messages they cover are then delivered again if the sender still retries
them.

Recovery reads the file up to the first damaged or torn record and truncates there.
Compaction rewrites the file with only the live watermarks (streams active within the
de-duplication window) when it has grown past ``compact_bytes``; the new file is
written beside the old one, fsynced and renamed over it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgpack

from . import core
from ._errors import ConfigurationError, DecodeError
from ._delivery import StreamKey

FsyncPolicy = Literal["interval", "always", "never"]
FILE_NAME = "dedup.log"


class DedupLog:
    def __init__(self, path: Path, *, fsync: FsyncPolicy = "interval", compact_bytes: int = 32 * 1024 * 1024) -> None:
        if fsync not in ("interval", "always", "never"):
            raise ConfigurationError("fsync must be 'interval', 'always' or 'never'")
        self.path = path
        self.fsync_policy = fsync
        self.compact_bytes = compact_bytes
        self._fd = -1
        self._numbers: dict[StreamKey, int] = {}
        self._size = 0
        self.dirty = False
        self.records_written = 0

    # -- opening and recovery -----------------------------------------------------------------

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str], **options: object) -> tuple[DedupLog, dict[StreamKey, int]]:
        """Open (creating) the log in ``data_dir``; returns it and the recovered watermarks."""
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        log = cls(directory / FILE_NAME, **options)  # type: ignore[arg-type]
        watermarks = log._recover()
        log._fd = os.open(log.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        log._size = os.fstat(log._fd).st_size
        # Start every file self-contained: name the streams we carry over.
        log._rewrite(watermarks)
        return log, watermarks

    def _recover(self) -> dict[StreamKey, int]:
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        names: dict[int, StreamKey] = {}
        watermarks: dict[StreamKey, int] = {}
        good = 0
        # Frame by frame, so that the records before a damaged one are kept.
        while len(data) - good >= core.HEADER_SIZE:
            total = core.HEADER_SIZE + int.from_bytes(data[good + 8 : good + 12], "big")
            if total > len(data) - good or total > core.HEADER_SIZE + 64 * 1024:
                break
            try:
                [frame] = core.FrameDecoder(max_payload=64 * 1024).feed(data[good : good + total])
                record = msgpack.unpackb(frame.payload)
                if record[0] == 0 and len(record) == 6:
                    names[record[1]] = (record[2], record[3], record[4], record[5])
                elif record[0] == 1 and len(record) == 3 and record[1] in names:
                    key = names[record[1]]
                    if record[2] > watermarks.get(key, 0):
                        watermarks[key] = record[2]
                else:
                    break
            except (DecodeError, ValueError, TypeError, IndexError, msgpack.UnpackException):
                break
            good += total
        # Whatever follows the last whole, valid record is a torn or damaged tail.
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        return watermarks

    # -- writing ------------------------------------------------------------------------------

    def record(self, key: StreamKey, seq: int) -> None:
        """Note that ``key``'s agent took everything up to ``seq`` (written to the OS now)."""
        number = self._numbers.get(key)
        data = b""
        if number is None:
            number = self._numbers[key] = len(self._numbers) + 1
            data = core.encode_frame(msgpack.packb([0, number, *key]))
        data += core.encode_frame(msgpack.packb([1, number, seq]))
        self._write(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)
        self.records_written += 1
        self.dirty = True

    def sync(self) -> None:
        """fsync what has been written (blocking: call from a worker thread in Trio code)."""
        if self._fd >= 0 and self.dirty:
            self.dirty = False
            os.fsync(self._fd)

    def needs_compaction(self) -> bool:
        return self._size > self.compact_bytes

    def compact(self, live: dict[StreamKey, int]) -> None:
        """Replace the file with one holding only ``live`` watermarks."""
        self._rewrite(live)

    def _rewrite(self, live: dict[StreamKey, int]) -> None:
        tmp = self.path.with_suffix(".compacting")
        numbers: dict[StreamKey, int] = {}
        parts = []
        for key, seq in live.items():
            number = numbers[key] = len(numbers) + 1
            parts.append(core.encode_frame(msgpack.packb([0, number, *key])))
            parts.append(core.encode_frame(msgpack.packb([1, number, seq])))
        data = b"".join(parts)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._numbers = numbers
        self._size = len(data)
        self.dirty = False

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1
