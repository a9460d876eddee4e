"""Validated configuration records for every overlay core, and the design's entry points.

:func:`configure_overlay` mirrors the design's ``configure_overlay(:hyparview |
:client_server | :tree, opts)`` with its option names and defaults (HyParView fanout 6,
active view 6, passive view 30; client_server servers and pool size 10; tree fanout 4,
max depth 6). :func:`start_gossip_protocol` mirrors the design's gossip pattern defaults
(version "1.0", fanout 3, one-second rounds, 30-second message ttl, compression on).

Times are seconds (floats), as everywhere in phoenix_trio; the design writes
milliseconds (``round_duration: 1000``, ``message_ttl: 30_000``). Every record is frozen;
an invalid value raises :class:`phoenix_trio.ConfigurationError` when it is built.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from .._errors import ConfigurationError
from ._messages import MAX_BATCH, MAX_IDS, MAX_NODE_ID, MAX_PATH, MAX_VIEW


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and not isinstance(value, bool)) or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}")


def _count(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigurationError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _check_times(record: Any, *names: str) -> None:
    for name in names:
        _positive(name, getattr(record, name))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _node_ids(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise ConfigurationError(f"{name} must be a sequence of node ids, got {value!r}")
    ids = tuple(value)
    for node in ids:
        if type(node) is not str or not 0 < len(node) <= MAX_NODE_ID or not _utf8(node):
            raise ConfigurationError(f"{name}: {node!r} is not a node id (a non-empty UTF-8 string)")
    if len(set(ids)) != len(ids):
        raise ConfigurationError(f"{name} lists a node twice")
    return ids


@attrs.frozen(slots=True)
class HyParViewConfig:
    """HyParView membership (Leitao, Pereira, Rodrigues, DSN 2007) with the design's sizes.

    - ``active_view_size`` (6) / ``passive_view_size`` (30): the design's defaults (the
      paper uses 5 / 30).
    - ``fanout`` (6): how many active neighbours an eager broadcast starts with; at most
      the active view size (equal by default, so every neighbour starts eager).
    - ``active_random_walk_length`` (ARWL 6) and ``passive_random_walk_length`` (PRWL 3):
      the paper's FORWARD_JOIN walk lengths; ``shuffle_active`` (3) and
      ``shuffle_passive`` (4) the paper's shuffle sample sizes (ka, kp); a shuffle walks
      ARWL hops.
    - ``shuffle_interval``: period of the passive-view SHUFFLE.
    - ``repair_interval``: while the active view has free slots, how often to ask another
      passive node (failure repair also starts at once on each loss).
    - ``neighbor_timeout``: a NEIGHBOR request unanswered for this long counts as failed.
    - ``join_timeout``: a JOIN unanswered for this long moves on to the next contact.
    - ``welcome_sample``: how many ids a WELCOME carries to seed a joiner's passive view.
    - ``probe_interval`` / ``max_suspects`` / ``suspect_ttl``: peers whose link failed are
      remembered (bounded) and one is probed per interval; one that answers is reconnected
      with high priority, which merges the overlay again after a partition heals.
    - ``tombstone_ttl``: how long a node that announced its departure is kept out of
      views learnt from shuffles and walks, so departed members are not listed again.
    """

    kind: str = attrs.field(default="hyparview", init=False)
    active_view_size: int = 6
    passive_view_size: int = 30
    fanout: int = 6
    active_random_walk_length: int = 6
    passive_random_walk_length: int = 3
    shuffle_active: int = 3
    shuffle_passive: int = 4
    shuffle_interval: float = 10.0
    repair_interval: float = 1.0
    neighbor_timeout: float = 2.0
    join_timeout: float = 3.0
    welcome_sample: int = 8
    probe_interval: float = 10.0
    max_suspects: int = 16
    suspect_ttl: float = 300.0
    tombstone_ttl: float = 120.0

    def __attrs_post_init__(self) -> None:
        _count("active_view_size", self.active_view_size, 1, MAX_VIEW)
        _count("passive_view_size", self.passive_view_size, 0, MAX_VIEW)
        _count("fanout", self.fanout, 1, self.active_view_size)
        _count("active_random_walk_length", self.active_random_walk_length, 0, 64)
        _count("passive_random_walk_length", self.passive_random_walk_length, 0, self.active_random_walk_length)
        # a shuffle carries the sender plus up to ka + kp ids (fewer if the views are smaller)
        _count("shuffle_active", self.shuffle_active, 0, MAX_VIEW // 2 - 1)
        _count("shuffle_passive", self.shuffle_passive, 0, MAX_VIEW // 2 - 1)
        _count("welcome_sample", self.welcome_sample, 0, MAX_VIEW)
        _count("max_suspects", self.max_suspects, 0, 4096)
        _check_times(
            self,
            "shuffle_interval",
            "repair_interval",
            "neighbor_timeout",
            "join_timeout",
            "probe_interval",
            "suspect_ttl",
            "tombstone_ttl",
        )


@attrs.frozen(slots=True)
class ClientServerConfig:
    """Hub and spoke: ``servers`` form a full mesh; every other node is a client of one server.

    A client picks a server by hashing its own id (so clients spread evenly) and moves to
    the next one when its server fails. ``pool_size`` (design default 10) is the number
    of connections the transport keeps to each server; the sans-IO core only carries it.
    ``hello_timeout``: an unanswered hello counts as failed; ``retry_interval``: how
    often a client without a server, or a server missing peers, tries again.
    """

    kind: str = attrs.field(default="client_server", init=False)
    servers: tuple[str, ...] = attrs.field(default=(), converter=lambda v: _node_ids("servers", v))
    pool_size: int = 10
    hello_timeout: float = 2.0
    retry_interval: float = 1.0

    def __attrs_post_init__(self) -> None:
        if not self.servers:
            raise ConfigurationError("client_server needs at least one server")
        _count("pool_size", self.pool_size, 1, 1024)
        _check_times(self, "hello_timeout", "retry_interval")


@attrs.frozen(slots=True)
class TreeConfig:
    """A rooted tree: each node has at most ``fanout`` children (design: 4), depth at most ``max_depth`` (6).

    The root is at depth 0, so a full tree holds ``(fanout**(max_depth+1) - 1) /
    (fanout - 1)`` nodes (5,461 with the defaults); joins beyond that are refused with
    :class:`~phoenix_trio.overlay.JoinFailed`. ``join_timeout``: an unanswered join
    moves on to the next contact; ``info_interval``: how often subtree sizes are
    refreshed upwards when they changed.
    """

    kind: str = attrs.field(default="tree", init=False)
    fanout: int = 4
    max_depth: int = 6
    join_timeout: float = 2.0
    info_interval: float = 0.5

    def __attrs_post_init__(self) -> None:
        _count("fanout", self.fanout, 1, MAX_VIEW)
        _count("max_depth", self.max_depth, 1, MAX_PATH - 2)
        _check_times(self, "join_timeout", "info_interval")

    @property
    def capacity(self) -> int:
        if self.fanout == 1:
            return self.max_depth + 1
        return (self.fanout ** (self.max_depth + 1) - 1) // (self.fanout - 1)


MembershipConfig = HyParViewConfig | ClientServerConfig | TreeConfig


@attrs.frozen(slots=True)
class PlumtreeConfig:
    """Plumtree broadcast (Leitao, Pereira, Rodrigues, SRDS 2007) over the overlay neighbours.

    - ``ihave_interval``: lazy IHAVE announcements are batched and sent once per interval.
    - ``graft_timeout``: wait this long after the first IHAVE for a missing message before
      GRAFTing; ``graft_retry``: then try the next announcer this often.
    - ``seen_cache_size`` / ``seen_ttl``: the bounded set of delivered message ids.
    - ``store_size`` / ``store_ttl``: payloads kept to answer GRAFTs.
    - ``optimization_threshold``: when a lazy link announces a message this many rounds
      earlier than the eager copy arrived, swap the two links (the paper's optimisation,
      which shortens the tree); 0 turns it off. Measured with broadcasts from random
      origins (bench/overlay.py scenario): last delivery hop 26.5 (max 35) with 3
      against 39 (max 44) with 0 at 10,000 nodes; 15 (max 18) against 17 (max 19) at
      1,000. It costs GRAFT/PRUNE pairs while the shared tree adapts.
    """

    ihave_interval: float = 0.05
    graft_timeout: float = 0.25
    graft_retry: float = 0.1
    seen_cache_size: int = 100_000
    seen_ttl: float = 120.0
    store_size: int = 10_000
    store_ttl: float = 30.0
    optimization_threshold: int = 3

    def __attrs_post_init__(self) -> None:
        _check_times(self, "ihave_interval", "graft_timeout", "graft_retry", "seen_ttl", "store_ttl")
        _count("seen_cache_size", self.seen_cache_size, 1, 10**8)
        _count("store_size", self.store_size, 1, 10**8)
        _count("optimization_threshold", self.optimization_threshold, 0, 1000)


@attrs.frozen(slots=True)
class GossipConfig:
    """The design's gossip pattern (``start_gossip_protocol``) plus its bounds.

    - ``version`` ("1.0"), ``fanout`` (3 peers per round), ``round_duration`` (1 s),
      ``message_ttl`` (30 s), ``compression`` (True: drivers lz4-compress large pushes).
    - ``push_rounds``: how many rounds a node keeps pushing a message it got; None
      (default) means until the message's ttl expires, as the design says. Bounding it
      (rumour mongering) saves bandwidth; anti-entropy then covers nodes the push missed.
    - ``anti_entropy_interval``: every interval a node sends a digest of the ids it holds
      to one random peer, which answers with what the sender lacks and asks for what it
      lacks itself; so a node cut off by a partition catches up after it heals.
    - ``digest_size``: most ids per digest (the newest); ``max_batch``: most envelopes
      per push.
    - ``max_messages``: messages kept (for pushing and anti-entropy), oldest dropped
      first; also bounded by their ttl.
    - ``seen_cache_size``: message ids remembered so each is processed once; an id is
      kept for its ttl plus ``message_ttl`` again, so a late copy is still recognised.
    - ``max_clock_entries``: vector clock entries kept; the least recently advanced go
      first (like Riak's pruning: beyond the bound, causality is approximate).
    """

    version: str = "1.0"
    fanout: int = 3
    round_duration: float = 1.0
    message_ttl: float = 30.0
    compression: bool = True
    push_rounds: int | None = None
    anti_entropy_interval: float = 5.0
    digest_size: int = 1024
    max_batch: int = 256
    max_messages: int = 10_000
    seen_cache_size: int = 100_000
    max_clock_entries: int = 256

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.version, str) or not self.version:
            raise ConfigurationError("version must be a non-empty string")
        _count("fanout", self.fanout, 1, MAX_VIEW)
        _check_times(self, "round_duration", "message_ttl", "anti_entropy_interval")
        if not isinstance(self.compression, bool):
            raise ConfigurationError("compression must be True or False")
        if self.push_rounds is not None:
            _count("push_rounds", self.push_rounds, 1, 10**6)
        _count("digest_size", self.digest_size, 1, MAX_IDS)
        _count("max_batch", self.max_batch, 1, MAX_BATCH)
        _count("max_messages", self.max_messages, 1, 10**7)
        _count("seen_cache_size", self.seen_cache_size, 1, 10**8)
        _count("max_clock_entries", self.max_clock_entries, 1, 1024)


@attrs.frozen(slots=True)
class RoutingConfig:
    """Point-to-point routing to nodes that are not neighbours (see ``docs/overlay.md``).

    - ``max_hops``: longest route; discovery stops there (at most 63). Routes found
      along the broadcast tree follow its branches, which are longer than shortest paths
      (up to about 26 hops at 10,000 nodes), hence 32.
    - ``discovery_timeout``: wait this long for a route reply before the next attempt;
      ``discovery_attempts``: the first attempt floods the broadcast tree's eager links,
      later ones every neighbour link.
    - ``route_cache_size`` / ``route_ttl``: learnt routes kept.
    - ``max_pending``: payloads queued per destination while its route is discovered.
    - ``max_reroutes``: times a payload that met a broken route is re-sent on a fresh one.
    """

    max_hops: int = 32
    discovery_timeout: float = 1.0
    discovery_attempts: int = 2
    route_cache_size: int = 1024
    route_ttl: float = 60.0
    max_pending: int = 64
    max_reroutes: int = 2

    def __attrs_post_init__(self) -> None:
        _count("max_hops", self.max_hops, 1, MAX_PATH - 1)
        _check_times(self, "discovery_timeout", "route_ttl")
        _count("discovery_attempts", self.discovery_attempts, 1, 16)
        _count("route_cache_size", self.route_cache_size, 1, 10**7)
        _count("max_pending", self.max_pending, 1, 10**6)
        _count("max_reroutes", self.max_reroutes, 0, 16)


_OVERLAY_OPTIONS: dict[str, dict[str, str]] = {
    # design option name -> config field
    "hyparview": {f: f for f in attrs.fields_dict(HyParViewConfig) if f != "kind"},
    "client_server": {"servers": "servers", "pool_size": "pool_size", "connection_pool_size": "pool_size",
                      "hello_timeout": "hello_timeout", "retry_interval": "retry_interval"},
    "tree": {"tree_fanout": "fanout", "fanout": "fanout", "max_depth": "max_depth", "depth": "max_depth",
             "join_timeout": "join_timeout", "info_interval": "info_interval"},
}
_OVERLAY_CLASSES: dict[str, type[Any]] = {
    "hyparview": HyParViewConfig,
    "client_server": ClientServerConfig,
    "tree": TreeConfig,
}


def configure_overlay(kind: str, **opts: Any) -> MembershipConfig:
    """A validated overlay configuration, as the design's ``configure_overlay``.

    ``kind`` is ``"hyparview"``, ``"client_server"`` or ``"tree"`` (a leading colon, as in
    the design's Elixir atoms, is accepted). Options use the design's names:

    - hyparview: ``fanout`` (6), ``active_view_size`` (6), ``passive_view_size`` (30) and
      any other :class:`HyParViewConfig` field;
    - client_server: ``servers`` (required, non-empty), ``pool_size`` (10; alias
      ``connection_pool_size``);
    - tree: ``tree_fanout`` (4; alias ``fanout``), ``max_depth`` (6; alias ``depth``).

    Unknown kinds or options raise :class:`phoenix_trio.ConfigurationError`.
    """
    if not isinstance(kind, str):
        raise ConfigurationError(f"overlay kind must be a string, got {kind!r}")
    key = kind.lstrip(":")
    names = _OVERLAY_OPTIONS.get(key)
    if names is None:
        raise ConfigurationError(f"unknown overlay {kind!r}; expected hyparview, client_server or tree")
    fields: dict[str, Any] = {}
    for option, value in opts.items():
        field = names.get(option)
        if field is None:
            raise ConfigurationError(f"{key} overlay has no option {option!r}; known: {sorted(names)}")
        if field in fields:
            raise ConfigurationError(f"{key}: option {option!r} given twice (under another name)")
        fields[field] = value
    try:
        return _OVERLAY_CLASSES[key](**fields)  # type: ignore[no-any-return]
    except TypeError as exc:  # e.g. a value of the wrong type reaching a converter
        raise ConfigurationError(f"{key}: {exc}") from None


def start_gossip_protocol(**opts: Any) -> GossipConfig:
    """The design's ``start_gossip_protocol(opts)``: a validated :class:`GossipConfig`.

    Options: ``version`` ("1.0"), ``fanout`` (3), ``round_duration`` (1.0 s),
    ``message_ttl`` (30.0 s), ``compression`` (True) and the bounds of
    :class:`GossipConfig`. Build a :class:`~phoenix_trio.overlay.Gossip` core (or an
    :class:`~phoenix_trio.overlay.OverlayNode` with ``gossip=``) from it to run it.
    """
    known = set(attrs.fields_dict(GossipConfig))
    unknown = set(opts) - known
    if unknown:
        raise ConfigurationError(f"unknown gossip option(s) {sorted(unknown)}; known: {sorted(known)}")
    return GossipConfig(**opts)
