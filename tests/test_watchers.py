"""Watchers: every open watcher gets each event; a full one drops (counted) without blocking; close ends them."""

from __future__ import annotations

import trio

from phoenix_trio._watchers import Watchers


async def test_fan_out_drop_when_full_and_close() -> None:
    watchers: Watchers[int] = Watchers()
    assert not watchers
    watchers.tell(0)  # nobody watching: nothing happens
    async with watchers.watch(2) as slow, watchers.watch(10) as fast:
        assert watchers
        for i in range(1, 5):
            watchers.tell(i)  # never waits, even with `slow` full
        assert [fast.receive_nowait() for _ in range(4)] == [1, 2, 3, 4]
        assert [slow.receive_nowait() for _ in range(2)] == [1, 2]
        assert watchers.dropped == 2
        watchers.close()
        async for _ in fast:  # iteration ends once the watchers are closed
            raise AssertionError("nothing was left")
    assert not watchers  # leaving the block unregisters
    watchers.tell(5)
    assert watchers.dropped == 2
