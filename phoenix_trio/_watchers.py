"""Fan-out of events to watchers: what ``watch_membership``, ``watch_telemetry``,
``watch_overlay`` and the security gate's ``watch`` share.

``async with watchers.watch(buffer) as events`` gives a bounded memory channel for the
block; :meth:`Watchers.tell` hands an event to every open one without ever waiting: a
watcher that lets ``buffer`` events pile up misses the ones that do not fit (counted in
``dropped``), so a slow watcher never slows the node down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Watchers(Generic[T]):
    """The open watchers of one kind of event; see the module docstring."""

    def __init__(self) -> None:
        self._channels: set[trio.MemorySendChannel[T]] = set()
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(self._channels)

    @asynccontextmanager
    async def watch(self, buffer: int) -> AsyncIterator[trio.MemoryReceiveChannel[T]]:
        send, receive = trio.open_memory_channel[T](buffer)
        self._channels.add(send)
        try:
            async with receive:
                yield receive
        finally:
            self._channels.discard(send)
            send.close()

    def tell(self, event: T) -> None:
        for channel in list(self._channels):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1
            except trio.BrokenResourceError:
                self._channels.discard(channel)

    def close(self) -> None:
        """End every watcher's iteration (the node is closing)."""
        for channel in self._channels:
            channel.close()
