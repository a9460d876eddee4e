"""Cluster membership for the local cluster: a sans-IO full-mesh state machine.

Every node connects to every other node. The state machine is told what the transport
saw (a handshake completed, bytes heard, a connection lost, a goodbye, a peer's member
list) together with the current time, and answers with effects: connect to an address,
disconnect a peer, membership events, and its next timer.

Failure detection: each connection carries heartbeats every ``heartbeat_interval``
seconds when otherwise idle, so silence means trouble. A member not heard from for
``failure_timeout / 2`` is *suspect*; for ``failure_timeout`` (default 2 s) it is
*dead*: its connection is dropped, requests waiting on it fail with
:class:`~phoenix_trio.NodeUnreachable`, and its agents leave the directory. Silence is
not counted while this node itself stopped reading from the peer because a local inbox
is full (backpressure), since the peer cannot be heard then.

Joining: a node connects to its seeds (retried with capped exponential backoff and
jitter until they answer), learns the member list from each peer it meets, and
connects to the members it does not know yet. Leaving: a goodbye marks a member *left*
at once. Dead members are retried with backoff for ``forget_after`` seconds so a
restarted node is found again, then forgotten; a restarted node announces a higher
incarnation and replaces its old self.
"""

from __future__ import annotations

import random
from typing import Literal

import attrs

from .effects import SetTimer

Address = tuple[str, int]
Status = Literal["alive", "suspect", "dead", "left"]
EventKind = Literal["joined", "suspect", "alive", "dead", "left", "restarted"]

TICK = "membership-tick"


@attrs.frozen(slots=True)
class MembershipConfig:
    heartbeat_interval: float = 0.5
    failure_timeout: float = 2.0
    reconnect_initial: float = 0.05
    reconnect_max: float = 2.0
    forget_after: float = 120.0
    max_members: int = 1024


@attrs.frozen(slots=True)
class MemberInfo:
    """What a node announces about a member (HELLO and member lists)."""

    node_id: str
    address: Address
    incarnation: int


@attrs.frozen(slots=True)
class MemberEvent:
    """A membership change users can watch."""

    kind: EventKind
    node_id: str
    address: Address
    incarnation: int
    at: float


@attrs.frozen(slots=True)
class Connect:
    """Open a connection to ``address`` (``node_id`` is None for a seed not met yet)."""

    address: Address
    node_id: str | None


@attrs.frozen(slots=True)
class Disconnect:
    node_id: str
    reason: str


@attrs.define(slots=True)
class Member:
    node_id: str
    address: Address
    incarnation: int
    status: Status = "alive"
    connected: bool = False
    last_heard: float = 0.0
    stalled: bool = False
    since: float = 0.0
    next_attempt: float = 0.0
    delay: float = 0.0


@attrs.define(slots=True)
class _Target:
    """An address to connect to whose node we have not met yet: a seed, or a learned member."""

    permanent: bool
    added: float = 0.0
    next_attempt: float = 0.0
    delay: float = 0.0


class Membership:
    """See the module docstring. All methods return a list of effects."""

    def __init__(
        self,
        local: MemberInfo,
        seeds: list[Address],
        *,
        config: MembershipConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.local = local
        self.config = config or MembershipConfig()
        self.rng = rng or random.Random()
        self.members: dict[str, Member] = {}
        self._targets: dict[Address, _Target] = {
            (a[0], int(a[1])): _Target(permanent=True) for a in seeds if tuple(a) != tuple(local.address)
        }
        self._connecting: set[Address] = set()

    # -- queries ----------------------------------------------------------------------

    def alive(self) -> list[str]:
        return [m.node_id for m in self.members.values() if m.status in ("alive", "suspect")]

    def view(self) -> list[MemberInfo]:
        """The members worth telling others about (alive or suspect), and this node."""
        infos = [
            MemberInfo(m.node_id, m.address, m.incarnation)
            for m in self.members.values()
            if m.status in ("alive", "suspect") and m.address[1] != 0
        ]
        return [self.local, *infos] if self.local.address[1] != 0 else infos

    # -- inputs -----------------------------------------------------------------------

    def start(self, now: float) -> list[object]:
        effects: list[object] = []
        for address in list(self._targets):
            effects += self._attempt(address, None, now)
        effects.append(SetTimer(TICK, now + self.config.heartbeat_interval / 2))
        return effects

    def connected(self, info: MemberInfo, now: float, via: Address | None = None) -> list[object]:
        """A handshake with ``info`` completed (on a connection we opened to ``via``, if any)."""
        self._targets.pop(info.address, None)
        if via is not None:
            self._targets.pop(via, None)
        member = self.members.get(info.node_id)
        events: list[object] = []
        if member is None:
            if len(self.members) >= self.config.max_members:
                return [Disconnect(info.node_id, "member limit reached")]
            member = self.members[info.node_id] = Member(info.node_id, info.address, info.incarnation, since=now)
            events.append(self._event("joined", member, now))
        elif info.incarnation > member.incarnation:
            member.incarnation = info.incarnation
            member.address = info.address
            events.append(self._event("restarted", member, now))
        elif info.incarnation < member.incarnation:
            return [Disconnect(info.node_id, "stale incarnation")]
        elif member.status in ("dead", "left"):
            events.append(self._event("joined", member, now))
        elif member.status == "suspect":
            events.append(self._event("alive", member, now))
        member.address = info.address
        member.status = "alive"
        member.connected = True
        member.last_heard = now
        member.stalled = False
        member.delay = 0.0
        member.since = now
        return events

    def heard(self, node_id: str, now: float) -> list[object]:
        member = self.members.get(node_id)
        if member is None:
            return []
        member.last_heard = now
        if member.status == "suspect" and member.connected:
            member.status = "alive"
            return [self._event("alive", member, now)]
        return []

    def stall(self, node_id: str, stalled: bool, now: float) -> None:
        """This node stopped (or resumed) reading from ``node_id`` because of local backpressure."""
        member = self.members.get(node_id)
        if member is not None:
            member.stalled = stalled
            member.last_heard = now

    def disconnected(self, node_id: str, now: float) -> list[object]:
        """The connection to ``node_id`` closed without a goodbye."""
        member = self.members.get(node_id)
        if member is None or not member.connected:
            return []
        member.connected = False
        member.stalled = False
        member.delay = 0.0
        member.next_attempt = now  # reconnect at once; failure detection keeps running
        return self._attempt(member.address, member.node_id, now)

    def connect_done(self, address: Address) -> None:
        """The driver finished an attempt to ``address`` (either way): allow the next one."""
        self._connecting.discard(address)

    def goodbye(self, node_id: str, now: float) -> list[object]:
        member = self.members.get(node_id)
        if member is None or member.status == "left":
            return []
        member.status = "left"
        member.connected = False
        member.since = now
        return [self._event("left", member, now)]

    def learned(self, infos: list[MemberInfo], now: float) -> list[object]:
        """A peer told us its members: connect to the ones we do not know (full mesh)."""
        effects: list[object] = []
        for info in infos:
            if info.node_id == self.local.node_id:
                continue
            member = self.members.get(info.node_id)
            if member is not None and (member.connected or info.incarnation < member.incarnation):
                continue
            if member is not None and member.status == "left" and info.incarnation == member.incarnation:
                continue
            if member is None:
                if info.address in self._targets:
                    continue
                if len(self.members) + len(self._targets) >= self.config.max_members:
                    continue
                self._targets[info.address] = _Target(permanent=False, added=now)
                effects += self._attempt(info.address, None, now)
            else:
                effects += self._attempt(info.address, info.node_id, now)
        return effects

    def timer(self, key: object, now: float) -> list[object]:
        if key != TICK:
            return []
        cfg = self.config
        effects: list[object] = []
        for member in list(self.members.values()):
            silent = now - member.last_heard
            if member.status in ("alive", "suspect") and not member.stalled:
                if silent >= cfg.failure_timeout:
                    member.status = "dead"
                    member.since = now
                    member.next_attempt = now
                    member.delay = 0.0
                    was_connected = member.connected
                    member.connected = False
                    effects.append(self._event("dead", member, now))
                    if was_connected:
                        effects.append(Disconnect(member.node_id, f"silent for {silent:.2f} s"))
                elif silent >= cfg.failure_timeout / 2 and member.status == "alive":
                    member.status = "suspect"
                    effects.append(self._event("suspect", member, now))
            if member.status in ("dead", "left") and now - member.since >= cfg.forget_after:
                del self.members[member.node_id]
                continue
            if not member.connected and member.status != "left" and now >= member.next_attempt:
                effects += self._attempt(member.address, member.node_id, now)
        for address, target in list(self._targets.items()):
            if not target.permanent and now - target.added >= cfg.forget_after:
                del self._targets[address]
            elif now >= target.next_attempt:
                effects += self._attempt(address, None, now)
        effects.append(SetTimer(TICK, now + cfg.heartbeat_interval / 2))
        return effects

    # -- internals --------------------------------------------------------------------

    def _attempt(self, address: Address, node_id: str | None, now: float) -> list[object]:
        """Connect now, and schedule the next attempt with capped, jittered exponential backoff."""
        if address in self._connecting or address[1] == 0:  # port 0: the peer only dials out
            return []
        holder: Member | _Target | None = self.members.get(node_id) if node_id else self._targets.get(address)
        if holder is not None:
            delay = holder.delay * 2 if holder.delay else self.config.reconnect_initial
            holder.delay = min(delay, self.config.reconnect_max)
            holder.next_attempt = now + holder.delay * self.rng.uniform(0.5, 1.0)
        self._connecting.add(address)
        return [Connect(address, node_id)]

    def _event(self, kind: EventKind, member: Member, now: float) -> MemberEvent:
        return MemberEvent(kind, member.node_id, member.address, member.incarnation, now)
