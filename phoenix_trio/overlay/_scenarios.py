"""Seeded simulations of the overlay at scale, with the measurements issue 9 asks for.

Used by ``tests/overlay`` (1,000 nodes in the normal suite, 10,000 marked slow) and by
``bench/overlay.py``. Every function takes a seed and returns plain records, so a run
replays exactly and tests assert on the same figures the benchmark prints.

- :func:`overlay_scenario`: all nodes join HyParView at once through one contact; the
  overlay's health (connected, symmetric, degrees) after the join and, after a fraction
  of the nodes crash at once, after repair; Plumtree reliability, relative message
  redundancy and last delivery hop once the tree is stable and for the broadcasts sent
  right after the crash; point-to-point routing between random pairs before and after.
- :func:`gossip_scenario`: rounds for one gossip message to reach every node, against
  log2(N) + ln(N); peers drawn uniformly from the whole membership or from HyParView.
- :func:`anti_entropy_scenario`: a partitioned group misses messages (pushing stops
  while it is cut off) and catches up through anti-entropy after the partition heals.
- :func:`tree_scenario` / :func:`client_server_scenario`: the other two overlays under a
  mass join and failures.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Hashable, Iterable
from functools import partial
from typing import Any

import attrs

from ._client_server import ClientServer
from ._config import (
    ClientServerConfig,
    GossipConfig,
    HyParViewConfig,
    PlumtreeConfig,
    RoutingConfig,
    TreeConfig,
)
from ._gossip import Gossip, rounds_bound
from ._messages import EagerPush, RouteRequest
from ._node import OverlayNode
from ._simnet import SimNetwork


def node_ids(n: int) -> list[str]:
    return [f"n{i:05d}" for i in range(n)]


# -- overlay health ---------------------------------------------------------------------


@attrs.frozen
class OverlayHealth:
    """The shape of the overlay among live nodes, from their neighbour lists."""

    alive: int
    components: int
    largest_component: int
    connected: bool
    asymmetric_links: int
    links_to_dead: int
    degree_min: int
    degree_max: int
    degree_mean: float
    isolated: int
    passive_mean: float
    eccentricity: int
    """Hops from the first live node to the farthest one (a lower bound on the diameter)."""

    @property
    def symmetric(self) -> bool:
        return self.asymmetric_links == 0


def overlay_health(net: SimNetwork) -> OverlayHealth:
    alive = net.alive()
    alive_set = set(alive)
    neighbors = {a: list(net.node(a).neighbors()) for a in alive}
    asym = dead = 0
    for a, peers in neighbors.items():
        for b in peers:
            if b not in alive_set:
                dead += 1
            elif a not in neighbors[b]:
                asym += 1
    seen: set[Hashable] = set()
    sizes: list[int] = []
    eccentricity = 0
    for start in alive:
        if start in seen:
            continue
        seen.add(start)
        frontier, size, depth = [start], 1, 0
        while frontier:
            nxt = []
            for a in frontier:
                for b in neighbors[a]:
                    if b in alive_set and b not in seen:
                        seen.add(b)
                        nxt.append(b)
            if nxt:
                depth += 1
            size += len(nxt)
            frontier = nxt
        if not sizes:
            eccentricity = depth
        sizes.append(size)
    degrees = [len(p) for p in neighbors.values()] or [0]
    passive = [len(getattr(net.node(a).membership, "passive", ())) for a in alive] or [0]
    return OverlayHealth(
        alive=len(alive),
        components=len(sizes),
        largest_component=max(sizes, default=0),
        connected=len(sizes) == 1,
        asymmetric_links=asym,
        links_to_dead=dead,
        degree_min=min(degrees),
        degree_max=max(degrees),
        degree_mean=sum(degrees) / len(degrees),
        isolated=sum(1 for d in degrees if d == 0),
        passive_mean=sum(passive) / len(passive),
        eccentricity=eccentricity,
    )


# -- a HyParView + Plumtree cluster -----------------------------------------------------


class Cluster:
    """``n`` :class:`OverlayNode` s on a :class:`SimNetwork`, all joining through the first.

    Counts Plumtree payload messages (EagerPush) per message id, for the redundancy.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        *,
        overlay: Any = None,
        broadcast: PlumtreeConfig | None = PlumtreeConfig(),
        routing: RoutingConfig | None = RoutingConfig(),
        gossip: GossipConfig | None = None,
        wire: bool = False,
        contacts: int = 1,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.eager_sent: Counter[bytes] = Counter()
        self.route_requests = 0
        self.net = SimNetwork(seed=seed, wire=wire, count_message=self._count)
        self.ids = node_ids(n)
        overlay = overlay if overlay is not None else HyParViewConfig()
        for node_id in self.ids:
            node = OverlayNode(
                node_id,
                overlay,
                rng=random.Random(self.rng.getrandbits(64)),
                broadcast=broadcast,
                routing=routing,
                gossip=gossip,
            )
            self.net.add(node_id, node)
        self.contacts = self.ids[:contacts]

    def _count(self, src: Hashable, dst: Hashable, message: Any) -> None:
        kind = type(message)
        if kind is EagerPush:
            self.eager_sent[message.message_id] += 1
        elif kind is RouteRequest:
            self.route_requests += 1

    def node(self, node_id: Hashable) -> OverlayNode:
        return self.net.node(node_id)  # type: ignore[no-any-return]

    def mass_join(self, *, at: float | None = None) -> None:
        """Every node joins at the same instant through the contacts (the first is the seed)."""
        first = self.ids[0]
        self.net.call(first, partial(self.node(first).join, []), at=at)
        for node_id in self.ids[1:]:
            self.net.call(node_id, partial(self.node(node_id).join, self.contacts), at=at)

    def broadcast(self, origin: str, payload: bytes) -> bytes:
        box: list[bytes] = []
        node = self.node(origin)

        def fire(now: float) -> list[Any]:
            effects = node.broadcast(payload, now)
            box.append(effects[0].message_id)
            return effects

        self.net.call(origin, fire)
        self.net.sim.step()  # run the call now (it is the next event)
        while not box and self.net.sim.step():
            pass
        return box[0]

    def send(self, origin: str, target: str, payload: bytes) -> bytes:
        node = self.node(origin)
        mid = self.rng.randbytes(16)
        self.net.call(origin, lambda now: node.send_to(target, payload, now, message_id=mid))
        return mid

    def crash_fraction(self, fraction: float) -> list[str]:
        dead = self.rng.sample(self.ids, int(round(len(self.ids) * fraction)))
        self.net.crash(dead)
        return dead

    def live_origin(self) -> str:
        alive = self.net.alive()
        return alive[self.rng.randrange(len(alive))]  # type: ignore[return-value]


@attrs.frozen
class BroadcastFigures:
    """Plumtree figures over a series of broadcasts."""

    count: int
    reliability_min: float
    reliability_mean: float
    reliability_first: float
    rmr_mean: float
    rmr_max: float
    last_hop_mean: float
    last_hop_max: int


def _broadcast_figures(cluster: Cluster, mids: list[bytes], alive: Iterable[Hashable]) -> BroadcastFigures:
    live = set(alive)
    rel, rmr, hops = [], [], []
    for mid in mids:
        got = cluster.net.deliveries.get(mid, {})
        reached = sum(1 for node in got if node in live)
        rel.append(reached / len(live))
        n = len(got)
        rmr.append(cluster.eager_sent[mid] / (n - 1) - 1 if n > 1 else 0.0)
        hops.append(max((r for _, r in got.values()), default=0))
    return BroadcastFigures(
        count=len(mids),
        reliability_min=min(rel),
        reliability_mean=sum(rel) / len(rel),
        reliability_first=rel[0],
        rmr_mean=sum(rmr) / len(rmr),
        rmr_max=max(rmr),
        last_hop_mean=sum(hops) / len(hops),
        last_hop_max=max(hops),
    )


@attrs.frozen
class RoutingFigures:
    sent: int
    delivered: int
    hops_mean: float
    requests_per_discovery: float


def _discoveries(cluster: Cluster, alive: Iterable[Hashable]) -> int:
    total = 0
    for a in alive:
        router = cluster.node(a).router
        assert router is not None  # the cluster was built with routing
        total += router.stats.discoveries
    return total


def _route_pairs(cluster: Cluster, pairs: int, settle: float) -> RoutingFigures:
    alive = cluster.net.alive()
    before = cluster.route_requests
    discoveries_before = _discoveries(cluster, alive)
    mids = []
    for _ in range(pairs):
        origin, target = cluster.rng.sample(alive, 2)
        mids.append((cluster.send(origin, target, b"p2p"), target))  # type: ignore[arg-type]
    cluster.net.run_for(settle)
    delivered = [cluster.net.deliveries.get(mid, {}).get(target) for mid, target in mids]
    hops = [d[1] for d in delivered if d is not None]
    discoveries = _discoveries(cluster, alive) - discoveries_before
    return RoutingFigures(
        sent=pairs,
        delivered=len(hops),
        hops_mean=sum(hops) / len(hops) if hops else 0.0,
        requests_per_discovery=(cluster.route_requests - before) / max(discoveries, 1),
    )


@attrs.frozen
class OverlayScenario:
    """Everything :func:`overlay_scenario` measured."""

    n: int
    seed: int
    fail_fraction: float
    after_join: OverlayHealth
    after_repair: OverlayHealth
    stable: BroadcastFigures
    after_fail: BroadcastFigures
    routing_stable: RoutingFigures
    routing_after: RoutingFigures
    messages: dict[str, int]
    events: int


def overlay_scenario(
    n: int,
    seed: int,
    fail_fraction: float,
    *,
    settle: float = 30.0,
    warmup: int = 10,
    measured: int = 10,
    after_fail: int = 10,
    repair: float = 30.0,
    route_pairs: int = 20,
    wire: bool = False,
) -> OverlayScenario:
    """Mass join, stable broadcasts, crash ``fail_fraction`` at once, broadcasts, repair.

    Timeline: all ``n`` nodes join at t=0 through one contact; after ``settle`` s the
    overlay is checked; ``warmup`` broadcasts (one a second, random origins) let
    Plumtree prune its tree, then ``measured`` broadcasts give the stable redundancy and
    last delivery hop. Then ``fail_fraction`` of the nodes crash at once and
    ``after_fail`` broadcasts follow immediately (one every half second); their
    reliability is the fraction of live nodes each reached. After ``repair`` s the
    overlay is checked again. Routing: ``route_pairs`` point-to-point messages between
    random live pairs once the tree is stable (discovery runs along it) and after the
    repair.
    """
    cluster = Cluster(n, seed, wire=wire)
    net = cluster.net
    cluster.mass_join(at=0.0)
    net.run(settle)
    joined = overlay_health(net)
    payload = b"b" * 100
    mids = []
    for i in range(warmup + measured):
        mids.append(cluster.broadcast(cluster.live_origin(), payload))
        net.run_for(1.0)
    stable = _broadcast_figures(cluster, mids[warmup:], net.alive())
    routing_stable = _route_pairs(cluster, route_pairs, settle=2.0)
    cluster.crash_fraction(fail_fraction)
    fail_mids = []
    for _ in range(after_fail):
        fail_mids.append(cluster.broadcast(cluster.live_origin(), payload))
        net.run_for(0.5)
    net.run_for(repair)
    alive = net.alive()
    failed = _broadcast_figures(cluster, fail_mids, alive)
    repaired = overlay_health(net)
    routing_after = _route_pairs(cluster, route_pairs, settle=3.0)
    return OverlayScenario(
        n=n,
        seed=seed,
        fail_fraction=fail_fraction,
        after_join=joined,
        after_repair=repaired,
        stable=stable,
        after_fail=failed,
        routing_stable=routing_stable,
        routing_after=routing_after,
        messages=dict(net.sent),
        events=net.sim.stats.delivered,
    )


# -- gossip ------------------------------------------------------------------------------


@attrs.frozen
class GossipScenario:
    n: int
    seed: int
    peers: str
    reached: int
    rounds: int
    """Rounds (of ``round_duration``) from origination until the last node had the message."""
    elapsed_rounds: float
    max_hops: int
    bound: float
    pushes: int


class _UniformSampler:
    """Uniform random peers from the whole membership (a peer-sampling service)."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    def __call__(self, rng: random.Random, k: int) -> list[str]:
        ids = self.ids
        picks: dict[str, None] = {}
        while len(picks) < min(k + 1, len(ids)):
            picks[ids[rng.randrange(len(ids))]] = None
        return list(picks)


def gossip_scenario(
    n: int,
    seed: int,
    *,
    peers: str = "full",
    config: GossipConfig | None = None,
    settle: float = 30.0,
) -> GossipScenario:
    """One gossip message from one node; how many rounds until every node has it.

    ``peers="full"``: each node draws peers uniformly from all nodes (the model behind
    the log2(N) + ln(N) bound). ``peers="hyparview"``: gossip runs inside
    :class:`OverlayNode` over the HyParView active view after a mass join (``settle`` s).
    """
    config = config if config is not None else GossipConfig()
    rng = random.Random(seed)
    ids = node_ids(n)
    if peers == "full":
        net = SimNetwork(seed=seed)
        sampler = _UniformSampler(ids)
        for node_id in ids:
            net.add(node_id, Gossip(node_id, config, rng=random.Random(rng.getrandbits(64)), sampler=sampler))
        net.run(config.round_duration * 2)
    elif peers == "hyparview":
        cluster = Cluster(n, seed, broadcast=None, routing=None, gossip=config)
        cluster.mass_join(at=0.0)
        net = cluster.net
        net.run(settle)
    else:
        raise ValueError(f"peers must be 'full' or 'hyparview', not {peers!r}")
    origin = ids[rng.randrange(n)]
    box: list[bytes] = []
    node = net.node(origin)

    def originate(now: float) -> list[Any]:
        effects = node.gossip_message(b"g" * 100, now)
        box.append(effects[0].envelope.id)
        return effects

    start = net.now
    net.call(origin, originate)
    net.sim.step()
    mid = box[0]
    alive = len(net.alive())
    net.run_until(lambda: len(net.deliveries.get(mid, ())) >= alive, timeout=config.message_ttl)
    got = net.deliveries.get(mid, {})
    last = max(t for t, _ in got.values())
    elapsed = (last - start) / config.round_duration
    return GossipScenario(
        n=n,
        seed=seed,
        peers=peers,
        reached=len(got),
        rounds=math.ceil(elapsed - 1e-9),
        elapsed_rounds=elapsed,
        max_hops=max(h for _, h in got.values()),
        bound=rounds_bound(n),
        pushes=net.sent["GossipPush"],
    )


@attrs.frozen
class AntiEntropyScenario:
    n: int
    seed: int
    cut_off: int
    messages: int
    missing_at_heal: int
    """(node, message) pairs the cut-off group lacked when the partition healed."""
    caught_up: bool
    catch_up_seconds: float
    majority_complete_before_heal: bool


def anti_entropy_scenario(
    n: int,
    seed: int,
    *,
    cut_fraction: float = 0.2,
    messages: int = 5,
    partition_for: float = 15.0,
    anti_entropy: bool = True,
    timeout: float = 25.0,
) -> AntiEntropyScenario:
    """A group is partitioned away while messages spread; it catches up after healing.

    Pushing is bounded (``push_rounds=3``) so that when the partition heals nobody is
    pushing any more: only anti-entropy can bring the messages over (they are still
    within their 30 s ttl). With ``anti_entropy=False`` the interval is set beyond the
    run, which shows the group does not catch up without it.
    """
    config = GossipConfig(
        push_rounds=3,
        anti_entropy_interval=5.0 if anti_entropy else 10_000.0,
    )
    rng = random.Random(seed)
    ids = node_ids(n)
    net = SimNetwork(seed=seed)
    sampler = _UniformSampler(ids)
    for node_id in ids:
        net.add(node_id, Gossip(node_id, config, rng=random.Random(rng.getrandbits(64)), sampler=sampler))
    cut = rng.sample(ids, int(n * cut_fraction))
    cut_set = set(cut)
    majority = [i for i in ids if i not in cut_set]
    net.run(0.5)
    net.partition(cut)
    mids: list[bytes] = []
    for k in range(messages):
        origin = majority[rng.randrange(len(majority))]
        node = net.node(origin)
        net.call(origin, partial(_originate, node, b"m%d" % k, mids=mids), at=1.0 + k * 0.5)
    heal_at = 0.5 + partition_for
    net.run(heal_at)
    majority_set = set(majority)

    def count_missing() -> int:
        return sum(1 for mid in mids for node in cut if node not in net.deliveries.get(mid, {}))

    majority_complete = all(majority_set <= set(net.deliveries.get(mid, {})) for mid in mids)
    missing = count_missing()
    net.heal()
    caught = net.run_until(lambda: count_missing() == 0, timeout=timeout)
    last = max((t for mid in mids for node, (t, _) in net.deliveries.get(mid, {}).items() if node in cut_set), default=heal_at)
    return AntiEntropyScenario(
        n=n,
        seed=seed,
        cut_off=len(cut),
        messages=len(mids),
        missing_at_heal=missing,
        caught_up=caught,
        catch_up_seconds=(last - heal_at) if caught else float("inf"),
        majority_complete_before_heal=majority_complete,
    )


def _originate(node: Gossip, payload: bytes, now: float, mids: list[bytes]) -> list[Any]:
    effects = node.gossip_message(payload, now)
    mids.append(effects[0].envelope.id)
    return effects


# -- tree and client_server ----------------------------------------------------------------


@attrs.frozen
class TreeScenario:
    n: int
    in_tree_after_join: int
    max_depth_after_join: int
    max_children: int
    health_after_join: OverlayHealth
    killed: int
    in_tree_after_repair: int
    max_depth_after_repair: int
    health_after_repair: OverlayHealth
    broadcast_reliability: float


def _tree_depths(cluster: Cluster) -> tuple[int, int, int]:
    in_tree = depth = children = 0
    for a in cluster.net.alive():
        m = cluster.node(a).membership
        if m.in_tree:  # type: ignore[union-attr]
            in_tree += 1
            depth = max(depth, m.depth)  # type: ignore[union-attr]
            children = max(children, len(m.children))  # type: ignore[union-attr]
    return in_tree, depth, children


def tree_scenario(n: int, seed: int, *, kill: int = 10, config: TreeConfig | None = None) -> TreeScenario:
    """Mass join into a tree through the root; crash ``kill`` inner nodes; check repair."""
    config = config if config is not None else TreeConfig()
    cluster = Cluster(n, seed, overlay=config, routing=None, contacts=3)
    net = cluster.net
    cluster.mass_join(at=0.0)
    net.run(20.0)
    in_tree, depth, children = _tree_depths(cluster)
    joined = overlay_health(net)
    inner = [a for a in cluster.ids[3:] if cluster.node(a).membership.children]  # type: ignore[union-attr]
    victims = cluster.rng.sample(inner, min(kill, len(inner)))
    net.crash(victims)
    net.run_for(20.0)
    in_tree2, depth2, _ = _tree_depths(cluster)
    repaired = overlay_health(net)
    mid = cluster.broadcast(cluster.live_origin(), b"t")
    net.run_for(5.0)
    got = net.deliveries.get(mid, {})
    alive = set(net.alive())
    return TreeScenario(
        n=n,
        in_tree_after_join=in_tree,
        max_depth_after_join=depth,
        max_children=children,
        health_after_join=joined,
        killed=len(victims),
        in_tree_after_repair=in_tree2,
        max_depth_after_repair=depth2,
        health_after_repair=repaired,
        broadcast_reliability=sum(1 for x in got if x in alive) / len(alive),
    )


@attrs.frozen
class ClientServerScenario:
    n: int
    servers: int
    attached_after_join: int
    health_after_join: OverlayHealth
    attached_after_failover: int
    health_after_failover: OverlayHealth
    broadcast_reliability: float
    routed_delivered: int
    routed_sent: int


def _client_server(cluster: Cluster, node_id: Hashable) -> ClientServer:
    membership = cluster.node(node_id).membership
    assert isinstance(membership, ClientServer)  # the cluster's overlay is client_server
    return membership


def client_server_scenario(n: int, seed: int, *, servers: int = 4) -> ClientServerScenario:
    """Clients attach to servers; one server crashes; its clients fail over."""
    ids = node_ids(n)
    config = ClientServerConfig(servers=ids[:servers])
    cluster = Cluster(n, seed, overlay=config)
    net = cluster.net
    for node_id in ids:
        net.call(node_id, partial(cluster.node(node_id).join, ()), at=0.0)
    net.run(10.0)

    def attached() -> int:
        return sum(
            1
            for a in net.alive()
            if not _client_server(cluster, a).is_server and _client_server(cluster, a).server is not None
        )

    joined_attached, joined = attached(), overlay_health(net)
    net.crash([ids[0]])
    net.run_for(10.0)
    after_attached, after = attached(), overlay_health(net)
    mid = cluster.broadcast(ids[-1], b"cs")
    net.run_for(3.0)
    alive = set(net.alive())
    got = net.deliveries.get(mid, {})
    routing = _route_pairs(cluster, 20, settle=3.0)
    return ClientServerScenario(
        n=n,
        servers=servers,
        attached_after_join=joined_attached,
        health_after_join=joined,
        attached_after_failover=after_attached,
        health_after_failover=after,
        broadcast_reliability=sum(1 for x in got if x in alive) / len(alive),
        routed_delivered=routing.delivered,
        routed_sent=routing.sent,
    )
