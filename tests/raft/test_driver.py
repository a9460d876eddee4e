"""The Trio driver in one process: nodes on loopback, real WAL files, trio's clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import phoenix_trio as px
from phoenix_trio import NotLeader
from phoenix_trio.raft import (
    AppendEntries,
    Committed,
    Deliver,
    Queued,
    RaftConfig,
    Session,
    WriteAheadLog,
    decode,
    encode,
    open_raft,
    open_total_order_group,
)
from phoenix_trio.raft._codec import decode_many, encode_many

from ..test_node import cluster

FAST = RaftConfig(election_timeout=0.3, heartbeat_interval=0.05)


@asynccontextmanager
async def raft_cluster(tmp_path: Path | None, size: int = 3, **options: Any) -> AsyncIterator[list[Any]]:
    async with cluster(size) as nodes, AsyncExitStack() as stack:
        ids = [n.id for n in nodes]
        rafts = []
        for n in nodes:
            data_dir = tmp_path / n.id if tmp_path is not None else None
            rafts.append(await stack.enter_async_context(open_raft(n, members=ids, data_dir=data_dir, config=FAST, **options)))
        yield rafts


def leader_of(rafts: list[Any]) -> Any:
    return next(r for r in rafts if r.role == "leader")


async def elect(rafts: list[Any]) -> Any:
    for r in rafts:
        await r.wait_for_leader(timeout=10)
    await rafts[0].wait_for(lambda r: any(x.role == "leader" and x.term == r.term for x in rafts), timeout=10)
    return leader_of(rafts)


async def test_propose_and_read_with_every_consistency(tmp_path: Path) -> None:
    async with raft_cluster(tmp_path) as rafts:
        leader = await elect(rafts)
        follower = next(r for r in rafts if r is not leader)
        session = Session()
        committed = await leader.propose_value(["put", "k", "v1"], session=session)
        assert isinstance(committed, Committed) and committed.result is None and committed.index >= 2
        assert session.last_index == committed.index
        assert (await leader.propose_value(["put", "k", "v2"])).result == "v1"
        assert (await leader.propose_value(["cas", "k", "v2", "v3"])).result is True
        assert await leader.read_consensus_value("k") == "v3"
        queued = await leader.propose_value(["put", "q", 1], wait=False)
        assert isinstance(queued, Queued) and queued.term == leader.term
        # session reads on a follower see the session's writes (it waits to apply them)
        session.observe(queued.index)
        assert await follower.read_consensus_value("q", consistency="session", session=session) == 1
        assert session.last_index >= queued.index
        # eventual reads answer from whatever the follower applied
        assert await follower.read_consensus_value("k", consistency="eventual") in (None, "v1", "v2", "v3")
        with pytest.raises(NotLeader) as caught:
            await follower.propose_value(["put", "k", "x"])
        assert caught.value.leader == leader.id
        with pytest.raises(NotLeader):
            await follower.read_consensus_value("k")
        with pytest.raises(px.ConfigurationError):
            await leader.read_consensus_value("k", consistency="linear")


async def test_concurrent_proposals_share_fsyncs_and_every_send_follows_its_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Persist before respond: an entry leaves a node only after that node synced it, and a
    caller hears of its commit only after the leader synced it; many proposals share a sync."""
    synced: dict[str, int] = {}
    violations: list[str] = []
    real_sync = WriteAheadLog.sync

    def sync(self: WriteAheadLog) -> None:
        real_sync(self)
        entries = self.state.entries
        synced[self.directory.name] = entries[-1].index if entries else 0

    real_send = px.Service.send_nowait

    def send_nowait(self: px.Service, node_id: str, payload: bytes) -> bool:
        if self.name == "raft.kv":
            for message in decode_many(payload):
                if type(message) is AppendEntries and message.entries:
                    last = message.entries[-1].index
                    if synced.get(self.node.id, 0) < last:
                        violations.append(f"{self.node.id} sent entry {last} before syncing it")
        return real_send(self, node_id, payload)

    monkeypatch.setattr(WriteAheadLog, "sync", sync)
    monkeypatch.setattr(px.Service, "send_nowait", send_nowait)
    async with raft_cluster(tmp_path) as rafts:
        leader = await elect(rafts)
        before = leader.statistics().syncs
        results: list[Committed] = []

        async def client(c: int) -> None:
            for i in range(20):
                result = await leader.propose_value(["put", f"k{c}", i])
                assert synced[leader.id] >= result.index, "answered before the leader's fsync"
                results.append(result)

        async with trio.open_nursery() as nursery:
            for c in range(32):
                nursery.start_soon(client, c)
        assert len(results) == 640
        assert len({r.index for r in results}) == 640
        syncs = leader.statistics().syncs - before
        assert syncs < 640 / 2, syncs  # group commit: many proposals per fsync
        assert not violations, violations[:3]
        for c in range(32):
            assert await leader.read_consensus_value(f"k{c}") == 19


async def test_state_survives_a_restart_from_the_wal(tmp_path: Path) -> None:
    async with raft_cluster(tmp_path) as rafts:
        leader = await elect(rafts)
        for i in range(50):
            await leader.propose_value(["put", f"k{i % 5}", i])
        index = leader.status().commit_index
    async with raft_cluster(tmp_path) as rafts:
        leader = await elect(rafts)
        assert leader.status().last_index >= index
        assert await leader.read_consensus_value("k4") == 49
        assert leader.term >= 2  # a new election, the old term was persisted


async def test_a_cancelled_proposal_leaves_no_waiter_and_is_never_proposed(tmp_path: Path) -> None:
    async with raft_cluster(tmp_path) as rafts:
        leader = await elect(rafts)
        first = await leader.propose_value(["put", "k", 1])
        with trio.CancelScope() as scope:
            scope.cancel()
            await leader.propose_value(["put", "k", "never"])
        assert scope.cancelled_caught
        assert not leader._runner.waiters
        second = await leader.propose_value(["put", "k", 2])
        assert second.index == first.index + 1 and second.result == 1
        # a read cancelled while the core holds it is withdrawn from the core too
        follower = next(r for r in rafts if r is not leader)
        with trio.move_on_after(0.05):
            await follower.read_consensus_value("k", consistency="session", session=Session(10**9))
        assert not follower._runner.waiters and not follower._runner.raft._reads_apply
        with pytest.raises(px.RequestTimeout):
            await follower.read_consensus_value("k", consistency="session", session=Session(10**9), timeout=0.05)
        assert not follower._runner.waiters


async def test_leaving_the_block_joins_everything_and_closes_the_wal(tmp_path: Path) -> None:
    async with cluster(1) as (node,):
        async with open_raft(node, members=[node.id], data_dir=tmp_path, config=FAST) as raft:
            await raft.wait_for_leader()
            assert (await raft.propose_value(["put", "a", 1])).index == 2
            wal = raft._runner.storage
        assert wal._fd == -1
        assert raft._runner.closed
        with pytest.raises(trio.ClosedResourceError):
            await raft.propose_value(["put", "a", 2])
        # nothing was left running: the service is gone and a new member can open at once
        async with open_raft(node, members=[node.id], data_dir=tmp_path, config=FAST) as raft:
            await raft.wait_for_leader()
            assert await raft.read_consensus_value("a") == 1


@pytest.fixture
def idle_jump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps once everything has been idle for 10 ms of real time
    (the nodes talk over real loopback sockets, which the clock cannot see)."""
    return trio.testing.MockClock(autojump_threshold=0.01)


async def test_elections_run_on_trio_time_with_a_mock_clock(tmp_path: Path, idle_jump_clock: trio.testing.MockClock) -> None:
    """All timing comes from trio.current_time(): with an autojumping MockClock the election
    and the heartbeats happen in virtual time (the fsync stays in the Trio thread here)."""
    async with cluster(3) as nodes, AsyncExitStack() as stack:
        ids = [n.id for n in nodes]
        config = RaftConfig(election_timeout=5.0, heartbeat_interval=1.0)
        rafts = [
            await stack.enter_async_context(
                open_raft(n, members=ids, data_dir=tmp_path / n.id, config=config, sync_in_thread=False, seed=i)
            )
            for i, n in enumerate(nodes)
        ]
        start = trio.current_time()
        leader = await elect(rafts)
        elapsed = trio.current_time() - start
        assert 5.0 <= elapsed < 30.0, elapsed  # one randomized timeout plus pre-vote and vote rounds
        assert (await leader.propose_value(["put", "x", 1])).result is None
        term = leader.term
        await trio.sleep(60)  # a minute of virtual heartbeats: leadership holds
        assert leader.role == "leader" and leader.term == term


async def run_member(node: px.Node, ids: list[str], data_dir: Path, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """One member in its own task, so the test can stop it alone (cancel the task's scope)."""
    with trio.CancelScope() as scope:
        async with open_raft(node, members=ids, data_dir=data_dir, config=FAST) as raft:
            task_status.started((raft, scope))
            await trio.sleep_forever()


async def test_a_new_leader_takes_over_when_the_leader_leaves(tmp_path: Path) -> None:
    async with cluster(3) as nodes, trio.open_nursery() as nursery:
        ids = [n.id for n in nodes]
        members = {}
        for n in nodes:
            members[n.id] = await nursery.start(run_member, n, ids, tmp_path / n.id)
        rafts = [raft for raft, _ in members.values()]
        leader = await elect(rafts)
        await leader.propose_value(["put", "k", "before"])
        members[leader.id][1].cancel()  # the leader's member stops (its node stays up)
        others = [r for r in rafts if r is not leader]
        started = trio.current_time()
        await others[0].wait_for(lambda r: any(x.role == "leader" for x in others), timeout=10)
        assert trio.current_time() - started < 6 * FAST.election_timeout
        new = leader_of(others)
        assert await new.read_consensus_value("k") == "before"
        assert (await new.propose_value(["put", "k", "after"])).result == "before"
        nursery.cancel_scope.cancel()


async def test_total_order_group_delivers_one_sequence_everywhere() -> None:
    async with cluster(3) as nodes, AsyncExitStack() as stack:
        ids = [n.id for n in nodes]
        groups = [await stack.enter_async_context(open_total_order_group(n, "orders", members=ids, config=FAST)) for n in nodes]
        for g in groups:
            await g.wait_for_leader()
        per_member = 100
        seen: dict[str, list[tuple[Any, ...]]] = {g.id: [] for g in groups}

        async def consume(g: Any) -> None:
            async for delivery in g:
                assert isinstance(delivery, Deliver)
                seen[g.id].append((delivery.index, delivery.sender, delivery.seq, delivery.payload))
                if len(seen[g.id]) == per_member * len(groups):
                    return

        async def produce(g: Any) -> None:
            for i in range(per_member):
                await g.broadcast([g.id, i])

        async with trio.open_nursery() as nursery:
            for g in groups:
                nursery.start_soon(consume, g)
                nursery.start_soon(produce, g)
        sequences = list(seen.values())
        assert sequences[0] == sequences[1] == sequences[2]
        for member in ids:  # per-sender FIFO, nothing lost or duplicated
            assert [p[1] for _, s, _, p in sequences[0] if s == member] == list(range(per_member))


def test_codec_payloads_carry_several_messages() -> None:
    messages = [AppendEntries(3, 4, 2, (), 1), decode(encode(AppendEntries(3, 4, 2, (), 2)))]
    assert decode_many(encode_many(messages)) == messages
    payload = encode_many(messages)
    for bad in (b"", payload[:-1], payload + b"\x01", b"\xc1"):
        with pytest.raises(px.DecodeError):
            decode_many(bad)
