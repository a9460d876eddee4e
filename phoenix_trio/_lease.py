"""Distributed token buckets: N nodes together respect one capacity and rate, by leases.

The scheme (sans-IO; :mod:`phoenix_trio._ratelimit_node` runs it on a node service):

**Owner.** Each distributed bucket has one *owner* node, chosen by rendezvous hashing
of the bucket id over the live members (:func:`owner_of`): every node computes it from
its own membership view, owners spread over the members, and a change of membership
moves only the buckets whose owner came or went.

**Leases.** A member spends a bucket only through a *lease* from its owner: a rate
``r_i`` and a capacity ``c_i``, valid for ``ttl`` seconds. It runs them in a local C
token bucket (:class:`phoenix_trio.core.TokenBucket` with capacity ``c_i`` and rate
``r_i``), so acquiring is one cffi call with no message. The owner keeps, for every
member, each lease that may still be in force and grants only what keeps

    sum of leased rates <= rate  and  sum of leased capacities <= capacity

at every instant. A new lease carries the tokens the member holds over (capped at the
new capacity); a member that has none starts empty, so no tokens are created out of
thin air. Hence, with one owner, the tokens granted cluster-wide in any interval of
length ``T`` are at most ``capacity + rate * T``, exactly the bound of one bucket.

**Expiry without synchronized clocks.** A member dates a lease from the moment it
*sent* the request, the owner from the moment it *granted* it, which is later in real
time: the member always stops using a lease before the owner stops counting it. A
member reports the lease it holds (rate, capacity, seconds left) in every request, so
the owner learns when a member moved to a smaller lease, and counts a lease it did not
grant (a previous owner's) until it expires. Only one request per bucket is
outstanding; a grant that answers an older request is ignored (the next request's
report tells the owner so).

**Sharing.** Members renew every ``ttl * renew_fraction`` and sooner when they run
short; a request carries the member's demand (tokens per second used since its last
request) and whether it was refused tokens ("hungry"). The owner splits the rate
max-min fairly among members that asked within two ttls: a hungry member wants
everything, a satisfied one its current lease if it used half of it or more, else 1.5
times its use (at least a tenth of an equal share);
what nobody wants is shared equally on top.
Capacities follow the rate shares, but at least one token (most acquisitions take one)
or the largest refused acquisition, as far as the capacity left allows (acquisitions
larger than ``capacity / members`` may therefore wait while others hold capacity). A share taken
from one member can go to another only once the first has reported the smaller lease
or its lease expired, so re-balancing takes one or two renewal periods.

**Owner changes.** A node that becomes owner of a bucket (at start, when the previous
owner dies or leaves, or when a new member takes it over) grants nothing for ``ttl``
seconds, or until every live member reported its lease: by then every lease granted by
the previous owner is either expired or known. Members keep spending their current
lease meanwhile (they are told to retry), so the rate dips only for members whose lease
runs out before the new owner grants. A member that cannot reach the owner lets its
lease run out and then spends nothing.

**What is not guaranteed.** Owners follow membership views. When views disagree (a
partition, or during the failure timeout), each node that believes itself owner
grants up to the full rate to the members that ask it: with ``k`` such owners the
cluster may spend up to ``k * (capacity + rate * T)``. Within one view the bound above
holds; clock *rates* are assumed equal over a ttl (drift is negligible at seconds).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import msgpack
import trio

from . import core
from ._errors import ConfigurationError, DecodeError
from .effects import Send, SetTimer

log = logging.getLogger(__name__)


def owner_of(bucket_id: str, candidates: Iterable[str]) -> str | None:
    """Rendezvous (highest random weight) hashing: the owner of ``bucket_id`` among ``candidates``."""
    best: tuple[bytes, str] | None = None
    for node in candidates:
        weight = hashlib.blake2b(f"{bucket_id}\x00{node}".encode(), digest_size=8).digest()
        if best is None or (weight, node) > best:
            best = (weight, node)
    return None if best is None else best[1]


# -- messages ---------------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class LeaseRequest:
    """A member asks the owner of ``bucket`` for a lease; it reports what it holds and uses."""

    bucket: str
    rid: int
    capacity: float  # the bucket's configuration at the member
    rate: float
    held_rate: float
    held_capacity: float
    held_remaining: float  # seconds the held lease is still valid for (0: none)
    demand: float  # tokens per second used since the last request
    hungry: bool
    need: float  # largest acquisition refused since the last request


@attrs.frozen(slots=True)
class LeaseGrant:
    bucket: str
    rid: int
    rate: float
    capacity: float
    ttl: float


@attrs.frozen(slots=True)
class LeaseRetry:
    """Not now: ``reason`` is "grace" (a new owner) or "not_owner"; ask again after ``retry_after``."""

    bucket: str
    rid: int
    reason: str
    retry_after: float


@attrs.frozen(slots=True)
class LeaseRelease:
    """The member stopped using ``bucket``: its lease is free."""

    bucket: str


_REQ, _GRANT, _RETRY, _RELEASE = range(4)


def encode(message: Any) -> bytes:
    t = type(message)
    if t is LeaseRequest:
        m = message
        fields: list[Any] = [_REQ, m.bucket, m.rid, m.capacity, m.rate, m.held_rate, m.held_capacity, m.held_remaining,
                             m.demand, m.hungry, m.need]  # fmt: skip
    elif t is LeaseGrant:
        fields = [_GRANT, message.bucket, message.rid, message.rate, message.capacity, message.ttl]
    elif t is LeaseRetry:
        fields = [_RETRY, message.bucket, message.rid, message.reason, message.retry_after]
    elif t is LeaseRelease:
        fields = [_RELEASE, message.bucket]
    else:
        raise TypeError(f"not a lease message: {message!r}")
    return msgpack.packb(fields, use_bin_type=True)  # type: ignore[no-any-return]


def _num(x: object) -> bool:
    return type(x) in (int, float) and math.isfinite(x) and x >= 0  # type: ignore[arg-type,operator]


def decode(payload: bytes) -> list[Any]:
    """Every message of a payload (several, concatenated); :class:`DecodeError` on anything malformed."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=max(len(payload), 1))
    try:
        unpacker.feed(payload)
        items = list(unpacker)
    except Exception as exc:  # msgpack raises several types for bad input
        raise DecodeError(f"bad lease payload: {exc}") from None
    out: list[Any] = []
    for item in items:
        if type(item) is not list or len(item) < 2 or type(item[1]) is not str or not 0 < len(item[1]) <= 200:
            raise DecodeError("bad lease message")
        tag = item[0]
        if tag == _REQ and len(item) == 11 and type(item[2]) is int and all(_num(x) for x in item[3:9]) \
                and type(item[9]) is bool and _num(item[10]):  # fmt: skip
            out.append(LeaseRequest(
                item[1], item[2], float(item[3]), float(item[4]), float(item[5]), float(item[6]), float(item[7]), float(item[8]),
                item[9], float(item[10]),
            ))
        elif tag == _GRANT and len(item) == 6 and type(item[2]) is int and all(_num(x) for x in item[3:6]):
            out.append(LeaseGrant(item[1], item[2], float(item[3]), float(item[4]), float(item[5])))
        elif tag == _RETRY and len(item) == 5 and type(item[2]) is int and type(item[3]) is str and _num(item[4]):
            out.append(LeaseRetry(item[1], item[2], item[3], float(item[4])))
        elif tag == _RELEASE and len(item) == 2:
            out.append(LeaseRelease(item[1]))
        else:
            raise DecodeError(f"unknown or malformed lease message (tag {tag!r})")
    return out


# -- the member's side: the fast path -------------------------------------------------------------


class LeasedBucket:
    """A member's view of a distributed bucket: a local C token bucket run on its lease.

    ``acquire(n, now)`` is the fast path: while the lease is valid, one cffi call. When
    it refuses, the member notes it is hungry (so the next request says so) and, if it
    has no request out, asks :class:`LeaseProtocol` to renew now (``kick``). ``changed``
    is a ``trio.Event`` set whenever a lease arrives (waiters wake up and retry).
    """

    __slots__ = (
        "bucket_id", "capacity", "rate", "_bucket", "expires", "lease_rate", "lease_capacity", "used", "hungry",
        "need", "_kick", "changed", "requested", "retry_hint", "grants",
    )  # fmt: skip

    def __init__(self, bucket_id: str, capacity: float, rate: float, now: float, kick: Callable[[str, float], None]) -> None:
        self.bucket_id = bucket_id
        self.capacity = capacity
        self.rate = rate
        bucket = core.TokenBucket(capacity, 0.0, now)
        bucket.acquire(capacity, now)  # starts empty: tokens come from leases only
        self._bucket = bucket
        self.expires = -math.inf
        self.lease_rate = 0.0
        self.lease_capacity = 0.0
        self.used = 0.0
        self.hungry = False
        self.need = 0.0
        self._kick = kick
        self.changed = trio.Event()
        self.requested = False
        self.retry_hint = 0.05
        self.grants = 0

    def acquire(self, n: float, now: float) -> float:
        if now < self.expires:
            try:
                wait = self._bucket.acquire(n, now)
            except ConfigurationError:
                wait = math.inf  # more than this lease's capacity: ask for a bigger one
            else:
                if not wait:
                    self.used += n
                    return 0.0
        else:
            self._expire(now)
            wait = math.inf
        if not 0 <= n <= self.capacity:
            raise ConfigurationError(f"cannot acquire {n} tokens from a bucket of {self.capacity}")
        self.hungry = True
        if n > self.need:
            self.need = n
        if not self.requested:
            self._kick(self.bucket_id, now)
        return wait if wait < math.inf else self.retry_hint

    def available(self, now: float) -> float:
        if now >= self.expires:
            self._expire(now)
            return 0.0
        return self._bucket.available(now)

    def _expire(self, now: float) -> None:
        if self.lease_rate or self.lease_capacity:
            self._drain(now)
            self._bucket.set_rate(0.0, now)
            self.lease_rate = self.lease_capacity = 0.0

    def _drain(self, now: float) -> None:
        level = self._bucket.available(now)
        if level > 0:
            self._bucket.acquire(level, now)

    def set_lease(self, rate: float, capacity: float, expires: float, now: float) -> None:
        """Run on a new lease from ``now`` until ``expires``, keeping the tokens held (capped)."""
        bucket = self._bucket
        if now >= self.expires:
            self._drain(now)  # an expired lease's tokens are not ours any more
            level = 0.0
        else:
            level = bucket.available(now)
        if capacity <= 0:
            self._drain(now)
            bucket.set_rate(0.0, now)
        elif capacity != bucket.capacity:
            fresh = core.TokenBucket(capacity, rate, now)
            keep = min(level, capacity)
            if capacity - keep > 0:
                fresh.acquire(capacity - keep, now)
            self._bucket = fresh
        else:
            bucket.set_rate(rate, now)
        self.lease_rate = rate
        self.lease_capacity = max(capacity, 0.0)
        self.expires = expires
        self.grants += 1
        self.changed.set()
        self.changed = trio.Event()


# -- the protocol -----------------------------------------------------------------------------------


@attrs.define(slots=True)
class _Holder:
    """What an owner knows about one member's use of one bucket."""

    leases: list[tuple[float, float, float]] = attrs.field(factory=list)  # (rate, capacity, expires), owner time
    demand: float = 0.0
    held_rate: float = 0.0
    hungry: bool = True
    need: float = 0.0
    last_request: float = -math.inf

    def committed(self, now: float) -> tuple[float, float]:
        self.leases = [lease for lease in self.leases if lease[2] > now]
        if not self.leases:
            return 0.0, 0.0
        return max(lease[0] for lease in self.leases), max(lease[1] for lease in self.leases)


@attrs.define(slots=True)
class _Owned:
    capacity: float
    rate: float
    since: float
    grace_until: float
    holders: dict[str, _Holder] = attrs.field(factory=dict)
    reported: set[str] = attrs.field(factory=set)


@attrs.define(slots=True)
class _Member:
    """This node's request state for one bucket."""

    bucket: LeasedBucket
    rid: int = 0
    outstanding: int | None = None
    sent_at: float = -math.inf
    to: str | None = None
    last_request: float = -math.inf
    used_at_request: float = 0.0
    next_at: float = -math.inf


@attrs.frozen(slots=True)
class LeaseStatistics:
    owned: int
    held: int
    requests: int
    grants: int
    retries: int


class LeaseProtocol:
    """Both sides of the lease protocol for one node: member of its buckets, owner of some.

    Sans-IO: inputs with the current time, effects out (:class:`Send` to node ids,
    :class:`SetTimer`). Messages to this node itself are handled in place. Inputs:
    :meth:`add_bucket`, :meth:`remove_bucket`, :meth:`kick` (a bucket ran short),
    :meth:`set_alive` (the live members, this node included), :meth:`receive`,
    :meth:`timer`. Effects that a fast-path :meth:`LeasedBucket.acquire` causes (through
    ``kick``) are handed to ``on_effects``.
    """

    TIMER = "lease.tick"

    def __init__(
        self,
        node: str,
        *,
        members: Iterable[str],
        ttl: float = 1.0,
        renew_fraction: float = 1 / 3,
        request_timeout: float | None = None,
        on_effects: Callable[[list[Any]], None] | None = None,
    ) -> None:
        self.node = node
        self.members = frozenset(members)
        if node not in self.members:
            raise ConfigurationError(f"this node ({node!r}) is not among the members {sorted(self.members)!r}")
        if not (ttl > 0 and 0 < renew_fraction < 1):
            raise ConfigurationError("ttl must be positive and 0 < renew_fraction < 1")
        self.ttl = ttl
        self.renew_every = ttl * renew_fraction
        self.request_timeout = request_timeout if request_timeout is not None else self.renew_every
        self.min_interval = ttl / 20  # a hungry member asks at most this often
        self.on_effects = on_effects
        self.alive: frozenset[str] = frozenset({node})
        self._members: dict[str, _Member] = {}
        self._owned: dict[str, _Owned] = {}
        self._configs: dict[str, tuple[float, float]] = {}
        self._warned: set[str] = set()
        self.stats = {"requests": 0, "grants": 0, "retries": 0}
        self._timer_at = math.inf

    # -- inputs -------------------------------------------------------------------------------

    def add_bucket(self, bucket_id: str, capacity: float, rate: float, now: float) -> tuple[LeasedBucket, list[Any]]:
        if bucket_id in self._members:
            raise ConfigurationError(f"bucket {bucket_id!r} already exists")
        if not (math.isfinite(capacity) and capacity > 0 and math.isfinite(rate) and rate >= 0):
            raise ConfigurationError("token bucket needs finite capacity > 0 and rate >= 0")
        bucket = LeasedBucket(bucket_id, capacity, rate, now, self._kicked)
        bucket.retry_hint = self.min_interval
        self._members[bucket_id] = _Member(bucket)
        self._configs[bucket_id] = (capacity, rate)
        out: list[Any] = []
        self._request(bucket_id, now, out)
        self._arm(now + self.min_interval, out)
        return bucket, out

    def remove_bucket(self, bucket_id: str, now: float) -> list[Any]:
        member = self._members.pop(bucket_id, None)
        self._configs.pop(bucket_id, None)
        out: list[Any] = []
        if member is not None:
            member.bucket.set_lease(0.0, 0.0, -math.inf, now)
            owner = owner_of(bucket_id, self.alive)
            if owner is not None:
                self._send(owner, LeaseRelease(bucket_id), now, out)
        return out

    def close(self, now: float) -> list[Any]:
        out: list[Any] = []
        for bucket_id in list(self._members):
            out += self.remove_bucket(bucket_id, now)
        return out

    def kick(self, bucket_id: str, now: float) -> list[Any]:
        """A bucket refused tokens: ask for a (bigger) lease now if no request is out."""
        out: list[Any] = []
        member = self._members.get(bucket_id)
        if member is None or member.outstanding is not None:
            return out
        bucket = member.bucket
        # Without a usable lease ask soon; with one, at most twice per renewal period.
        interval = self.min_interval if not bucket.lease_rate or now >= bucket.expires else self.renew_every / 2
        if now - member.last_request >= interval:
            self._request(bucket_id, now, out)
        else:
            member.next_at = min(member.next_at, member.last_request + interval)
            self._arm(member.next_at, out)
        return out

    def set_alive(self, alive: Iterable[str], now: float) -> list[Any]:
        """The live members in this node's view (this node is always one)."""
        new = frozenset(alive) & self.members | {self.node}
        if new == self.alive:
            return []
        before = self.alive
        self.alive = new
        out: list[Any] = []
        # Ownership changes: buckets we no longer own are dropped; ones we gain start a grace period.
        for bucket_id in list(self._owned):
            if owner_of(bucket_id, new) != self.node:
                del self._owned[bucket_id]
        for bucket_id, member in self._members.items():
            if owner_of(bucket_id, new) != owner_of(bucket_id, before) and member.outstanding is not None:
                member.outstanding = None  # re-ask the new owner now
                self._request(bucket_id, now, out)
        return out

    def receive(self, sender: str, message: Any, now: float) -> list[Any]:
        out: list[Any] = []
        self._receive(sender, message, now, out)
        return out

    def timer(self, key: Any, now: float) -> list[Any]:
        out: list[Any] = []
        if key != self.TIMER:
            return out
        self._timer_at = math.inf
        next_at = now + self.renew_every
        for bucket_id, member in self._members.items():
            due = member.next_at
            if member.outstanding is not None:
                due = member.sent_at + self.request_timeout
            if now >= due:
                member.outstanding = None
                self._request(bucket_id, now, out)
                due = member.next_at if member.outstanding is None else member.sent_at + self.request_timeout
            next_at = min(next_at, due)
        for owned in self._owned.values():  # forget members that went quiet
            for node in [n for n, h in owned.holders.items() if not h.leases and now - h.last_request > 4 * self.ttl]:
                del owned.holders[node]
        self._arm(max(next_at, now + self.min_interval / 4), out)
        return out

    # -- introspection --------------------------------------------------------------------------

    def owner(self, bucket_id: str) -> str | None:
        return owner_of(bucket_id, self.alive)

    def committed(self, bucket_id: str, now: float) -> tuple[float, float]:
        """As the owner: the sum of rates and capacities that may be in force (for tests)."""
        owned = self._owned.get(bucket_id)
        if owned is None:
            return 0.0, 0.0
        rates = caps = 0.0
        for holder in owned.holders.values():
            r, c = holder.committed(now)
            rates += r
            caps += c
        return rates, caps

    def bucket(self, bucket_id: str) -> LeasedBucket:
        return self._members[bucket_id].bucket

    def statistics(self) -> LeaseStatistics:
        s = self.stats
        return LeaseStatistics(len(self._owned), len(self._members), s["requests"], s["grants"], s["retries"])

    # -- the member's side ----------------------------------------------------------------------

    def _arm(self, deadline: float, out: list[Any]) -> None:
        if deadline < self._timer_at:
            self._timer_at = deadline
            out.append(SetTimer(self.TIMER, deadline))

    def _kicked(self, bucket_id: str, now: float) -> None:
        effects = self.kick(bucket_id, now)
        if effects and self.on_effects is not None:
            self.on_effects(effects)

    def _request(self, bucket_id: str, now: float, out: list[Any]) -> None:
        member = self._members[bucket_id]
        owner = owner_of(bucket_id, self.alive)
        if owner is None:
            return
        bucket = member.bucket
        capacity, rate = self._configs[bucket_id]
        elapsed = now - member.last_request
        demand = (bucket.used - member.used_at_request) / elapsed if 0 < elapsed < math.inf else 0.0
        remaining = max(0.0, bucket.expires - now)
        member.rid += 1
        member.outstanding = member.rid
        member.sent_at = now
        member.to = owner
        member.last_request = now
        member.used_at_request = bucket.used
        member.next_at = now + self.renew_every
        bucket.requested = True
        request = LeaseRequest(
            bucket_id, member.rid, capacity, rate,
            bucket.lease_rate if remaining else 0.0, bucket.lease_capacity if remaining else 0.0, remaining,
            demand, bucket.hungry or not remaining, bucket.need,
        )  # fmt: skip
        bucket.hungry = False
        bucket.need = 0.0
        self.stats["requests"] += 1
        self._send(owner, request, now, out)

    def _on_grant(self, grant: LeaseGrant, now: float) -> None:
        member = self._members.get(grant.bucket)
        if member is None or grant.rid != member.outstanding:
            return  # an answer to a request we gave up on: ignored (our next report says so)
        member.outstanding = None
        member.bucket.requested = False
        member.bucket.set_lease(grant.rate, grant.capacity, member.sent_at + grant.ttl, now)
        # Renew well before expiry; sooner if this lease is empty.
        renew = member.sent_at + min(self.renew_every, grant.ttl / 2)
        if grant.capacity <= 0:
            renew = min(renew, now + self.min_interval)
        member.next_at = renew

    def _on_retry(self, retry: LeaseRetry, now: float) -> None:
        member = self._members.get(retry.bucket)
        if member is None or retry.rid != member.outstanding:
            return
        member.outstanding = None
        member.bucket.requested = False
        member.next_at = now + max(min(retry.retry_after, self.renew_every), self.min_interval)
        self.stats["retries"] += 1

    # -- the owner's side -------------------------------------------------------------------------

    def _owned_bucket(self, bucket_id: str, request: LeaseRequest | None, now: float) -> _Owned:
        owned = self._owned.get(bucket_id)
        if owned is None:
            config = self._configs.get(bucket_id)
            if config is None:
                assert request is not None
                config = (request.capacity, request.rate)
            owned = self._owned[bucket_id] = _Owned(config[0], config[1], now, now + self.ttl)
        if request is not None and (request.capacity, request.rate) != (owned.capacity, owned.rate):
            if bucket_id not in self._warned:
                self._warned.add(bucket_id)
                log.warning(
                    "distributed bucket %r: a member asks with capacity %g rate %g; the owner's %g, %g rule",
                    bucket_id, request.capacity, request.rate, owned.capacity, owned.rate,
                )  # fmt: skip
        return owned

    def _on_request(self, sender: str, request: LeaseRequest, now: float, out: list[Any]) -> None:
        bucket_id = request.bucket
        if sender not in self.members:
            return
        owner = owner_of(bucket_id, self.alive)
        if owner != self.node:
            self.stats["retries"] += 1
            self._send(sender, LeaseRetry(bucket_id, request.rid, "not_owner", self.min_interval), now, out)
            return
        owned = self._owned_bucket(bucket_id, request, now)
        holder = owned.holders.get(sender)
        if holder is None:
            holder = owned.holders[sender] = _Holder()
        # What it holds now replaces everything granted before (it adopts the newest grant,
        # and ignores grants for requests it gave up on).
        holder.leases = [(request.held_rate, request.held_capacity, now + request.held_remaining)] if request.held_remaining else []
        holder.demand = request.demand
        holder.held_rate = request.held_rate
        holder.hungry = request.hungry
        holder.need = request.need
        holder.last_request = now
        owned.reported.add(sender)
        if now < owned.grace_until and not self.alive <= owned.reported:
            self.stats["retries"] += 1
            self._send(sender, LeaseRetry(bucket_id, request.rid, "grace", owned.grace_until - now), now, out)
            return
        rate, capacity = self._share(owned, sender, now)
        holder.leases.append((rate, capacity, now + self.ttl))
        self.stats["grants"] += 1
        self._send(sender, LeaseGrant(bucket_id, request.rid, rate, capacity, self.ttl), now, out)

    def _share(self, owned: _Owned, node: str, now: float) -> tuple[float, float]:
        """The lease for ``node``: its max-min fair share, within what others may be using."""
        others_rate = others_cap = 0.0
        wants: list[tuple[float, str]] = []
        active = [(n, h) for n, h in owned.holders.items() if n == node or now - h.last_request <= 2 * self.ttl]
        floor = owned.rate / (10 * max(len(active), 1))
        for n, h in active:
            if h.hungry:
                want = math.inf
            else:  # keep a lease it uses well; else 1.5 times its use
                want = max(h.demand * 1.5, h.held_rate if h.demand >= 0.5 * h.held_rate else 0.0, floor)
            wants.append((want, n))
        for n, h in owned.holders.items():
            if n != node:
                r, c = h.committed(now)
                others_rate += r
                others_cap += c
        wants.sort()
        remaining = owned.rate
        target = 0.0
        for i, (want, n) in enumerate(wants):
            give = min(want, remaining / (len(wants) - i))
            remaining -= give
            if n == node:
                target = give
        target += remaining / len(wants)  # what nobody wants is shared equally
        rate = max(0.0, min(target, owned.rate - others_rate))
        cap_target = owned.capacity * (target / owned.rate) if owned.rate > 0 else owned.capacity / max(len(active), 1)
        holder = owned.holders[node]
        # At least one token of capacity (most acquisitions take one), or the largest refused.
        capacity = max(0.0, min(max(cap_target, holder.need, 1.0), owned.capacity, owned.capacity - others_cap))
        # Float sums must never exceed the totals.
        rate = min(rate, max(0.0, owned.rate - others_rate))
        return rate, capacity

    def _on_release(self, sender: str, release: LeaseRelease) -> None:
        owned = self._owned.get(release.bucket)
        if owned is not None:
            owned.holders.pop(sender, None)

    # -- plumbing -------------------------------------------------------------------------------

    def _receive(self, sender: str, message: Any, now: float, out: list[Any]) -> None:
        t = type(message)
        if t is LeaseRequest:
            self._on_request(sender, message, now, out)
        elif t is LeaseGrant:
            member = self._members.get(message.bucket)
            if member is not None and sender == member.to:
                self._on_grant(message, now)
        elif t is LeaseRetry:
            self._on_retry(message, now)
        elif t is LeaseRelease:
            self._on_release(sender, message)

    def _send(self, dest: str, message: Any, now: float, out: list[Any]) -> None:
        if dest == self.node:
            self._receive(self.node, message, now, out)
        else:
            out.append(Send(dest, message))

