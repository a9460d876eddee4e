"""Test harness: clients that record histories and a nemesis that injects faults.

Both run as extra (never crashing) nodes of the simulation, driven by their own timers
and a ``random.Random`` derived from the seed, so a seed replays the whole run exactly.
"""

from __future__ import annotations

import random
from typing import Any

from phoenix_trio import NotLeader
from phoenix_trio.effects import SetTimer
from phoenix_trio.raft import (
    UNKNOWN,
    Operation,
    ProposalDropped,
    ProposalOutcomeUnknown,
    ProposalResult,
    RaftConfig,
    ReadResult,
    SimCluster,
    check_linearizable,
)
from phoenix_trio.raft._simcluster import _Failed

FAST = RaftConfig(
    election_timeout=0.15,
    heartbeat_interval=0.03,
    max_batch_entries=16,
    max_inflight=4,
    snapshot_threshold=60,
    snapshot_trailing=10,
    snapshot_chunk=48,
)


class _Op:
    __slots__ = ("client", "complete", "invoke", "key", "kind", "output", "value")

    def __init__(self, client: int, kind: str, key: Any, value: Any, invoke: float) -> None:
        self.client = client
        self.kind = kind
        self.key = key
        self.value = value
        self.invoke = invoke
        self.output: Any = UNKNOWN
        self.complete: float | None = None


class Workload:
    """``clients`` sequential clients doing put / cas / strong read on a few keys.

    A client sends to the member it believes leads, follows ``NotLeader`` hints, gives up
    on an operation after ``op_timeout`` (its outcome stays unknown) and moves on.
    Also issues session reads and checks read-your-writes by index.
    """

    def __init__(self, cluster: SimCluster, rng: random.Random, *, clients: int = 3, keys: int = 2, op_timeout: float = 1.0) -> None:
        self.cluster = cluster
        self.rng = rng
        self.keys = [f"k{i}" for i in range(keys)]
        self.op_timeout = op_timeout
        self.ops: dict[Any, _Op] = {}
        self.dropped = 0
        self.active = True
        self.hint: dict[int, Any] = {}
        self.waiting: dict[int, Any] = {}
        self.session_index: dict[int, int] = {}
        self.session_reads: dict[Any, tuple[int, int]] = {}
        self.session_violations: list[str] = []
        self.completed = 0
        cluster.listeners.append(self._on_result)
        cluster.sim.add("clients", self)
        for client in range(clients):
            cluster.sim.call("clients", lambda now, c=client: [SetTimer(("next", c), now + self.rng.uniform(0, 0.05))])

    # sim node interface
    def receive(self, sender: Any, message: Any, now: float) -> list[Any]:
        return []

    def timer(self, key: Any, now: float) -> list[Any]:
        kind, client = key[0], key[1]
        if kind == "next":
            return self._issue(client, now)
        if kind == "timeout":
            rid = key[2]
            if self.waiting.get(client) == rid:
                del self.waiting[client]
                self.hint[client] = None
                return self._next(client, now, 0.0)
        return []

    def _next(self, client: int, now: float, delay: float) -> list[Any]:
        if not self.active:
            return []
        return [SetTimer(("next", client), now + delay + self.rng.uniform(0, 0.02))]

    def _issue(self, client: int, now: float) -> list[Any]:
        if not self.active:
            return []
        cluster = self.cluster
        target = self.hint.get(client)
        if target is None:
            target = self.rng.choice(list(cluster.hosts))
        key = self.rng.choice(self.keys)
        roll = self.rng.random()
        if roll < 0.1:
            # session read at any member: must reflect this client's own writes
            target = self.rng.choice(list(cluster.hosts))
            rid = cluster.submit_read(target, key, "session", self.session_index.get(client, 0))
            self.session_reads[rid] = (client, self.session_index.get(client, 0))
        else:
            if roll < 0.45:
                op = _Op(client, "put", key, self.rng.randrange(1000), now)
                command = ["put", key, op.value]
            elif roll < 0.65:
                expected = self.rng.choice([None, *range(0, 1000, 250)])
                op = _Op(client, "cas", key, (expected, self.rng.randrange(1000)), now)
                command = ["cas", key, expected, op.value[1]]
            else:
                op = _Op(client, "read", key, None, now)
                command = None
            rid = cluster.next_id()
            self.ops[rid] = op
            if command is None:
                cluster.submit_read(target, key, "strong", request_id=rid)
            else:
                cluster.submit_propose(target, command, request_id=rid)
        self.waiting[client] = rid
        return [SetTimer(("timeout", client, rid), now + self.op_timeout)]

    def _on_result(self, node_id: Any, rid: Any, result: Any, now: float) -> None:
        if rid in self.session_reads:
            client, wanted = self.session_reads.pop(rid)
            if type(result) is ReadResult and result.error is None:
                if result.index < wanted:
                    self.session_violations.append(f"session read {rid} at {node_id} served index {result.index} < {wanted}")
            self._done(client, rid, now, result)
            return
        op = self.ops.get(rid)
        if op is None:
            return
        if type(result) is _Failed or (type(result) in (ReadResult, ProposalResult) and result.error is not None):
            error = result.error
            if isinstance(error, (NotLeader, ProposalDropped)):
                # definitely not executed: leave it out of the history
                del self.ops[rid]
                self.dropped += 1
                if isinstance(error, NotLeader):
                    self.hint[op.client] = error.leader
            elif not isinstance(error, ProposalOutcomeUnknown):
                raise AssertionError(f"unexpected error for {rid}: {error!r}")
            self._done(op.client, rid, now, result)
            return
        if type(result) is ProposalResult:
            op.output = result.result
            op.complete = now
            self.completed += 1
            self.session_index[op.client] = max(self.session_index.get(op.client, 0), result.index)
            self.hint[op.client] = node_id
            self._done(op.client, rid, now, result)
        elif type(result) is ReadResult:
            op.output = result.value
            op.complete = now
            self.completed += 1
            self.hint[op.client] = node_id
            self._done(op.client, rid, now, result)

    def _done(self, client: int, rid: Any, now: float, result: Any) -> None:
        if self.waiting.get(client) == rid:
            del self.waiting[client]
            self.cluster.sim.call("clients", lambda t, c=client: self._next(c, t, 0.0))

    def history(self) -> list[Operation]:
        return [
            Operation(op.client, op.kind, op.key, op.value, op.output, op.invoke, op.complete)
            for op in self.ops.values()
        ]

    def check(self) -> None:
        assert not self.session_violations, self.session_violations[:3]
        result = check_linearizable(self.history())
        if not result.ok:
            lines = "\n".join(repr(o) for o in sorted(result.operations, key=lambda o: o.invoke))
            raise AssertionError(f"history not linearizable for key {result.key!r}:\n{lines}")


def propose_until_committed(cluster: SimCluster, command: Any, *, deadline: float) -> Any:
    """Propose like a patient client: follow leader hints and retry until ``deadline`` (sim time)."""
    from phoenix_trio import RequestTimeout

    last_error: Exception | None = None
    while cluster.sim.now < deadline:
        try:
            return cluster.propose_value(command, timeout=min(1.0, max(deadline - cluster.sim.now, 0.01)))
        except (NotLeader, RequestTimeout, ProposalDropped, ProposalOutcomeUnknown) as exc:
            last_error = exc
            cluster.run(0.02)
    raise AssertionError(f"nothing committed by t={deadline}: {last_error!r}")


def change_until_committed(cluster: SimCluster, *, deadline: float, add: Any = None, remove: Any = None) -> int:
    """Retry a one-server membership change at whoever leads until it commits; return its index."""
    from phoenix_trio.raft import ConfigChangeInProgress

    attempt = 0
    while cluster.sim.now < deadline:
        attempt += 1
        leader = cluster.leader()
        if leader is None:
            cluster.run(0.05)
            continue
        node = cluster.node(leader)
        if (add is not None and add in node.voters) or (remove is not None and remove not in node.voters):
            # appended by an earlier attempt (whose answer was lost): wait until it commits
            if node.commit >= node._config_index():
                return node._config_index()
            cluster.run(0.05)
            continue
        rid = ("config", add, remove, attempt)
        cluster.submit(leader, rid, lambda n, t: n.change_membership(rid, t, add=add, remove=remove))
        cluster.run_until(lambda: type(cluster.results.get(rid)) in (ProposalResult, _Failed), timeout=1.0)
        result = cluster.results.get(rid)
        if type(result) is ProposalResult and result.error is None:
            return result.index
        if type(result) is _Failed and not isinstance(result.error, (NotLeader, ConfigChangeInProgress)):
            raise result.error
        cluster.run(0.05)
    raise AssertionError(f"membership change add={add} remove={remove} did not commit by {deadline}")


class Nemesis:
    """Every so often: partition (symmetric or one-way), crash, restart, heal, or move leadership."""

    def __init__(self, cluster: SimCluster, rng: random.Random, *, period: tuple[float, float] = (0.1, 0.6), max_down: int | None = None) -> None:
        self.cluster = cluster
        self.rng = rng
        self.period = period
        self.max_down = max_down if max_down is not None else len(cluster.members)
        self.active = True
        self.actions: list[tuple[float, str]] = []
        cluster.sim.add("nemesis", self)
        cluster.sim.call("nemesis", lambda now: [SetTimer("act", now + rng.uniform(*period))])

    def receive(self, sender: Any, message: Any, now: float) -> list[Any]:
        return []

    def timer(self, key: Any, now: float) -> list[Any]:
        if not self.active:
            return []
        self._act(now)
        return [SetTimer("act", now + self.rng.uniform(*self.period))]

    def _act(self, now: float) -> None:
        cluster, rng, sim = self.cluster, self.rng, self.cluster.sim
        members = list(cluster.hosts)
        down = [m for m in members if not sim.is_alive(m)]
        roll = rng.random()
        if roll < 0.1:
            leader = cluster.leader()
            if leader is not None:
                rest = [m for m in members if m != leader]
                sim.partition([leader], rest)
                self.actions.append((now, f"isolate leader {leader}"))
        elif roll < 0.2:
            rng.shuffle(members)
            cut = rng.randint(1, len(members) - 1)
            sim.partition(members[:cut], members[cut:])
            self.actions.append((now, f"partition {members[:cut]} | {members[cut:]}"))
        elif roll < 0.35:
            src, dst = rng.sample(members, 2)
            sim.block(src, dst)
            self.actions.append((now, f"block {src}->{dst}"))
        elif roll < 0.5:
            sim.heal()
            self.actions.append((now, "heal"))
        elif roll < 0.7:
            alive = [m for m in members if sim.is_alive(m)]
            if alive and len(down) < self.max_down:
                victim = rng.choice(alive)
                if rng.random() < 0.5:
                    leader = cluster.leader()
                    victim = leader if leader is not None else victim
                cluster.crash(victim)
                if rng.random() < 0.4:
                    cluster.restart(victim)  # a bounce: back at once, from what was durable
                    self.actions.append((now, f"bounce {victim}"))
                else:
                    self.actions.append((now, f"crash {victim}"))
        elif roll < 0.9:
            if down:
                node = rng.choice(down)
                cluster.restart(node)
                self.actions.append((now, f"restart {node}"))
        else:
            leader = cluster.leader()
            if leader is not None:
                node = cluster.node(leader)
                target = rng.choice([m for m in node.voters if m != leader] or [leader])
                cluster.submit(leader, ("transfer", now), lambda n, t: n.transfer_leadership(target, t))
                self.actions.append((now, f"transfer {leader}->{target}"))

    def stop_and_heal(self) -> None:
        self.active = False
        sim = self.cluster.sim
        sim.heal()
        for member in list(self.cluster.hosts):
            if not sim.is_alive(member):
                self.cluster.restart(member)
