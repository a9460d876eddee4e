"""One connection to a peer node over a byte stream (TCP, or TLS over TCP).

The connection's reader and writer run under one nursery that the node's nursery owns;
closing the connection cancels both and closes the stream. The protocol itself is
:class:`~phoenix_trio._peer_protocol.PeerProtocol`; this module only moves bytes.

Writing batches: senders append messages to a bounded pending list and return. The
writer takes everything pending at once, encodes it into as few frames as possible and
writes them with one ``send_all``; while that write is in progress the next batch
builds up. So the batch size follows the load: one message when idle, hundreds under
pressure, with no timer adding latency. When the pending list is full (``max_pending``
messages, or ``max_pending_bytes`` of large payloads: a stream of 1 MiB messages queues
a few of them, not thousands), senders wait (or get :class:`~phoenix_trio.Backpressure`
if they asked not to wait). When nothing
has been written for a heartbeat interval, the writer sends a heartbeat.

Reading: the reader feeds received bytes to the protocol and hands events to the node,
which may block on a full inbox; the reader then stops reading and TCP's window closes
on the sender: backpressure end to end.

Overlay messages (overlay mode) queue separately and go out as overlay frames after the
control frames of the same write. :meth:`Connection.finish` is the orderly close the
overlay and the parallel channels use: nothing new is accepted, everything queued is
written, then a GOODBYE as the very last frame, and the connection closes once the peer
closes its side (or after ``FINISH_TIMEOUT``). A connection may be told to wait for a
predecessor (``waits_for``): it then hands no event to the node before the predecessor
has finished, which keeps one peer's messages in order across successive connections.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from ._errors import Backpressure, EncodeError, NodeUnreachable, ProtocolError, RemoteProtocolError
from ._peer_protocol import Hello, PeerProtocol, State

if TYPE_CHECKING:
    from ._node import Node

log = logging.getLogger(__name__)

RECEIVE_SIZE = 256 * 1024
MAX_CONTROL_BYTES = 16 * 1024 * 1024  # service traffic buffered per peer before senders wait
DIRECT_WRITE_TIMEOUT = 2.0  # seconds a direct (unqueued) write may take before the connection is cut
FINISH_TIMEOUT = 2.0  # after its GOODBYE, a finishing connection waits this long for the peer to close
LARGE_PAYLOAD = 4096  # payloads from this size count against max_pending_bytes
_SIZED = (bytes, str, bytearray, memoryview)


def _large_size(entry: tuple[Any, ...]) -> int:
    """The payload size of a queued send entry when it is large, else 0 (cheap: the hot path)."""
    if len(entry) >= 6:
        data = entry[1]
        if data.__class__ in _SIZED:
            size = len(data)
            if size >= LARGE_PAYLOAD:
                return size
    return 0


class Connection:
    """See the module docstring."""

    def __init__(
        self, node: Node, stream: trio.abc.Stream, *, outbound: bool, via: tuple[str, int] | None = None, hello: Hello | None = None
    ) -> None:
        self.node = node
        self.stream = stream
        hello = hello or node._hello
        assert hello is not None  # set by Node._start before any connection exists
        self.protocol = PeerProtocol(hello, max_frame=node.config.max_frame)
        self.outbound = outbound
        self.via = via
        self.peer: Hello | None = None
        self.closed = False
        self.close_reason = ""
        self.max_pending = node.config.max_pending
        self.max_pending_bytes = node.config.max_pending_bytes
        self._pending_bytes = 0  # large payloads in _pending (see _large_size)
        # Entries: (message, flags) or (template, data, subject, trace parent, correlation id, flags).
        self._pending: list[tuple[Any, ...]] = []
        self._control: list[bytes] = []
        self._control_bytes = 0
        self._control_lot = trio.lowlevel.ParkingLot()
        # Acknowledgements for reliable messages from the peer, sent with the next write.
        self._alo_acks: list[list[Any]] = []  # [agent, first dseq, last dseq] ranges
        self._eo_acks: dict[tuple[str, int], int] = {}  # (agent, epoch) -> highest dseq
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._space_lot = trio.lowlevel.ParkingLot()
        self._drain_lot = trio.lowlevel.ParkingLot()
        self._writing = False
        self._send_lock = trio.StrictFIFOLock()  # one send_all at a time: the writer's or a direct one
        self._cancel_scope: trio.CancelScope | None = None
        self._early_events: list[object] = []
        # Overlay mode and parallel channels (see the module docstring).
        self._overlay: list[bytes] = []
        self._overlay_addresses: dict[str, tuple[str, int]] = {}
        self._finishing: str | None = None
        self.finished = trio.Event()  # set once no further event from this connection reaches the node
        self.waits_for: Connection | None = None
        self.last_heard = 0.0
        self.stalled = False  # the node stopped reading from it (a full inbox or service)
        self.peer_finished = False  # the peer closed it in order (GOODBYE)
        self.overlay_sent = 0
        self.lanes_refused = False  # a primary whose peer's lanes could not be opened: everything rides it
        # Bytes of message data per write (at least one message); None: everything pending.
        # Set on the lanes of a channel for large messages, so one write (and the peer's
        # decoding of it) never holds the event loop for long.
        self.batch_bytes: int | None = None
        self.handshake_done = trio.Event()
        self.messages_sent = 0
        self.frames_written = 0
        self.bytes_written = 0
        self.bytes_read = 0

    @property
    def peer_id(self) -> str:
        assert self.peer is not None
        return self.peer.node_id

    @property
    def channel(self) -> str:
        """The channel this connection serves: ``"control"`` for a pair's primary connection."""
        if self.outbound or self.peer is None:
            return self.protocol.local.channel
        return self.peer.channel

    @property
    def lane(self) -> int:
        if self.outbound or self.peer is None:
            return self.protocol.local.lane
        return self.peer.lane

    @property
    def finishing(self) -> bool:
        return self._finishing is not None

    @property
    def initiator(self) -> str:
        """The node that opened this connection."""
        return self.node.id if self.outbound else self.peer_id

    # -- handshake --------------------------------------------------------------------

    async def handshake(self, timeout: float) -> Hello:
        """Exchange HELLOs; raises ProtocolError, OSError or trio.TooSlowError."""
        try:
            return await self._handshake(timeout)
        finally:
            self.handshake_done.set()

    async def _handshake(self, timeout: float) -> Hello:
        await self.stream.send_all(self.protocol.hello())
        with trio.fail_after(timeout):
            while self.protocol.state is State.HANDSHAKING:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    raise ConnectionResetError("peer closed the connection during the handshake")
                self.bytes_read += len(data)
                events = self.protocol.receive_data(data)
                if events and isinstance(events[0], Hello):
                    self.peer = events[0]
                    self._early_events = events[1:]
                elif events:
                    raise RemoteProtocolError(f"peer refused the handshake: {events[0]!r}")
        assert self.peer is not None
        return self.peer

    # -- running ----------------------------------------------------------------------

    async def run(self) -> None:
        """Read and write until the peer closes, an error occurs, or the node cancels us.

        Nothing a peer sends can make this raise: protocol errors are answered with an
        ERROR frame and close this connection only; so do unexpected errors (logged).
        """
        try:
            async with trio.open_nursery() as nursery:
                self._cancel_scope = nursery.cancel_scope
                if self.closed:  # closed while registering
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._guard, self._writer)
                await self._guard(self._reader)
                nursery.cancel_scope.cancel()
        finally:
            self._mark_closed(self.close_reason or "closed")
            self.finished.set()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

    async def _guard(self, task: Any) -> None:
        try:
            await task()
        except RemoteProtocolError as exc:
            log.warning("protocol error from %s: %s", self.peer.node_id if self.peer else "?", exc)
            self.node.stats["protocol_errors"] += 1
            self.close_reason = f"protocol error: {exc}"
            with trio.move_on_after(0.5) as scope:
                scope.shield = True
                try:
                    await self.stream.send_all(self.protocol.error_bytes(exc))
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.close_reason = self.close_reason or f"connection lost: {exc!r}"
        except Exception as exc:  # a bug must not take the node down: close this connection
            log.exception("connection to %s failed", self.peer.node_id if self.peer else "?")
            self.close_reason = self.close_reason or f"internal error: {exc!r}"
        finally:
            if self._cancel_scope is not None:
                self._cancel_scope.cancel()

    async def _reader(self) -> None:
        node = self.node
        if self.waits_for is not None:  # keep the peer's messages in order across connections
            await self.waits_for.finished.wait()
            self.waits_for = None
        for event in self._early_events:
            await node._on_peer_event(self, event)
        self._early_events = []
        receive = self.stream.receive_some
        while True:
            data = await receive(RECEIVE_SIZE)
            if not data:
                self.close_reason = self.close_reason or "peer closed the connection"
                return
            self.bytes_read += len(data)
            node._heard(self)
            for event in self.protocol.receive_data(data):
                await node._on_peer_event(self, event)

    async def _writer(self) -> None:
        interval = self.node.config.heartbeat_interval
        stream = self.stream
        protocol = self.protocol
        while True:
            if not self._pending and not self._control and not self._alo_acks and not self._eo_acks and not self._overlay:
                if self._finishing is not None:
                    await self._write_goodbye()
                    return
                with trio.move_on_after(interval):
                    await self._writer_lot.park()
                if not self._pending and not self._control and not self._alo_acks and not self._eo_acks and not self._overlay:
                    if self._finishing is not None:
                        continue
                    async with self._send_lock:
                        await stream.send_all(protocol.heartbeat())
                    self.frames_written += 1
                    continue
            if self._alo_acks or self._eo_acks:
                self._control.append(
                    protocol.delivered(self._alo_acks, [(agent, dseq) for (agent, _), dseq in self._eo_acks.items()])
                )
                self._alo_acks = []
                self._eo_acks = {}
            chunks = self._control
            self._control = []
            self._control_bytes = 0
            if self._control_lot:
                self._control_lot.unpark_all()
            if self._overlay:
                self.overlay_sent += len(self._overlay)
                chunks.append(protocol.overlay(self._overlay, self._overlay_addresses))
                self._overlay = []
                self._overlay_addresses = {}
            entries = self._pending
            if self.batch_bytes is not None and len(entries) > 1:
                entries = self._take_budget(entries)
            else:
                self._pending = []
                self._pending_bytes = 0
            if self._space_lot:
                self._space_lot.unpark_all()
            if entries:
                chunks.append(self._encode(entries))
                self.messages_sent += len(entries)
            data = b"".join(chunks)
            self.bytes_written += len(data)
            self.frames_written += len(chunks)
            async with self._send_lock:
                self._writing = True
                try:
                    await stream.send_all(data)
                finally:
                    self._writing = False
            if self._drain_lot and not self._pending and not self._control:
                self._drain_lot.unpark_all()

    def _take_budget(self, entries: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        budget = self.batch_bytes or 0
        size = 0
        taken = 0
        for entry in entries:
            data = entry[1] if len(entry) >= 6 else getattr(entry[0], "data", None)
            size += len(data) if data.__class__ in (bytes, str, bytearray) else 64
            taken += 1
            if size >= budget:
                break
        self._pending = entries[taken:]
        self._pending_bytes = sum(_large_size(entry) for entry in self._pending)
        return entries[:taken]

    async def _write_goodbye(self) -> None:
        """The last frame of a finishing connection; then wait for the peer to close its side."""
        async with self._send_lock:
            await self.stream.send_all(self.protocol.goodbye(self._finishing or "finished"))
        self.frames_written += 1
        if self._drain_lot:
            self._drain_lot.unpark_all()
        with trio.move_on_after(FINISH_TIMEOUT):
            await trio.sleep_forever()  # the reader ends at the peer's EOF, which cancels us
        self.close_reason = self.close_reason or f"finished: {self._finishing}"

    def finish(self, reason: str) -> None:
        """Close in order: write everything queued, then a GOODBYE, then close when the peer does."""
        if self.closed or self._finishing is not None:
            return
        self._finishing = reason
        self.close_reason = self.close_reason or f"finished: {reason}"
        if self._writer_lot:
            self._writer_lot.unpark_all()

    def send_overlay(self, message: bytes, addresses: dict[str, tuple[str, int]] | None = None) -> bool:
        """Queue one encoded overlay message (and the addresses it mentions); False once closing."""
        if self.closed or self._finishing is not None:
            return False
        self._overlay.append(message)
        if addresses:
            self._overlay_addresses.update(addresses)
        if self._writer_lot:
            self._writer_lot.unpark_all()
        return True

    @property
    def overlay_pending(self) -> int:
        return len(self._overlay)

    async def send_now(self, entry: tuple[Any, ...]) -> bool:
        """Write one entry from the caller's task when nothing else is waiting to go.

        Saves the hand-off to the writer task (two scheduler passes per round trip), which
        is what request-response latency is made of. False when the fast path is not
        available (the caller then queues as usual). The write is shielded from
        cancellation (a half-written frame would break the stream) and bounded: a peer
        that does not take a small frame within DIRECT_WRITE_TIMEOUT is cut off.
        """
        if (
            self.closed
            or self._cancel_scope is None
            or self._pending
            or self._control
            or self._alo_acks
            or self._eo_acks
            or self._overlay
            or self._finishing is not None
            or self._send_lock.locked()
        ):
            return False
        data = self._encode([entry])
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + DIRECT_WRITE_TIMEOUT
            async with self._send_lock:
                self._writing = True
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self.close(f"write failed: {exc!r}")
                    raise NodeUnreachable(self.peer_id, "connection lost") from exc
                finally:
                    self._writing = False
        if scope.cancelled_caught:
            self.close("peer stopped reading")
            raise NodeUnreachable(self.peer_id, "peer stopped reading")
        self.messages_sent += 1
        self.frames_written += 1
        self.bytes_written += len(data)
        return True

    def _encode(self, entries: list[tuple[Any, ...]]) -> bytes:
        stamper = self.node._stamp
        try:
            return self.protocol.messages(entries, stamper)
        except EncodeError:
            # Some message's data cannot be encoded: send the others, report the bad ones.
            parts = []
            for entry in entries:
                try:
                    parts.append(self.protocol.messages([entry], stamper))
                except EncodeError as exc:
                    self.node._encode_failed(entry, exc)
            return b"".join(parts)

    # -- used by the node -------------------------------------------------------------

    def try_enqueue(self, entry: tuple[Any, ...]) -> bool:
        """Queue an entry for the writer; False when the pending list is full."""
        if self.closed or self._finishing is not None:
            raise NodeUnreachable(self.peer.node_id if self.peer else "?", self.close_reason or "connection closed")
        if len(self._pending) >= self.max_pending:
            return False
        size = _large_size(entry)
        if size:
            if self._pending and self._pending_bytes + size > self.max_pending_bytes:
                return False
            self._pending_bytes += size
        self._pending.append(entry)
        if self._writer_lot:
            self._writer_lot.unpark_all()
        return True

    async def enqueue(self, entry: tuple[Any, ...], *, wait: bool = True) -> None:
        """Queue an entry, waiting while the pending list is full (unless ``wait`` is False)."""
        while not self.try_enqueue(entry):
            if not wait:
                raise Backpressure(self.peer_id, f"{len(self._pending)} messages already pending for node {self.peer_id!r}")
            await self._space_lot.park()

    def send_control(self, data: bytes) -> None:
        if self.closed or self._finishing is not None:
            return
        self._control.append(data)
        self._control_bytes += len(data)
        if self._writer_lot:
            self._writer_lot.unpark_all()

    def acknowledge(self, exactly_once: bool, agent: str, dseq: int) -> None:
        """Queue an acknowledgement for a reliable message from the peer (sent with the next write)."""
        if self.closed:
            return
        if exactly_once:
            key = (agent, dseq >> 40)
            if dseq > self._eo_acks.get(key, 0):
                self._eo_acks[key] = dseq
        else:
            acks = self._alo_acks
            if acks and acks[-1][2] + 1 == dseq and acks[-1][0] == agent:
                acks[-1][2] = dseq  # consecutive: extend the range
            else:
                acks.append([agent, dseq, dseq])
        if self._writer_lot:
            self._writer_lot.unpark_all()

    def acknowledge_ranges(self, ranges: list[list[Any]]) -> None:
        """Queue at-least-once acknowledgements, already as [agent, first, last] ranges."""
        if self.closed:
            return
        acks = self._alo_acks
        for entry in ranges:
            if acks and acks[-1][2] + 1 == entry[1] and acks[-1][0] == entry[0]:
                acks[-1][2] = entry[2]
            else:
                acks.append(entry)
        if self._writer_lot:
            self._writer_lot.unpark_all()

    def try_send_control(self, data: bytes) -> bool:
        """Like send_control, but refuses (False) beyond MAX_CONTROL_BYTES buffered."""
        if self.closed or self._control_bytes + len(data) > MAX_CONTROL_BYTES:
            return False
        self.send_control(data)
        return True

    async def wait_for_control_space(self) -> None:
        if not self.closed:
            await self._control_lot.park()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def take_pending(self) -> list[tuple[Any, ...]]:
        """Hand over unsent entries (to a connection replacing this one)."""
        entries, self._pending = self._pending, []
        self._pending_bytes = 0
        return entries

    async def goodbye_now(self, reason: str, timeout: float = 0.5) -> None:
        """Write a GOODBYE directly (only when the writer task is not running)."""
        with trio.move_on_after(timeout) as scope:
            scope.shield = True
            try:
                await self.stream.send_all(self.protocol.goodbye(reason))
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
                pass

    def close(self, reason: str) -> None:
        """Stop the connection: cancel its tasks (run() closes the stream)."""
        self._mark_closed(reason)
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    async def close_gracefully(self, reason: str, timeout: float = 0.5) -> None:
        """Flush what is pending plus a GOODBYE, then close."""
        if self.protocol.state is State.HANDSHAKING and not self.closed:
            # The node's connection task sends the goodbye once the handshake is over.
            with trio.move_on_after(timeout):
                await self.handshake_done.wait()
            return
        if self.closed or self.protocol.state is not State.OPEN:
            return
        if self._cancel_scope is None:  # registered, tasks not started yet: write it ourselves
            self._mark_closed(reason)
            await self.goodbye_now(reason, timeout)
            return
        self.send_control(self.protocol.goodbye(reason))
        with trio.move_on_after(timeout):
            while (self._pending or self._control or self._writing) and not self.closed:
                await self._drain_lot.park()
        self.close(reason)

    def _mark_closed(self, reason: str) -> None:
        if self.closed:
            return
        if self._cancel_scope is None:  # never ran: nothing of it reaches the node
            self.finished.set()
        self.closed = True
        self.close_reason = self.close_reason or reason
        self._writer_lot.unpark_all()
        self._space_lot.unpark_all()
        self._drain_lot.unpark_all()
        self._control_lot.unpark_all()

    def statistics(self) -> dict[str, Any]:
        return {
            "peer": self.peer.node_id if self.peer else None,
            "outbound": self.outbound,
            "channel": self.channel,
            "lane": self.lane,
            "pending": len(self._pending),
            "pending_bytes": self._pending_bytes,
            "messages_sent": self.messages_sent,
            "messages_received": self.protocol.messages_received,
            "frames_written": self.frames_written,
            "frames_read": self.protocol.frames_received,
            "bytes_written": self.bytes_written,
            "bytes_read": self.bytes_read,
        }


__all__ = ["Connection", "ProtocolError"]
