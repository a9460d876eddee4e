"""Per-target flow control: a bounded outbound queue with watermarks and overflow strategies.

``node.flow_control(target, FlowControl(...))`` puts a queue in front of one target
(an agent or a group). Sends to it land in the queue; a drain task hands them to the
transport as fast as the target takes them. The queue's length is what the design's
``apply_flow_control`` looks at:

- **high watermark** reached: backpressure is *active*. With ``slow_senders`` (the
  default) a sender waits until it is released, or gets
  :class:`~phoenix_trio.Backpressure` if it passed ``wait=False``.
- **low watermark** reached again: backpressure is released.
- **max_queue_size** reached (only possible with ``slow_senders=False``, or for
  messages that cannot wait, such as spilled ones coming back): the overflow strategy
  decides: ``drop_oldest`` drops the oldest queued message, ``drop_newest`` drops the
  new one, ``reject`` raises :class:`~phoenix_trio.Backpressure` to the sender,
  ``spill_to_disk`` writes the message to bounded segment files and replays them in
  order once the queue has drained (they survive a restart of this process),
  ``redirect`` sends it to another member of the target's group, chosen by the load
  balancer.

Every transition (active / released) and every overflow is counted, and the node emits
an observability message (``phoenix.telemetry.metric.update``) for it. Drops are never
silent: :meth:`TargetQueue.statistics` shows them.

:class:`TargetQueue` is the decision core (no I/O, no clock); :class:`SpillStore` does
the disk part; the node's drain task moves the entries.
"""

from __future__ import annotations

import os
import re
from collections import deque
from pathlib import Path
from typing import Any

import attrs
import msgpack

from . import core
from ._errors import ConfigurationError, DecodeError

STRATEGIES = ("drop_oldest", "drop_newest", "reject", "spill_to_disk", "redirect")


@attrs.frozen(slots=True)
class FlowControl:
    """The design's flow-control record, validated."""

    max_queue_size: int = 10_000
    high_watermark: int = 8_000
    low_watermark: int = 2_000
    backpressure_strategy: str = "drop_oldest"
    slow_senders: bool = True
    spill_dir: str | None = None  # required by spill_to_disk
    max_spill_bytes: int = 256 * 1024 * 1024
    segment_bytes: int = 4 * 1024 * 1024
    redirect_to: tuple[str, ...] = ()  # alternatives for redirect; default: the target's group

    def __attrs_post_init__(self) -> None:
        if self.backpressure_strategy not in STRATEGIES:
            raise ConfigurationError(f"backpressure_strategy must be one of {', '.join(STRATEGIES)}")
        if not 0 <= self.low_watermark < self.high_watermark <= self.max_queue_size:
            raise ConfigurationError("need 0 <= low_watermark < high_watermark <= max_queue_size")
        if self.backpressure_strategy == "spill_to_disk" and not self.spill_dir:
            raise ConfigurationError("spill_to_disk needs spill_dir")
        if self.segment_bytes < 4096 or self.max_spill_bytes < self.segment_bytes:
            raise ConfigurationError("segment_bytes must be at least 4096 and at most max_spill_bytes")


# Decisions TargetQueue.offer returns.
QUEUED = "queued"
WAIT = "wait"  # backpressure active and the sender may wait
BACKPRESSURE = "backpressure"  # backpressure active and the sender asked not to wait
DROPPED_NEWEST = "dropped_newest"
REJECTED = "rejected"
SPILL = "spill"
REDIRECT = "redirect"


@attrs.define
class FlowStatistics:
    target: str
    queued: int = 0
    spilled_pending: int = 0
    active: bool = False
    sent: int = 0
    dropped_oldest: int = 0
    dropped_newest: int = 0
    rejected: int = 0
    spilled: int = 0
    replayed: int = 0
    redirected: int = 0
    activations: int = 0
    releases: int = 0


class TargetQueue:
    """The decision core for one flow-controlled target. See the module docstring.

    ``offer(entry, can_wait)`` returns a decision; ``take()`` hands the drain its next
    entry; ``transitions`` collects ("active" | "released", queue length) pairs for the
    driver to report.
    """

    def __init__(self, target: str, config: FlowControl) -> None:
        self.target = target
        self.config = config
        self.queue: deque[Any] = deque()
        self.active = False
        self.spilled_pending = 0  # entries on disk, not yet replayed
        self.stats = FlowStatistics(target)
        self.transitions: list[tuple[str, int]] = []

    def offer(self, entry: Any, *, can_wait: bool) -> str:
        config = self.config
        if self.spilled_pending and config.backpressure_strategy == "spill_to_disk":
            # Keep order: once something is on disk, newer messages go behind it.
            if self.active or len(self.queue) >= config.max_queue_size:
                self.stats.spilled += 1
                self.spilled_pending += 1
                return SPILL
        if self.active and config.slow_senders:
            return WAIT if can_wait else BACKPRESSURE
        if len(self.queue) >= config.max_queue_size:
            strategy = config.backpressure_strategy
            if strategy == "drop_oldest":
                self.queue.popleft()
                self.stats.dropped_oldest += 1
            elif strategy == "drop_newest":
                self.stats.dropped_newest += 1
                return DROPPED_NEWEST
            elif strategy == "reject":
                self.stats.rejected += 1
                return REJECTED
            elif strategy == "spill_to_disk":
                self.stats.spilled += 1
                self.spilled_pending += 1
                return SPILL
            else:
                self.stats.redirected += 1
                return REDIRECT
        self.queue.append(entry)
        self._check_high()
        return QUEUED

    def _check_high(self) -> None:
        if not self.active and len(self.queue) >= self.config.high_watermark:
            self.active = True
            self.stats.activations += 1
            self.transitions.append(("active", len(self.queue)))

    def take(self) -> Any:
        entry = self.queue.popleft()
        self.stats.sent += 1
        if self.active and len(self.queue) <= self.config.low_watermark and not self.spilled_pending:
            self.active = False
            self.stats.releases += 1
            self.transitions.append(("released", len(self.queue)))
        return entry

    def wants_replay(self) -> bool:
        """Whether spilled entries should come back now (the queue has drained enough)."""
        return bool(self.spilled_pending) and len(self.queue) <= self.config.low_watermark

    def replayed(self, entries: list[Any]) -> None:
        """Entries read back from disk go to the front of the line, in order."""
        self.spilled_pending -= len(entries)
        self.stats.replayed += len(entries)
        self.queue.extend(entries)
        self._check_high()

    def statistics(self) -> FlowStatistics:
        stats = attrs.evolve(self.stats, queued=len(self.queue), spilled_pending=self.spilled_pending, active=self.active)
        return stats


_SEGMENT_RE = re.compile(r"segment-(\d{12})\.spill")


class SpillStore:
    """Bounded segment files holding spilled messages, oldest first.

    Each record is a C-core frame (CRC32C) holding one MessagePack-encoded message.
    Segments are written one after the other up to ``segment_bytes``. ``read`` hands out
    the oldest records; ``commit(n)`` says the oldest ``n`` handed out were delivered,
    which moves the durable cursor (``cursor`` file, replaced atomically) and deletes
    segments that are wholly delivered. After a restart, replay resumes at the cursor:
    records read but not committed before a crash are sent again (at-least-once), none
    is lost. ``append`` refuses (returns False) beyond ``max_bytes`` on disk.
    """

    def __init__(self, directory: str | os.PathLike[str], *, segment_bytes: int, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self._segments = sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _SEGMENT_RE.fullmatch(p.name)))
        self._write_fd = -1
        self._write_number = self._segments[-1] if self._segments else 0
        self._write_size = 0
        committed = self._load_cursor()
        # (segment, offset) of the next record to commit, and of the next record to read.
        self._commit = committed if committed and committed[0] in self._segments else ((self._segments[0], 0) if self._segments else (0, 0))
        self._read = self._commit
        self._handed_out: deque[tuple[int, int]] = deque()  # (segment, end offset) per record read
        self.bytes_on_disk = sum((self.directory / self._name(n)).stat().st_size for n in self._segments)
        self.bytes_written = 0

    def _name(self, number: int) -> str:
        return f"segment-{number:012d}.spill"

    def _load_cursor(self) -> tuple[int, int] | None:
        try:
            data = (self.directory / "cursor").read_bytes()
            return int.from_bytes(data[:8], "big"), int.from_bytes(data[8:16], "big")
        except (OSError, ValueError):
            return None

    def _save_cursor(self) -> None:
        tmp = self.directory / "cursor.tmp"
        tmp.write_bytes(self._commit[0].to_bytes(8, "big") + self._commit[1].to_bytes(8, "big"))
        os.replace(tmp, self.directory / "cursor")

    def pending_records(self) -> int:
        """Records on disk from the read position on (counts them: used once, at start-up)."""
        count = 0
        for number in self._segments:
            if number < self._read[0]:
                continue
            offset = self._read[1] if number == self._read[0] else 0
            count += len(self._read_segment(number, offset)[0])
        return count

    def append(self, payloads: list[bytes]) -> bool:
        data = b"".join(core.encode_frame(p) for p in payloads)
        if self.bytes_on_disk + len(data) > self.max_bytes:
            return False
        if self._write_fd < 0 or self._write_size + len(data) > self.segment_bytes:
            self._roll()
        view = memoryview(data)
        while view:
            view = view[os.write(self._write_fd, view) :]
        self._write_size += len(data)
        self.bytes_on_disk += len(data)
        self.bytes_written += len(data)
        return True

    def _roll(self) -> None:
        if self._write_fd >= 0:
            os.close(self._write_fd)
        self._write_number += 1
        self._segments.append(self._write_number)
        if not self._segments[:-1]:
            self._commit = self._read = (self._write_number, 0)
        self._write_fd = os.open(self.directory / self._name(self._write_number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._write_size = 0

    def sync(self) -> None:
        if self._write_fd >= 0:
            os.fsync(self._write_fd)

    def _read_segment(self, number: int, offset: int) -> tuple[list[bytes], list[int]]:
        """Records from ``offset`` on, and the end offset of each."""
        data = (self.directory / self._name(number)).read_bytes()
        records: list[bytes] = []
        ends: list[int] = []
        position = offset
        while len(data) - position >= core.HEADER_SIZE:
            total = core.HEADER_SIZE + int.from_bytes(data[position + 8 : position + 12], "big")
            if total > len(data) - position:
                break
            try:
                [frame] = core.FrameDecoder().feed(data[position : position + total])
            except DecodeError:
                break  # a torn or damaged record ends the segment
            records.append(frame.payload)
            position += total
            ends.append(position)
        return records, ends

    def read(self, limit: int) -> list[bytes]:
        """Up to ``limit`` of the oldest records not handed out yet (they stay until committed)."""
        out: list[bytes] = []
        while len(out) < limit:
            later = [n for n in self._segments if n >= self._read[0]]
            if not later:
                break
            number = later[0]
            offset = self._read[1] if number == self._read[0] else 0
            records, ends = self._read_segment(number, offset)
            take = min(len(records), limit - len(out))
            out.extend(records[:take])
            for end in ends[:take]:
                self._handed_out.append((number, end))
            if take < len(records):
                self._read = (number, ends[take - 1] if take else offset)
                break
            self._read = (number, ends[-1] if ends else offset)
            if number == self._write_number:
                break  # caught up with the writer
            self._read = (later[1], 0) if len(later) > 1 else self._read
        return out

    def commit(self, count: int) -> None:
        """The oldest ``count`` records handed out were delivered: forget them for good."""
        for _ in range(min(count, len(self._handed_out))):
            number, end = self._handed_out.popleft()
            self._commit = (number, end)
        # Delete segments wholly behind the commit cursor.
        while self._segments and (self._segments[0] < self._commit[0] or self._segment_done(self._segments[0])):
            number = self._segments.pop(0)
            path = self.directory / self._name(number)
            self.bytes_on_disk -= path.stat().st_size
            if number == self._write_number and self._write_fd >= 0:
                os.close(self._write_fd)
                self._write_fd = -1
            path.unlink()
            if self._segments and self._commit[0] == number:
                self._commit = (self._segments[0], 0)
        self._save_cursor()

    def _segment_done(self, number: int) -> bool:
        if number != self._commit[0]:
            return False
        if number == self._write_number and self._write_fd >= 0:
            return False  # still being written
        size = (self.directory / self._name(number)).stat().st_size
        return self._commit[1] >= size

    def close(self) -> None:
        if self._write_fd >= 0:
            os.fsync(self._write_fd)
            os.close(self._write_fd)
            self._write_fd = -1


def encode_spilled(target: str, message_bytes: bytes) -> bytes:
    return msgpack.packb([target, message_bytes])


def decode_spilled(record: bytes) -> tuple[str, bytes]:
    try:
        target, payload = msgpack.unpackb(record)
    except Exception as exc:
        raise DecodeError(f"bad spill record: {exc}") from None
    if type(target) is not str or type(payload) is not bytes:
        raise DecodeError("bad spill record")
    return target, payload
