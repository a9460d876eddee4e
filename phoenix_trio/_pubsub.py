"""Publish-subscribe across the cluster: ``node.publish`` and ``node.subscribe``.

``await node.publish(topic, event)`` hands ``event`` to every subscription, on any node,
whose pattern matches ``topic`` (syntax: :mod:`phoenix_trio._topics`).
``async with node.subscribe(pattern) as subscription`` subscribes for the block;
``async for message in subscription`` yields the publications, each a
:class:`~phoenix_trio.Message` of type ``phoenix.pubsub.publish`` whose subject is the
topic and whose routing says ``publish_subscribe``, the topic and the fanout strategy.

How a publication travels
-------------------------
Every node runs one :class:`PubSub` (``node.pubsub``). It keeps two tries: the local
subscriptions, and the *interest* of every connected peer: the set of (pattern, flags)
for which the peer has at least one subscription. Interest travels over the node
service ``phoenix.pubsub``: the full set when a connection opens, then a delta when a
pattern gains its first or loses its last local subscription. A peer whose connection
closes (it left, died or was cut off) loses its interest at once; when it reconnects it
sends the full set again. Leaving the ``subscribe`` block (or ``unsubscribe()``) removes
the subscription here and, with the last one for its pattern, everywhere.

A publish matches the topic against both tries (results cached per topic until a
subscription changes). Each peer with matching interest gets the publication **once**,
however many of its subscriptions match: it is appended to that peer connection's
batch like any ``node.send``, with flag :data:`FLAG_PUBLISH` marking the subject as a
topic. The receiving node matches the topic against its own subscriptions and puts the
message (the same lazily decoded object) into each one's queue. Local subscriptions get
one Message built once and shared.

Fanout strategies: ``immediate`` (default) queues the publication for each peer at once;
the connection's writer batches whatever has accumulated per write. ``batched`` holds
publications per destination node for at most :attr:`PubSub.batch_linger` seconds
(default 2 ms) or :attr:`PubSub.batch_size` publications (default 256), whichever comes
first, then queues them together: fewer, larger frames at low and medium rates, for up
to the linger in latency. Local subscriptions are always served immediately. An
``immediate`` publication to a node with a held batch flushes that batch first, so one
publisher's publications reach each subscriber in the order they were published.

Per-subscription guarantees (what happens at the high-water mark)
------------------------------------------------------------------
Every subscription has a queue of ``capacity`` messages (default 1024) and one policy:

- ``drop_oldest`` (default): a full queue discards its oldest message to make room. The
  publisher never waits; a slow subscriber sees the most recent ``capacity`` messages.
- ``drop_newest``: a full queue refuses the new message. The publisher never waits; a
  slow subscriber sees the oldest messages and misses what came later.
- ``block``: nothing is dropped; publishers wait. A publisher on the same node waits
  until the queue is below capacity. A publisher on another node waits for **credit**:
  each subscribing node grants each publishing node a window of publications
  (the largest capacity among its ``block`` subscriptions); every publication that
  matches a ``block`` subscription there spends one unit, and the unit comes back once
  every ``block`` subscription it entered has handled it (its consumer came back for
  the next message).
  Credit travels as a small service payload, so other traffic on the connection keeps
  flowing while a publisher waits. A ``block`` queue therefore holds at most
  ``capacity`` messages from local publishers plus one window per publishing node.
  ``publish(..., wait=False)`` raises :class:`~phoenix_trio.Backpressure` instead of
  waiting.

Every dropped message is counted in :meth:`Subscription.statistics` (``dropped``);
nothing is dropped silently. A filter (a predicate on the message) runs on the
subscriber's node; rejected messages are counted as ``filtered``.

Delivery: ``at_most_once`` (default) with any policy above; ``at_least_once`` means no
drops at the subscription (its policy is ``block``; a ``drop_*`` policy is refused) and
publications to that node travel on the node's reliable transport (issue 6): tracked
per (node, topic) stream, acknowledged by the receiving node once every ``block`` queue
the publication entered has handled it, resent after the delivery timeout. Duplicates
are possible. Order: publications from one publisher reach a subscriber in publish
order (retransmissions aside). ``docs/patterns.md`` has the whole story.
"""

from __future__ import annotations

import logging
from collections import deque
from itertools import repeat
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import msgpack
import trio

from ._errors import Backpressure, ConfigurationError, EncodeError, NodeUnreachable
from ._ids import new_id
from ._inbox import QueueConsumer
from ._message import DeliveryGuarantee, Message, QoSRequirements, RoutingMetadata
from ._peer_protocol import FLAG_ALO, FLAG_CREDITED, FLAG_PUBLISH, SendTemplate
from ._retry import RetryPolicy
from ._taxonomy import message_characteristics, validate_type
from ._topics import InvalidTopic, TopicTrie, validate_pattern, validate_topic
from ._trace import _current as _current_trace

if TYPE_CHECKING:
    from ._connection import Connection
    from ._node import Node
    from ._service import Service

log = logging.getLogger(__name__)

PUBLISH_TYPE = "phoenix.pubsub.publish"
SERVICE_NAME = "phoenix.pubsub"
DELIVERIES = ("at_most_once", "at_least_once")
BACKPRESSURES = ("drop_oldest", "drop_newest", "block")
FANOUTS = ("immediate", "batched")


INTEREST_ALO = 0x01  # a matching subscription there wants at_least_once
INTEREST_BLOCK = 0x02  # a matching subscription there blocks: publishers need credit

BATCH_LINGER = 0.002
BATCH_SIZE = 256
DEFAULT_CAPACITY = 1024
SEND_YIELD_EVERY = 128
MAX_CACHE = 10_000
MAX_PEER_PATTERNS = 100_000  # interest entries one peer may hold here

# interest payloads on the service
_FULL, _ADD, _DEL, _GRANT, _ACK = 1, 2, 3, 4, 5


# -- subscriptions ------------------------------------------------------------------------


@attrs.frozen(slots=True)
class SubscriptionStatistics:
    """A snapshot of one subscription (like ``trio.MemoryChannelStatistics``).

    ``received`` counts publications that matched (after the filter) and reached the
    queue's policy; of those, ``delivered`` went to the consumer, ``dropped`` were
    discarded by the policy, ``queued`` are waiting and ``discarded_on_close`` were still
    queued when the subscription ended. ``filtered`` counts messages the filter refused.
    ``high_water`` is the largest queue length seen.
    """

    id: str
    pattern: str
    subscriber: str | None
    delivery: str
    backpressure: str
    capacity: int
    queued: int
    received: int
    delivered: int
    dropped: int
    filtered: int
    high_water: int
    discarded_on_close: int
    publishers_waiting: int
    closed: bool


class Subscription(QueueConsumer):
    """One subscription: iterate it for its messages. Made by ``node.subscribe``.

    ``async for message in subscription`` ends when the subscription is closed
    (``unsubscribe()``, leaving the ``subscribe`` block, or the node closing). Receiving
    is a cancellation point on every message and yields to the scheduler at least every
    64 messages. Each message becomes the consumer task's current trace.
    """

    def __init__(
        self,
        pubsub: PubSub,
        pattern: str,
        *,
        filter: Callable[[Message], bool] | None,
        delivery: str,
        backpressure: str,
        capacity: int,
        subscriber: str | None,
    ) -> None:
        self.id = new_id()
        self.pattern = pattern
        self.filter = filter
        self.delivery = delivery
        self.backpressure = backpressure
        self.capacity = capacity
        self.subscriber = subscriber
        self._pubsub = pubsub
        self._block = backpressure == "block"
        self._drop_oldest = backpressure == "drop_oldest"
        self._queue: deque[Message] = deque(maxlen=capacity) if self._drop_oldest else deque()
        # block only: per queued message, what it holds for its publisher: None, the
        # publishing node's id (a unit of credit, this being the only block queue it
        # entered) or a _Hold shared by the queues it entered (credit and/or an ack)
        self._tokens: deque[_Token] | None = deque() if self._block else None
        self._owed: _Token = None  # released when the consumer comes back for the next
        self._consumers = trio.lowlevel.ParkingLot()
        self._producers = trio.lowlevel.ParkingLot()
        self._closed = False
        self._since_yield = 0
        self._interest: tuple[str, int] = (pattern, (INTEREST_ALO if delivery == "at_least_once" else 0) | (INTEREST_BLOCK if self._block else 0))
        self._version = 0
        self.received = 0
        self.delivered = 0
        self.dropped = 0
        self.filtered = 0
        self.high_water = 0
        self.discarded_on_close = 0

    def __repr__(self) -> str:
        return f"<Subscription {self.pattern!r} {self.delivery}/{self.backpressure} id={self.id}>"

    @property
    def closed(self) -> bool:
        return self._closed

    # -- producer side ------------------------------------------------------------------

    def _accepts(self, message: Message) -> bool:
        try:
            ok = bool(self.filter(message))  # type: ignore[misc]
        except Exception:
            log.exception("filter of subscription %s raised; message refused", self.id)
            ok = False
        if not ok:
            self.filtered += 1
        return ok

    def _put_many(self, messages: list[Message]) -> None:
        """Queue ``messages`` under a drop policy (never waits)."""
        if self._closed:
            return
        queue = self._queue
        n = len(messages)
        self.received += n
        if self._drop_oldest:
            over = len(queue) + n - self.capacity
            queue.extend(messages)
            if over > 0:
                self.dropped += over
        else:
            room = self.capacity - len(queue)
            if room >= n:
                queue.extend(messages)
            else:
                if room > 0:
                    queue.extend(messages[:room])
                self.dropped += n - max(room, 0)
        if len(queue) > self.high_water:
            self.high_water = len(queue)
        if self._consumers:
            self._consumers.unpark_all()

    def _put_one(self, message: Message) -> None:
        if self._closed:
            return
        queue = self._queue
        self.received += 1
        if self._drop_oldest:
            if len(queue) >= self.capacity:
                self.dropped += 1
            queue.append(message)
        elif len(queue) >= self.capacity:
            self.dropped += 1
            return
        else:
            queue.append(message)
        if len(queue) > self.high_water:
            self.high_water = len(queue)
        if self._consumers:
            self._consumers.unpark_all()

    def _put_blocking_nowait(self, message: Message, token: _Token, *, force: bool) -> bool:
        """block policy: queue if there is room (or ``force``: credit was spent on it)."""
        if self._closed:
            if token.__class__ is str:
                self._pubsub._credit_returned(token)  # type: ignore[arg-type]
            return True
        queue = self._queue
        if not force and len(queue) >= self.capacity:
            return False
        queue.append(message)
        self._tokens.append(token)  # type: ignore[union-attr]
        if token.__class__ is _Hold:
            token.count += 1  # type: ignore[union-attr]
        self.received += 1
        if len(queue) > self.high_water:
            self.high_water = len(queue)
        if self._consumers:
            self._consumers.unpark_all()
        return True

    def _put_credited_many(self, messages: list[Message], peer_id: str) -> None:
        """block policy: publications that each spent a unit of ``peer_id``'s credit."""
        if self._closed:
            for _ in messages:  # nobody will handle them: the credit goes back now
                self._pubsub._credit_returned(peer_id)
            return
        queue = self._queue
        queue.extend(messages)
        self._tokens.extend(repeat(peer_id, len(messages)))  # type: ignore[union-attr]
        self.received += len(messages)
        if len(queue) > self.high_water:
            self.high_water = len(queue)
        if self._consumers:
            self._consumers.unpark_all()

    async def _put_blocking(self, message: Message, *, wait: bool) -> None:
        """A local publisher waits for room (block policy)."""
        while not self._put_blocking_nowait(message, None, force=False):
            if not wait:
                raise Backpressure(self.pattern, f"subscription {self.id} is full ({self.capacity} queued)")
            await self._producers.park()

    # -- consumer side ------------------------------------------------------------------

    def _take(self) -> Message:
        message = self._queue.popleft()
        self.delivered += 1
        tokens = self._tokens
        if tokens is not None:
            self._owed = tokens.popleft()  # handled once the consumer comes back
            if self._producers and len(self._queue) <= self.capacity // 2:
                self._producers.unpark_all()
        _current_trace.set(message)
        return message

    def _settle(self) -> None:
        """The consumer asks for the next message: the previous one has been handled."""
        token = self._owed
        if token is not None:
            self._owed = None
            if token.__class__ is str:  # one unit of credit (inline: once per message)
                pubsub = self._pubsub
                returned = pubsub._returned
                if token in returned:
                    returned[token] += 1  # type: ignore[index]
                    if token not in pubsub._grant_dirty:
                        pubsub._credit_returned_first(token)  # type: ignore[arg-type]
            else:
                _release(self._pubsub, token)

    # -- lifecycle ----------------------------------------------------------------------

    def unsubscribe(self) -> None:
        """End the subscription here and (with the last one for its pattern) everywhere.

        Messages still queued are discarded (counted in ``discarded_on_close``); the
        consumer's loop ends. Idempotent.
        """
        if not self._closed:
            self._pubsub._remove(self)

    async def wait_propagated(self, timeout: float = 10.0) -> None:
        """Wait until every node connected now has applied this subscription's interest.

        Publications made on those nodes after this returns reach the subscription. (A
        subscription works without this; it only closes the window in which a publisher
        elsewhere does not know about it yet.) Raises ``trio.TooSlowError`` on timeout.
        """
        await self._pubsub._wait_propagated(self._version, timeout)

    def _close(self) -> None:
        self._closed = True
        self.discarded_on_close += len(self._queue)
        self._queue.clear()
        if self._tokens is not None:
            self._settle()
            for token in self._tokens:
                if token is not None:
                    _release(self._pubsub, token)
            self._tokens.clear()
        self._consumers.unpark_all()
        self._producers.unpark_all()

    def statistics(self) -> SubscriptionStatistics:
        return SubscriptionStatistics(
            self.id,
            self.pattern,
            self.subscriber,
            self.delivery,
            self.backpressure,
            self.capacity,
            len(self._queue),
            self.received,
            self.delivered,
            self.dropped,
            self.filtered,
            self.high_water,
            self.discarded_on_close,
            len(self._producers),
            self._closed,
        )


# -- per-peer state ------------------------------------------------------------------------


class _Peer:
    """What this node knows about one connected peer's interest and credit."""

    __slots__ = ("node_id", "connection", "interest", "granted", "charged", "acked", "lot", "resync")

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.connection: Connection | None = None
        self.interest: set[tuple[str, int]] = set()
        self.granted = 0  # credit the peer granted us since its last FULL
        self.charged = 0  # credit we spent since then
        self.acked = -1  # the highest interest version of ours the peer has applied
        self.lot = trio.lowlevel.ParkingLot()  # publishers waiting for this peer's credit
        self.resync = False


@attrs.frozen(slots=True)
class _Plan:
    """Where publications on one topic go (cached until a subscription changes)."""

    local: tuple[Subscription, ...]
    local_template: SendTemplate | None
    remote: tuple[tuple[str, SendTemplate, int, bool], ...]  # (node, template, wire flags, reliable)
    credited: tuple[str, ...]  # nodes whose credit each publication spends
    blocking: bool  # some local subscription blocks


@attrs.frozen(slots=True)
class PubSubStatistics:
    """Node-wide pub-sub counters (``node.pubsub.statistics()``)."""

    subscriptions: int
    patterns: int
    published: int
    delivered_local: int
    sent_remote: int
    batches_flushed: int
    undeliverable: int
    received_remote: int
    unmatched_remote: int
    invalid_remote: int
    remote_interest: dict[str, int]
    credit: dict[str, int]


class PubSub:
    """The node's publish-subscribe runtime (``node.pubsub``). See the module docstring."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.batch_linger = BATCH_LINGER
        self.batch_size = BATCH_SIZE
        self._local: TopicTrie[Subscription] = TopicTrie()
        self._remote: TopicTrie[tuple[str, int]] = TopicTrie()
        self._subscriptions: dict[str, Subscription] = {}
        self._interest_count: dict[tuple[str, int], int] = {}
        self._interest_version: dict[tuple[str, int], int] = {}
        self._version = 0
        self._peers: dict[str, _Peer] = {}
        self._plans: dict[Any, _Plan] = {}
        self._plans_binary: dict[Any, _Plan] = {}
        self._templates: dict[tuple[Any, ...], SendTemplate] = {}
        self._local_cache: dict[str, tuple[tuple[Subscription, ...], tuple[Subscription, ...]]] = {}
        self._window = 0
        self._returned: dict[str, int] = {}
        self._grant_dirty: set[str] = set()
        self._grant_lot = trio.lowlevel.ParkingLot()
        self._flush_lot = trio.lowlevel.ParkingLot()
        self._interest_lot = trio.lowlevel.ParkingLot()
        self._batches: dict[str, tuple[float, list[tuple[Any, ...]]]] = {}
        self._service: Service | None = None
        self._sends_since_yield = 0
        self.published = 0
        self.delivered_local = 0
        self.sent_remote = 0
        self.batches_flushed = 0
        self.undeliverable = 0
        self.received_remote = 0
        self.unmatched_remote = 0
        self.invalid_remote = 0

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The runtime's tasks, under the node's nursery (started by the node)."""
        try:
            async with self.node.service(SERVICE_NAME, capacity=4096) as service:
                self._service = service
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._receive_loop, service)
                    nursery.start_soon(self._watch_loop)
                    nursery.start_soon(self._flush_loop)
                    nursery.start_soon(self._grant_loop)
                    task_status.started()
        finally:
            self._service = None
            for subscription in list(self._subscriptions.values()):
                subscription._close()
            for peer in self._peers.values():
                peer.lot.unpark_all()
            self._interest_lot.unpark_all()

    # -- subscribing -------------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(
        self,
        pattern: str,
        *,
        filter: Callable[[Message], bool] | None = None,
        delivery: str = "at_most_once",
        backpressure: str | None = None,
        capacity: int = DEFAULT_CAPACITY,
        subscriber: str | None = None,
    ) -> AsyncIterator[Subscription]:
        """Subscribe to ``pattern`` for the duration of the block. See the module docstring.

        ``backpressure`` defaults to ``drop_oldest`` for ``at_most_once`` and ``block``
        for ``at_least_once`` (which allows nothing else). ``subscriber`` names the agent
        the subscription is for (shown in statistics). The subscription is active here
        when the block starts; :meth:`Subscription.wait_propagated` waits for the rest of
        the cluster.
        """
        subscription = self.open_subscription(
            pattern, filter=filter, delivery=delivery, backpressure=backpressure, capacity=capacity, subscriber=subscriber
        )
        try:
            await trio.lowlevel.checkpoint()
            yield subscription
        finally:
            subscription.unsubscribe()

    def open_subscription(
        self,
        pattern: str,
        *,
        filter: Callable[[Message], bool] | None = None,
        delivery: str = "at_most_once",
        backpressure: str | None = None,
        capacity: int = DEFAULT_CAPACITY,
        subscriber: str | None = None,
    ) -> Subscription:
        """Like :meth:`subscribe` without the block: call ``unsubscribe()`` when done."""
        validate_pattern(pattern)
        if delivery not in DELIVERIES:
            raise ConfigurationError(f"delivery must be one of {', '.join(DELIVERIES)}; got {delivery!r}")
        if backpressure is None:
            backpressure = "block" if delivery == "at_least_once" else "drop_oldest"
        if backpressure not in BACKPRESSURES:
            raise ConfigurationError(f"backpressure must be one of {', '.join(BACKPRESSURES)}; got {backpressure!r}")
        if delivery == "at_least_once" and backpressure != "block":
            raise ConfigurationError("an at_least_once subscription drops nothing: its backpressure is 'block'")
        if type(capacity) is not int or capacity < 1:
            raise ConfigurationError("subscription capacity must be an int >= 1")
        if filter is not None and not callable(filter):
            raise ConfigurationError("filter must be a callable taking a Message")
        if self.node.closed:
            raise ConfigurationError("the node is closed")
        subscription = Subscription(
            self, pattern, filter=filter, delivery=delivery, backpressure=backpressure, capacity=capacity, subscriber=subscriber
        )
        self._add(subscription)
        return subscription

    def unsubscribe(self, pattern: str, *, subscriber: str | None = None) -> int:
        """The design's ``unsubscribe(agent, pattern)``: close this node's subscriptions to
        ``pattern`` (those of ``subscriber`` only, if given); returns how many."""
        closed = 0
        for subscription in list(self._subscriptions.values()):
            if subscription.pattern == pattern and (subscriber is None or subscription.subscriber == subscriber):
                subscription.unsubscribe()
                closed += 1
        return closed

    def subscriptions(self) -> list[Subscription]:
        """This node's open subscriptions."""
        return list(self._subscriptions.values())

    def _add(self, subscription: Subscription) -> None:
        self._subscriptions[subscription.id] = subscription
        self._local.add(subscription.pattern, subscription)
        key = subscription._interest
        count = self._interest_count.get(key, 0)
        self._interest_count[key] = count + 1
        if count == 0:
            self._version += 1
            self._interest_version[key] = self._version
            self._broadcast([_ADD, self._version, key[0], key[1]])
        subscription._version = self._interest_version[key]
        if subscription._block and subscription.capacity > self._window:
            self._set_window(subscription.capacity)
        self._changed()

    def _remove(self, subscription: Subscription) -> None:
        subscription._close()
        if self._subscriptions.pop(subscription.id, None) is None:
            return
        self._local.remove(subscription.pattern, subscription)
        key = subscription._interest
        count = self._interest_count[key] - 1
        if count:
            self._interest_count[key] = count
        else:
            del self._interest_count[key]
            del self._interest_version[key]
            self._version += 1
            self._broadcast([_DEL, self._version, key[0], key[1]])
        if subscription._block:
            self._set_window(max((s.capacity for s in self._subscriptions.values() if s._block), default=0))
        self._changed()

    def _set_window(self, window: int) -> None:
        if window != self._window:
            self._window = window
            self._grant_dirty.update(self._peers)
            if self._grant_lot:
                self._grant_lot.unpark_all()

    def _changed(self) -> None:
        """A subscription or a peer's interest changed: forget cached routes."""
        self._plans.clear()
        self._plans_binary.clear()
        self._local_cache.clear()

    # -- publishing --------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        event: Any = None,
        fanout: str = "immediate",
        source: str | None = None,
        type: str = PUBLISH_TYPE,
        wait: bool = True,
    ) -> None:
        """Publish ``event`` on ``topic`` to every matching subscription in the cluster.

        Returns once every matching local subscription has it (or dropped it, by its
        policy) and it is queued for every node with matching subscriptions. Waits only
        for ``block`` subscriptions (room here, credit elsewhere) or a congested
        connection; with ``wait=False`` those raise :class:`~phoenix_trio.Backpressure`.
        Raises :class:`InvalidTopic` for a malformed topic and ``EncodeError`` for data
        MessagePack cannot carry. A cancellation point.
        """
        if event.__class__ not in _WIRE_TYPES:
            _check_encodable(event)
        plans = self._plans_binary if event.__class__ is bytes else self._plans
        key: Any = topic if (fanout == "immediate" and source is None and type == PUBLISH_TYPE) else (topic, fanout, source, type)
        plan = plans.get(key)
        if plan is None:
            plan = self._plan(topic, event, fanout, source, type)
            if len(plans) >= MAX_CACHE:
                plans.clear()
            plans[key] = plan
        self.published += 1
        if plan.credited and not self._spend_credit_nowait(plan):
            plan = await self._spend_credit(plan, key, plans, topic, event, fanout, source, type, wait)
        if plan.remote:
            trace = _current_trace.get()
            connections = self.node._connections
            security = self.node.security
            batched = fanout == "batched"
            for node_id, template, flags, reliable in plan.remote:
                if batched:
                    await self._batch(node_id, (template, event, topic, trace, None, flags), wait)
                    continue
                if self._batches and node_id in self._batches:
                    await self._flush(node_id, wait)
                if reliable:
                    await self._send_reliable(node_id, template, event, topic, flags, wait)
                    continue
                connection = connections.get(node_id)
                if connection is None or connection.closed:
                    self.undeliverable += 1
                    continue
                entry = (template, event, topic, trace, None, flags)
                if security is not None:
                    entry = security.outgoing(entry)
                if not connection.try_enqueue(entry):
                    await connection.enqueue(entry, wait=wait)
                self.sent_remote += 1
        if plan.local:
            await self._publish_local(plan, topic, event, wait)
        self._sends_since_yield += 1
        if self._sends_since_yield >= SEND_YIELD_EVERY:
            self._sends_since_yield = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    async def _send_reliable(self, node_id: str, template: SendTemplate, event: Any, topic: str, flags: int, wait: bool) -> None:
        """at_least_once: through the node's own send path (acknowledgements and retries)."""
        try:
            await self.node._deliver(topic, node_id, template, event, None, flags, wait)
            self.sent_remote += 1
        except NodeUnreachable:
            self.undeliverable += 1

    async def _publish_local(self, plan: _Plan, topic: str, event: Any, wait: bool) -> None:
        assert plan.local_template is not None
        message = self.node._build(plan.local_template, event, topic, None)
        for subscription in plan.local:
            if subscription._closed:
                continue
            if subscription.filter is not None and not subscription._accepts(message):
                continue
            if subscription._block:
                await subscription._put_blocking(message, wait=wait)
            else:
                subscription._put_one(message)
            self.delivered_local += 1

    def _plan(self, topic: str, event: Any, fanout: str, source: str | None, type_: str) -> _Plan:
        validate_topic(topic)
        if fanout not in FANOUTS:
            raise ConfigurationError(f"fanout must be one of {', '.join(FANOUTS)}; got {fanout!r}")
        if type_ != PUBLISH_TYPE:
            validate_type(type_)
        binary = event.__class__ is bytes
        local = tuple(sorted(self._local.match(topic), key=lambda s: s.id))
        wants: dict[str, int] = {}
        for node_id, flags in self._remote.match(topic):
            wants[node_id] = wants.get(node_id, 0) | flags
        remote = []
        credited = []
        for node_id in sorted(wants):
            interest = wants[node_id]
            reliable = bool(interest & INTEREST_ALO)
            template = self._template(topic, type_, source, "at_least_once" if reliable else "at_most_once", fanout, binary)
            flags = FLAG_PUBLISH
            if interest & INTEREST_BLOCK:
                flags |= FLAG_CREDITED
                credited.append(node_id)
            remote.append((node_id, template, flags, reliable))
        local_template = None
        if local:
            mode = "at_least_once" if any(s.delivery == "at_least_once" for s in local) else "at_most_once"
            local_template = self._template(topic, type_, source, mode, fanout, binary)
        return _Plan(local, local_template, tuple(remote), tuple(credited), any(s._block for s in local))

    def _template(self, topic: str, type_: str, source: str | None, mode: str, fanout: str, binary: bool) -> SendTemplate:
        key = (topic, type_, source, mode, fanout, binary)
        template = self._templates.get(key)
        if template is None:
            traits = message_characteristics(type_)
            routing = RoutingMetadata(pattern="publish_subscribe", topic=topic, priority=traits.priority, fanout_strategy=fanout)
            guarantee = DeliveryGuarantee.build(mode, ordering=traits.ordering)
            reliable = mode == "at_least_once"
            config = self.node.config
            template = SendTemplate(
                source or self.node.uri,
                type_,
                "application/octet-stream" if binary else "application/json",
                guarantee,
                routing,
                QoSRequirements(priority=traits.priority, consistency=traits.consistency),
                # at_least_once: tracked by the node's reliable transport (acks, retries)
                mode=FLAG_ALO if reliable else 0,
                policy=RetryPolicy.from_guarantee(guarantee, base=config.retry_base, cap=config.retry_cap) if reliable else None,
            )
            if len(self._templates) >= 4096:
                self._templates.clear()
            self._templates[key] = template
        return template

    def _spend_credit_nowait(self, plan: _Plan) -> bool:
        """Spend one unit of credit at every node the plan needs it from, if all have some."""
        peers = self._peers
        for node_id in plan.credited:
            peer = peers.get(node_id)
            if peer is not None and peer.granted - peer.charged <= 0:
                return False
        for node_id in plan.credited:
            peer = peers.get(node_id)
            if peer is not None:
                peer.charged += 1
        return True

    async def _spend_credit(
        self, plan: _Plan, key: Any, plans: dict[Any, _Plan], topic: str, event: Any, fanout: str, source: str | None, type_: str, wait: bool
    ) -> _Plan:
        """Spend one unit of credit at every node the plan needs it from, waiting for it."""
        while True:
            if self._spend_credit_nowait(plan):
                return plan
            short = next(p for p in map(self._peers.get, plan.credited) if p is not None and p.granted - p.charged <= 0)
            if not wait:
                raise Backpressure(short.node_id, f"no credit left at node {short.node_id!r} for topic {topic!r}")
            await short.lot.park()
            # Interest or credit changed: the route may have too.
            plan = plans.get(key) or self._plan(topic, event, fanout, source, type_)
            plans[key] = plan

    # -- batched fanout ------------------------------------------------------------------

    async def _batch(self, node_id: str, entry: tuple[Any, ...], wait: bool) -> None:
        held = self._batches.get(node_id)
        if held is None:
            self._batches[node_id] = (trio.current_time() + self.batch_linger, [entry])
            if self._flush_lot:
                self._flush_lot.unpark_all()
            return
        held[1].append(entry)
        if len(held[1]) >= self.batch_size:
            await self._flush(node_id, wait)

    async def _flush(self, node_id: str, wait: bool = True) -> None:
        held = self._batches.pop(node_id, None)
        if held is None:
            return
        entries = held[1]
        self.batches_flushed += 1
        connection = self.node._connections.get(node_id)
        if connection is None or connection.closed:
            self.undeliverable += len(entries)
            return
        security = self.node.security
        for index, entry in enumerate(entries):
            template = entry[0]
            if template.mode:
                await self._send_reliable(node_id, template, entry[1], entry[2], entry[5], True)
                continue
            if security is not None:
                entry = security.outgoing(entry)
            try:
                if not connection.try_enqueue(entry):
                    await connection.enqueue(entry, wait=wait)
            except Exception:
                self.undeliverable += len(entries) - index
                raise
            self.sent_remote += 1

    async def _flush_loop(self) -> None:
        while True:
            if not self._batches:
                await self._flush_lot.park()
                continue
            deadline = min(d for d, _ in self._batches.values())
            if deadline > trio.current_time():
                await trio.sleep_until(deadline)
            now = trio.current_time()
            for node_id in [n for n, (d, _) in self._batches.items() if d <= now]:
                try:
                    await self._flush(node_id)
                except Exception as exc:  # the connection went away meanwhile: counted as undeliverable
                    log.debug("batched publications to %s not sent: %r", node_id, exc)

    # -- receiving publications ----------------------------------------------------------

    async def on_publications(self, peer_id: str, items: list[tuple[Message, int, int | None]]) -> None:
        """Publications that arrived from ``peer_id`` (called by the node's reader):
        ``(message, flags, stream position)``, the position set for reliable ones.

        Returns once each is in every matching subscription's queue (or refused by its
        filter or policy). A ``block`` subscription that is full stops the reader until
        there is room, except for publications that spent credit, which it always takes.
        Consecutive publications on one topic go to each plain subscription (no filter,
        a drop policy) as one batch. A reliable publication is acknowledged once every
        block queue it entered has handled it (at once if it entered none).
        """
        self.received_remote += len(items)
        cache = self._local_cache
        last_topic: Any = None
        plain: tuple[Subscription, ...] = ()
        special: tuple[Subscription, ...] = ()
        run: list[Message] = []
        blocked: list[tuple[Subscription, Message, _Token, bool]] = []
        stuck: set[Subscription] = set()  # block queues that refused one: later ones wait behind it
        held: list[_Hold] = []
        block_run: list[Message] = []  # credited publications for one block queue, in order
        block_sub: Subscription | None = None
        for message, flags, dseq in items:
            topic = message.subject
            if topic != last_topic:
                if run:
                    for subscription in plain:
                        subscription._put_many(run)
                    run = []
                last_topic = topic
                routes = cache.get(topic)  # type: ignore[arg-type]
                if routes is None:
                    routes = self._match_local(topic)
                plain, special = routes
            if plain:
                run.append(message)
            elif not special:
                self.unmatched_remote += 1
            credited = bool(flags & FLAG_CREDITED)
            if not special:
                # no block queue here (any more): the credit and the acknowledgement are due now
                if credited:
                    self._credit_returned(peer_id)
                if dseq is not None and topic is not None:  # no topic (a peer's bug): no agent id to acknowledge to
                    self._acknowledge(peer_id, topic, dseq)
                continue
            if dseq is None and len(special) == 1 and special[0].filter is None:
                # the common case, one block queue: the token is the publisher's node id
                subscription = special[0]
                if credited and subscription not in stuck:
                    if block_run and block_sub is not subscription:
                        block_sub._put_credited_many(block_run, peer_id)  # type: ignore[union-attr]
                        block_run = []
                    block_sub = subscription
                    block_run.append(message)  # it spent credit: the queue takes it, in a batch
                    continue
                if block_run:
                    block_sub._put_credited_many(block_run, peer_id)  # type: ignore[union-attr]
                    block_run = []
                token_id = peer_id if credited else None
                if subscription in stuck or not subscription._put_blocking_nowait(message, token_id, force=credited):
                    stuck.add(subscription)
                    blocked.append((subscription, message, token_id, credited))
                continue
            if block_run:
                block_sub._put_credited_many(block_run, peer_id)  # type: ignore[union-attr]
                block_run = []
            # Otherwise the publication holds a _Hold: one count per block queue it enters,
            # plus one held here until it has entered them all.
            assert topic is not None  # block queues matched: the topic is valid
            hold = _Hold(peer_id, credited, topic, dseq) if credited or dseq is not None else None
            deferred = False
            for subscription in special:
                if subscription.filter is not None and not subscription._accepts(message):
                    continue
                if subscription._block:
                    if subscription in stuck or not subscription._put_blocking_nowait(message, hold, force=credited):
                        stuck.add(subscription)
                        blocked.append((subscription, message, hold, credited))
                        deferred = True
                else:
                    subscription._put_one(message)
            if hold is not None:
                if deferred:
                    held.append(hold)
                else:
                    _release(self, hold)
        if run:
            for subscription in plain:
                subscription._put_many(run)
        if block_run:
            block_sub._put_credited_many(block_run, peer_id)  # type: ignore[union-attr]
        if blocked:
            await self._wait_for_room(peer_id, blocked, held)

    def _match_local(self, topic: Any) -> tuple[tuple[Subscription, ...], tuple[Subscription, ...]]:
        """(plain, special) subscriptions for a topic that came from the network."""
        try:
            validate_topic(topic)
        except InvalidTopic:
            self.invalid_remote += 1
            return (), ()
        subs = sorted(self._local.match(topic), key=lambda s: s.id)
        routes = (
            tuple(s for s in subs if s.filter is None and not s._block),
            tuple(s for s in subs if s.filter is not None or s._block),
        )
        if len(self._local_cache) >= MAX_CACHE:
            self._local_cache.clear()
        self._local_cache[topic] = routes
        return routes

    async def _wait_for_room(self, peer_id: str, blocked: list[tuple[Subscription, Message, _Token, bool]], held: list[_Hold]) -> None:
        """Uncredited publications for full ``block`` queues: stop this reader until they fit."""
        membership = self.node._membership
        if membership is not None:
            membership.stall(peer_id, True, trio.current_time())
        try:
            for subscription, message, token, credited in blocked:
                while not subscription._put_blocking_nowait(message, token, force=credited):
                    await subscription._producers.park()
        finally:
            for hold in held:
                _release(self, hold)
            if membership is not None:
                membership.stall(peer_id, False, trio.current_time())

    # -- credit ----------------------------------------------------------------------------

    def _credit_returned(self, peer_id: str) -> None:
        """One publication from ``peer_id`` that spent credit left every block queue."""
        returned = self._returned
        if peer_id in returned:  # peers we sent our full state to (and still know)
            returned[peer_id] += 1
            if peer_id not in self._grant_dirty:
                self._credit_returned_first(peer_id)

    def _credit_returned_first(self, peer_id: str) -> None:
        """``peer_id`` has credit coming back and no GRANT scheduled yet."""
        self._grant_dirty.add(peer_id)
        if self._grant_lot:
            self._grant_lot.unpark_all()

    def _acknowledge(self, peer_id: str, topic: str, dseq: int) -> None:
        """A reliable publication from ``peer_id`` is handled here: tell its publisher."""
        connection = self.node._connections.get(peer_id)
        if connection is not None and not connection.closed:
            connection.acknowledge(False, topic, dseq)

    async def _grant_loop(self) -> None:
        while True:
            if not self._grant_dirty:
                await self._grant_lot.park()
                continue
            await trio.lowlevel.checkpoint()  # let a consumer take a few more first
            dirty, self._grant_dirty = self._grant_dirty, set()
            for peer_id in dirty:
                if peer_id in self._returned:
                    self._send(peer_id, [_GRANT, self._window + self._returned[peer_id]])

    # -- interest: the service protocol ----------------------------------------------------

    def _full_state(self, peer_id: str) -> list[Any]:
        self._returned[peer_id] = 0
        return [_FULL, self._version, [[p, f] for p, f in self._interest_count], self._window]

    def _send(self, peer_id: str, message: list[Any]) -> None:
        service = self._service
        if service is None:
            return
        if not service.send_nowait(peer_id, msgpack.packb(message)):
            peer = self._peers.get(peer_id)
            if peer is not None:  # buffer full or connection gone: resend everything later
                peer.resync = True

    def _broadcast(self, message: list[Any]) -> None:
        for peer_id in list(self._peers):
            self._send(peer_id, message)

    def _peer(self, peer_id: str) -> _Peer | None:
        """The state for ``peer_id``, (re)synchronised with its current connection."""
        connection = self.node._connections.get(peer_id)
        if connection is None or connection.closed:
            return None
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = _Peer(peer_id)
        if peer.connection is not connection:
            peer.connection = connection
            peer.acked = -1
            self._send(peer_id, self._full_state(peer_id))
        return peer

    def _drop_peer(self, peer_id: str) -> None:
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return
        for pattern, flags in peer.interest:
            self._remote.remove(pattern, (peer_id, flags))
        peer.interest.clear()
        self._returned.pop(peer_id, None)
        self._grant_dirty.discard(peer_id)
        held = self._batches.pop(peer_id, None)
        if held is not None:
            self.undeliverable += len(held[1])
        peer.lot.unpark_all()
        self._changed()
        self._interest_lot.unpark_all()

    def _sync_peers(self) -> None:
        connections = self.node._connections
        for peer_id in list(self._peers):
            connection = connections.get(peer_id)
            if connection is None or connection.closed:
                self._drop_peer(peer_id)
        for peer_id in list(connections):
            peer = self._peer(peer_id)
            if peer is not None and peer.resync:
                peer.resync = False
                peer.connection = None
                self._peer(peer_id)

    async def _watch_loop(self) -> None:
        """Follow the node's connections: full state to each new one, forget closed ones."""
        while True:
            changed = self.node._changed
            self._sync_peers()
            # node._changed fires on every connection change; the timeout retries resyncs.
            with trio.move_on_after(max(self.node.config.heartbeat_interval, 0.05)):
                await changed.wait()

    async def _receive_loop(self, service: Service) -> None:
        async for peer_id, payload in service:
            try:
                message = msgpack.unpackb(payload, raw=False)
                self._on_interest(peer_id, message)
            except (ValueError, TypeError, KeyError, IndexError, InvalidTopic, msgpack.ExtraData) as exc:
                self.invalid_remote += 1
                log.warning("bad pub-sub payload from %s: %r", peer_id, exc)

    def _on_interest(self, peer_id: str, message: Any) -> None:
        if type(message) is not list or not message or type(message[0]) is not int:
            raise ValueError("pub-sub payload must be a tagged array")
        tag = message[0]
        peer = self._peer(peer_id)
        if peer is None:
            return  # not connected (any more): its interest would be dropped anyway
        if tag == _FULL and len(message) == 4:
            _, version, entries, window = message
            new: set[tuple[str, int]] = set()
            if type(entries) is not list or len(entries) > MAX_PEER_PATTERNS:
                raise ValueError(f"FULL must list at most {MAX_PEER_PATTERNS} patterns")
            for entry in entries:
                pattern, flags = entry
                validate_pattern(pattern)
                new.add((pattern, _flags(flags)))
            for pattern, flags in peer.interest - new:
                self._remote.remove(pattern, (peer_id, flags))
            for pattern, flags in new - peer.interest:
                self._remote.add(pattern, (peer_id, flags))
            peer.interest = new
            peer.granted = _count(window)
            peer.charged = 0
            self._send(peer_id, [_ACK, _count(version)])
        elif tag == _ADD and len(message) == 4:
            _, version, pattern, flags = message
            validate_pattern(pattern)
            key = (pattern, _flags(flags))
            if key not in peer.interest:
                if len(peer.interest) >= MAX_PEER_PATTERNS:
                    raise ValueError(f"peer {peer_id} exceeds {MAX_PEER_PATTERNS} patterns")
                peer.interest.add(key)
                self._remote.add(pattern, (peer_id, key[1]))
            self._send(peer_id, [_ACK, _count(version)])
        elif tag == _DEL and len(message) == 4:
            _, version, pattern, flags = message
            key = (pattern, _flags(flags))
            if key in peer.interest:
                peer.interest.discard(key)
                self._remote.remove(pattern, (peer_id, key[1]))
            self._send(peer_id, [_ACK, _count(version)])
        elif tag == _GRANT and len(message) == 2:
            peer.granted = _count(message[1])
            peer.lot.unpark_all()
            return
        elif tag == _ACK and len(message) == 2:
            peer.acked = max(peer.acked, _count(message[1]))
            self._interest_lot.unpark_all()
            return
        else:
            raise ValueError(f"unknown pub-sub payload tag {tag!r}")
        self._changed()
        peer.lot.unpark_all()
        self._interest_lot.unpark_all()

    # -- waiting for the cluster ---------------------------------------------------------

    def interested_nodes(self, topic: str) -> set[str]:
        """Peers that have told this node they have subscriptions matching ``topic``."""
        validate_topic(topic)
        return {node_id for node_id, _ in self._remote.match(topic)}

    async def wait_for_subscribers(self, topic: str, nodes: int | Iterable[str] = 1, *, timeout: float = 10.0) -> None:
        """Wait until the peers with subscriptions matching ``topic`` are as wanted.

        ``nodes``: a count (at least that many peers) or node ids (exactly those peers;
        an empty set waits until no peer has one). Raises ``trio.TooSlowError`` after
        ``timeout`` seconds.
        """
        wanted = nodes if isinstance(nodes, int) else set(nodes)
        with trio.fail_after(timeout):
            while True:
                have = self.interested_nodes(topic)
                if (len(have) >= wanted) if isinstance(wanted, int) else have == wanted:
                    await trio.lowlevel.checkpoint()
                    return
                await self._interest_lot.park()

    async def _wait_propagated(self, version: int, timeout: float) -> None:
        with trio.fail_after(timeout):
            while True:
                self._sync_peers()
                if all(peer.acked >= version for peer in self._peers.values()):
                    await trio.lowlevel.checkpoint()
                    return
                await self._interest_lot.park()

    # -- introspection -----------------------------------------------------------------------

    def statistics(self) -> PubSubStatistics:
        return PubSubStatistics(
            len(self._subscriptions),
            len(self._interest_count),
            self.published,
            self.delivered_local,
            self.sent_remote,
            self.batches_flushed,
            self.undeliverable,
            self.received_remote,
            self.unmatched_remote,
            self.invalid_remote,
            {peer_id: len(peer.interest) for peer_id, peer in self._peers.items()},
            {peer_id: peer.granted - peer.charged for peer_id, peer in self._peers.items() if peer.granted or peer.charged},
        )


_WIRE_TYPES = frozenset({bytes, str, int, float, bool, type(None), dict, list, tuple})


class _Hold:
    """What one publication owes its publisher until every block queue it entered has
    handled it: a unit of credit, an acknowledgement, or both."""

    __slots__ = ("count", "peer", "credited", "topic", "dseq")

    def __init__(self, peer: str, credited: bool, topic: str, dseq: int | None) -> None:
        self.count = 1
        self.peer = peer
        self.credited = credited
        self.topic = topic
        self.dseq = dseq


_Token = _Hold | str | None


def _release(pubsub: PubSub, token: _Hold | str) -> None:
    """Drop one hold; the last one returns the credit and sends the acknowledgement."""
    if isinstance(token, str):
        pubsub._credit_returned(token)
        return
    token.count -= 1
    if token.count == 0:
        if token.credited:
            pubsub._credit_returned(token.peer)
        if token.dseq is not None:
            pubsub._acknowledge(token.peer, token.topic, token.dseq)


def _check_encodable(event: Any) -> None:
    if not isinstance(event, (bytes, bytearray, memoryview, str, int, float, dict, list, tuple)) and event is not None:
        raise EncodeError(f"cannot publish {event.__class__.__name__}: event data must be MessagePack-encodable")


def _flags(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= 3:
        raise ValueError(f"interest flags must be 0-3, not {value!r}")
    return value


def _count(value: Any) -> int:
    if type(value) is not int or not 0 <= value < 1 << 62:
        raise ValueError(f"expected a non-negative int, not {value!r}")
    return value


__all__ = [
    "FLAG_CREDITED",
    "FLAG_PUBLISH",
    "PUBLISH_TYPE",
    "PubSub",
    "PubSubStatistics",
    "Subscription",
    "SubscriptionStatistics",
]
