"""Total-order broadcast on the Raft log, in the simulation under faults."""

from __future__ import annotations

import random

import pytest

from phoenix_trio.raft import (
    Deliver,
    DeliveriesSkipped,
    MemoryStorage,
    Persist,
    PersistSnapshot,
    RaftConfig,
    RoleChanged,
    TotalOrderGroup,
    decode,
    encode,
)
from phoenix_trio.sim import Simulation

CONFIG = RaftConfig(election_timeout=0.15, heartbeat_interval=0.03, snapshot_threshold=10_000)


class Group:
    def __init__(self, seed: int, size: int = 3, loss: float = 0.02, config: RaftConfig = CONFIG) -> None:
        self.rng = random.Random(seed)
        self.config = config
        self.members = tuple(f"m{i}" for i in range(size))
        self.storage = {m: MemoryStorage() for m in self.members}
        self.delivered: dict[str, list[Deliver]] = {m: [] for m in self.members}
        self.skipped: dict[str, int] = {}
        self.sent: dict[str, list[tuple[int, int]]] = {m: [] for m in self.members}
        self.sim = Simulation(seed=seed, loss=loss, duplicate=0.02, latency=(0.001, 0.01), on_effect=self.on_effect)
        self.nodes: dict[str, TotalOrderGroup] = {}
        for m in self.members:
            self.start(m)

    def start(self, member: str) -> None:
        # a restarted member has processed everything it delivered before
        through = self.delivered[member][-1].index if self.delivered[member] else 0
        node = TotalOrderGroup(
            member,
            members=self.members,
            rng=random.Random(self.rng.getrandbits(64)),
            config=self.config,
            durable=self.storage[member].load(),
            delivered_through=through,
        )
        self.nodes[member] = node
        self.sim.restart(member, _Wire(node))

    def on_effect(self, member, effect):
        if type(effect) in (Persist, PersistSnapshot):
            self.storage[member].apply(effect)
        elif type(effect) is Deliver:
            self.delivered[member].append(effect)
        elif type(effect) is DeliveriesSkipped:
            self.skipped[member] = effect.index
        elif type(effect) is not RoleChanged:
            raise AssertionError(effect)

    def broadcast(self, member: str, payload) -> None:
        node = self.nodes[member]
        self.sent[member].append((node.incarnation, payload))
        self.sim.call(member, lambda now: node.broadcast(payload, now))

    def check_order(self) -> None:
        """Every pair of members delivered the common messages in the same order, FIFO per stream."""
        sequences = {}
        for m, ds in self.delivered.items():
            keys = [(d.index, d.sender, d.incarnation, d.seq) for d in ds]
            assert len(set(keys)) == len(keys), f"{m} delivered something twice"
            assert [k[0] for k in keys] == sorted(k[0] for k in keys), f"{m} delivered out of log order"
            streams: dict = {}
            for _, sender, inc, seq in keys:
                last = streams.get((sender, inc))
                if last is None:
                    last = -1 if m not in self.skipped else seq - 1  # after a snapshot: mid-stream
                assert seq == last + 1, f"{m}: stream {(sender, inc)} jumped from {last} to {seq}"
                streams[(sender, inc)] = seq
            sequences[m] = keys
        by_index: dict = {}
        for m, keys in sequences.items():
            mine: dict = {}
            for k in keys:
                mine.setdefault(k[0], []).append(k)
            for index, batch in mine.items():
                known = by_index.setdefault(index, batch)
                assert known == batch, f"{m} delivered different messages at index {index}: {batch} vs {known}"


class _Wire:
    """Sends every message through the codec on its way in."""

    def __init__(self, node: TotalOrderGroup) -> None:
        self.node = node

    def start(self, now):
        return self.node.start(now)

    def receive(self, sender, message, now):
        return self.node.receive(sender, decode(encode(message)), now)

    def timer(self, key, now):
        return self.node.timer(key, now)


@pytest.mark.parametrize("seed", range(12))
def test_every_member_delivers_in_one_order_under_faults(seed: int) -> None:
    tob_run(seed)


@pytest.mark.slow
@pytest.mark.parametrize("block", range(5))
def test_total_order_soak(block: int) -> None:
    for seed in range(1000 + block * 100, 1000 + (block + 1) * 100):
        try:
            tob_run(seed)
        except BaseException:
            print(f"\nFAILING TOTAL-ORDER SEED: {seed}")
            raise


def tob_run(seed: int) -> None:
    g = Group(seed, size=3 if seed % 2 else 5)
    rng = random.Random(seed + 1000)
    for step in range(60):
        g.sim.run(g.sim.now + 0.05)
        member = rng.choice(g.members)
        if g.sim.is_alive(member):
            g.broadcast(member, f"{member}-{step}")
        roll = rng.random()
        if roll < 0.08:
            victim = rng.choice(g.members)
            if g.sim.is_alive(victim):
                g.sim.crash(victim)
        elif roll < 0.16:
            for m in g.members:
                if not g.sim.is_alive(m):
                    g.start(m)
        elif roll < 0.22:
            g.sim.partition(rng.sample(g.members, 1))
        elif roll < 0.3:
            g.sim.heal()
        g.check_order()
    g.sim.heal()
    for m in g.members:
        if not g.sim.is_alive(m):
            g.start(m)
    g.sim.run(g.sim.now + 3.0)
    g.check_order()
    # liveness: everything the current incarnations broadcast is delivered everywhere
    for m, node in g.nodes.items():
        assert node.pending == 0, f"{m} still has {node.pending} undelivered messages"
    mine = {(d.sender, d.incarnation, d.seq) for d in g.delivered[g.members[0]]}
    for m, node in g.nodes.items():
        own = [(m, node.incarnation, i) for i in range(node._next_seq)]
        assert all(k in mine for k in own)
    lengths = {m: g.delivered[m][-1].index for m in g.members}
    assert len(set(lengths.values())) == 1, lengths


def test_a_lagging_member_that_installs_a_snapshot_reports_the_gap() -> None:
    config = RaftConfig(election_timeout=0.15, heartbeat_interval=0.03, snapshot_threshold=20, snapshot_trailing=0)
    g = Group(5, size=3, loss=0.0, config=config)
    g.sim.run(1.0)
    g.sim.crash("m2")
    for i in range(60):
        g.broadcast("m0" if i % 2 else "m1", i)
        g.sim.run(g.sim.now + 0.01)
    g.sim.run(g.sim.now + 1.0)
    g.start("m2")
    g.sim.run(g.sim.now + 2.0)
    assert g.skipped.get("m2", 0) > 0
    g.check_order()
    assert g.delivered["m2"] == [] or g.delivered["m2"][0].index > g.skipped["m2"]
    assert g.nodes["m0"].pending == 0 and g.nodes["m1"].pending == 0
