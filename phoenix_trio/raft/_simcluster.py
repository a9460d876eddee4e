"""A Raft cluster in the deterministic simulation, with a synchronous façade.

:class:`SimCluster` runs :class:`RaftNode` members on :class:`phoenix_trio.sim.Simulation`
and plays the driver's part of the durability contract: every ``Persist`` goes to a
per-node buffer, and every effect after it is held until a simulated fsync completes
(a random short delay, which batches whatever arrived meanwhile). A crash loses the
held effects and keeps a random prefix of the unsynced persists, as a torn write does.
Restarts rebuild the node from exactly what was made durable.

The façade calls (``propose_value``, ``read_consensus_value``) inject a command and run
the simulation until its answer arrives. ``check=True`` runs :class:`SafetyChecker` after
every event; ``codec=True`` passes every message through ``encode``/``decode``.
``storage(node_id)`` makes a node's durable store: anything with ``apply(effect)`` (make one
persist effect durable) and ``load() -> DurableState`` (called at every (re)start);
the default is :class:`MemoryStorage`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from .._errors import NotLeader, RequestTimeout
from ..effects import SetTimer
from ..sim import Simulation
from ._api import Committed, Queued, Session
from ._barrier import PersistBarrier
from ._codec import decode, encode
from ._core import EVENTUAL, LEADER, SESSION, STRONG, RaftConfig, RaftNode
from ._effects import Persist, PersistSnapshot, ProposalQueued, ProposalResult, ReadResult, RoleChanged
from ._invariants import SafetyChecker
from ._kv import KVStateMachine
from ._messages import Entry, NodeId
from ._storage import MemoryStorage

_FSYNC = "sim.fsync"


class _Failed:
    """A command refused synchronously (``NotLeader`` ...), kept as a result."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Host:
    """Wraps one RaftNode for the simulation: a :class:`PersistBarrier` holds effects
    behind unsynced persists until a simulated fsync completes."""

    def __init__(self, cluster: SimCluster, node: RaftNode) -> None:
        self.cluster = cluster
        self.node = node
        self.barrier = PersistBarrier()
        self.fsync_armed = False
        self.applies: list[Entry] = []

    def on_apply(self, entry: Entry) -> None:
        self.applies.append(entry)

    def start(self, now: float) -> list[Any]:
        return self._filter(self.node.start(now), now)

    def receive(self, sender: Hashable, message: Any, now: float) -> list[Any]:
        if self.cluster.codec:
            message = decode(encode(message))
        return self._filter(self.node.receive(sender, message, now), now)  # type: ignore[arg-type]

    def timer(self, key: Hashable, now: float) -> list[Any]:
        if key == _FSYNC:
            self.fsync_armed = False
            storage = self.cluster.storage[self.node.id]
            for effect in self.barrier.persists():
                storage.apply(effect)
            released = self.barrier.synced()
            self._visible()
            return released
        return self._filter(self.node.timer(key, now), now)

    def command(self, fn: Callable[[], list[Any]], now: float) -> list[Any]:
        return self._filter(fn(), now)

    def _filter(self, effects: list[Any], now: float) -> list[Any]:
        checker = self.cluster.checker
        if checker is not None:
            for effect in effects:
                if type(effect) is Persist:
                    checker.persisted(self.node, effect)
        out = self.barrier.feed(effects)
        if self.barrier.pending:
            if not self.fsync_armed:
                self.fsync_armed = True
                low, high = self.cluster.fsync_delay
                out = [*out, SetTimer(_FSYNC, now + self.cluster.rng.uniform(low, high))]
        else:
            self._visible()
        return out

    def _visible(self) -> None:
        checker = self.cluster.checker
        if checker is None:
            self.applies.clear()
            return
        node = self.node
        for entry in self.applies:
            checker.applied_entry(node, entry)
        self.applies.clear()
        checker.observe(node)

    def crash(self, rng: random.Random) -> list[Any]:
        """The persists that reached the disk anyway: a random prefix of the unsynced ones."""
        persists = self.barrier.crash()
        return persists[: rng.randint(0, len(persists))]


class SimCluster:
    """``size`` Raft members named ``n0``, ``n1``, ... in a seeded simulation. See the module docstring."""

    def __init__(
        self,
        size: int = 3,
        *,
        seed: int,
        config: RaftConfig | None = None,
        latency: tuple[float, float] = (0.001, 0.005),
        loss: float = 0.0,
        duplicate: float = 0.0,
        fsync_delay: tuple[float, float] = (0.0002, 0.002),
        state_machine: Callable[[], Any] = KVStateMachine,
        check: bool = True,
        codec: bool = False,
        members: Iterable[NodeId] | None = None,
        storage: Callable[[NodeId], Any] | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed * 7919 + 17)
        self.config = config or RaftConfig()
        self.fsync_delay = fsync_delay
        self.state_machine = state_machine
        self.codec = codec
        self.checker = SafetyChecker() if check else None
        self.sim = Simulation(seed=seed, latency=latency, loss=loss, duplicate=duplicate, on_effect=self._on_effect)
        self.members: tuple[NodeId, ...] = tuple(members) if members is not None else tuple(f"n{i}" for i in range(size))
        self.storage: dict[NodeId, Any] = {}
        self._storage_factory = storage or (lambda node_id: MemoryStorage())
        self.hosts: dict[NodeId, _Host] = {}
        self.results: dict[Any, Any] = {}
        self.listeners: list[Callable[[NodeId, Any, Any, float], None]] = []
        self.effect_handlers: dict[type, Callable[[NodeId, Any], None]] = {}
        self._ids = itertools.count(1)
        for node_id in self.members:
            self.start_node(node_id, members=self.members)

    # -- membership of the simulation -------------------------------------------------

    def start_node(self, node_id: NodeId, *, members: Iterable[NodeId] = ()) -> RaftNode:
        """Start (or restart, from its durable state) ``node_id``. New joiners use ``members=()``."""
        storage = self.storage.get(node_id)
        if storage is None:
            storage = self.storage[node_id] = self._storage_factory(node_id)
        host = _Host(self, None)  # type: ignore[arg-type]
        node = RaftNode(
            node_id,
            members=members,
            state_machine=self.state_machine(),
            rng=random.Random(self.rng.getrandbits(64)),
            config=self.config,
            durable=storage.load(),
            on_apply=host.on_apply,
        )
        host.node = node
        self.hosts[node_id] = host
        if self.checker is not None:
            self.checker.restarted(node)
        self.sim.restart(node_id, host)
        return node

    def crash(self, node_id: NodeId) -> None:
        """Kill ``node_id``: unsynced persists are partly lost, held effects vanish."""
        self.sim.crash(node_id)
        host = self.hosts[node_id]
        for effect in host.crash(self.rng):
            self.storage[node_id].apply(effect)

    def restart(self, node_id: NodeId) -> RaftNode:
        """Bring a crashed node back from what it made durable."""
        if self.sim.is_alive(node_id):
            raise ValueError(f"{node_id!r} is running")
        return self.start_node(node_id, members=self.members if node_id in self.members else ())

    def node(self, node_id: NodeId) -> RaftNode:
        return self.hosts[node_id].node

    @property
    def nodes(self) -> dict[NodeId, RaftNode]:
        return {node_id: host.node for node_id, host in self.hosts.items()}

    def alive_nodes(self) -> list[RaftNode]:
        return [h.node for nid, h in self.hosts.items() if self.sim.is_alive(nid)]

    def leader(self) -> NodeId | None:
        """The live leader with the highest term, if any."""
        best = None
        for node in self.alive_nodes():
            if node.role == LEADER and (best is None or node.term > best.term):
                best = node
        return best.id if best is not None else None

    def run(self, seconds: float) -> None:
        self.sim.run(self.sim.now + seconds)

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        return self.sim.run_until(predicate, timeout=timeout)

    def wait_for_leader(self, timeout: float = 10.0) -> NodeId:
        if not self.sim.run_until(lambda: self.leader() is not None, timeout=timeout):
            raise RequestTimeout("cluster", timeout)
        leader = self.leader()
        assert leader is not None
        return leader

    # -- commands ---------------------------------------------------------------------

    def next_id(self) -> int:
        return next(self._ids)

    def submit(self, node_id: NodeId, request_id: Any, call: Callable[[RaftNode, float], list[Any]]) -> None:
        """Run ``call(node, now)`` on ``node_id`` now; a synchronous refusal becomes its result."""

        def run(now: float) -> list[Any]:
            host = self.hosts[node_id]
            try:
                effects = call(host.node, now)
            except Exception as exc:  # NotLeader and other refusals become the request's result
                self._complete(node_id, request_id, _Failed(exc))
                return []
            return host.command(lambda: effects, now)

        self.sim.call(node_id, run)

    def submit_propose(self, node_id: NodeId, command: Any, request_id: Any = None) -> Any:
        request_id = self.next_id() if request_id is None else request_id
        self.submit(node_id, request_id, lambda node, now: node.propose(request_id, command, now))
        return request_id

    def submit_read(self, node_id: NodeId, query: Any, consistency: str = STRONG, session_index: int = 0, request_id: Any = None) -> Any:
        request_id = self.next_id() if request_id is None else request_id
        self.submit(
            node_id,
            request_id,
            lambda node, now: node.read(request_id, query, now, consistency=consistency, session_index=session_index),
        )
        return request_id

    def propose_value(
        self,
        value: Any,
        *,
        node: NodeId | None = None,
        wait: bool = True,
        timeout: float = 5.0,
        session: Session | None = None,
        proposal_id: Any = None,
    ) -> Committed | Queued:
        """The design's ``propose_value``: :class:`Committed`, or :class:`Queued` with ``wait=False``.

        Raises ``NotLeader`` (with the known leader), ``ProposalDropped``/``ProposalOutcomeUnknown``,
        or ``RequestTimeout`` when no answer came within ``timeout`` simulated seconds.
        """
        target = node if node is not None else self.leader()
        if target is None:
            raise NotLeader(None)
        request_id = self.submit_propose(target, value, proposal_id)

        def done() -> bool:
            result = self.results.get(request_id)
            return result is not None and (not wait or type(result) is not ProposalQueued)

        if not self.sim.run_until(done, timeout=timeout):
            raise RequestTimeout(str(target), timeout)
        result = self.results[request_id]
        if type(result) is _Failed:
            raise result.error
        if type(result) is ProposalQueued:
            if session is not None:
                session.observe(result.index)
            return Queued(request_id, result.index, result.term)
        if result.error is not None:
            raise result.error
        if session is not None:
            session.observe(result.index)
        return Committed(request_id, result.index, result.result)

    def read_consensus_value(
        self,
        key: Any,
        *,
        consistency: str = STRONG,
        node: NodeId | None = None,
        session: Session | None = None,
        timeout: float = 5.0,
    ) -> Any:
        """The design's ``read_consensus_value``: strong reads go to the leader; eventual and
        session reads to ``node`` (default: the leader, else any live member)."""
        if consistency not in (STRONG, EVENTUAL, SESSION):
            raise ValueError(f"unknown consistency {consistency!r}")
        target = node if node is not None else self.leader()
        if target is None:
            if consistency == STRONG:
                raise NotLeader(None)
            target = self.alive_nodes()[0].id
        session_index = session.last_index if session is not None else 0
        request_id = self.submit_read(target, key, consistency, session_index)
        if not self.sim.run_until(lambda: request_id in self.results, timeout=timeout):
            raise RequestTimeout(str(target), timeout)
        result = self.results.pop(request_id)
        if type(result) is _Failed:
            raise result.error
        if result.error is not None:
            raise result.error
        if session is not None:
            session.observe(result.index)
        return result.value

    # -- plumbing -----------------------------------------------------------------------

    def _complete(self, node_id: NodeId, request_id: Any, result: Any) -> None:
        self.results[request_id] = result
        for listener in self.listeners:
            listener(node_id, request_id, result, self.sim.now)

    def _on_effect(self, node_id: Hashable, effect: Any) -> None:
        assert isinstance(node_id, (str, int))  # the simulation runs only this cluster's nodes
        kind = type(effect)
        if kind is Persist or kind is PersistSnapshot:
            self.storage[node_id].apply(effect)
        elif kind is ProposalResult or kind is ReadResult or kind is ProposalQueued:
            self._complete(node_id, effect.request_id, effect)
        elif kind is RoleChanged:
            pass
        else:
            handler = self.effect_handlers.get(kind)
            if handler is None:
                raise TypeError(f"{node_id!r} produced {effect!r} and nothing handles it")
            handler(node_id, effect)

    def check_final(self) -> None:
        """Cross-check every live log pairwise (log matching) and the applied states."""
        if self.checker is not None:
            self.checker.compare_logs(self.alive_nodes())
