"""The design's ``tree`` overlay as a sans-IO state machine: a rooted tree of bounded fanout and depth.

The first contact is the root. A join walks down from the contact it is sent to: a
node with a free child slot (at most ``fanout``) adopts the joiner if the joiner's
subtree still fits above ``max_depth``; otherwise it passes the join to the child with
the smallest subtree where it fits. So the tree fills level by level and stays shallow.
Each node knows its path from the root (sent down with :class:`TreeAdopt` and
:class:`TreePath`) and its subtree's height and size (sent up with :class:`TreeInfo`).

Repair: when a parent fails or leaves, the orphan re-joins through the contacts with
its whole subtree; nodes refuse to adopt one of their own ancestors, so the tree cannot
close a cycle. If the root is gone, the first contact that cannot reach any contact
listed before it becomes the new root (others then join under it); a root that is not
the first contact keeps trying to join the earlier ones, so trees split by a partition
merge again when it heals. When a subtree is too tall to fit anywhere, the orphan lets
its children re-join on their own and joins alone; when the tree is full
(:attr:`TreeConfig.capacity` nodes) a join is refused with
:class:`~phoenix_trio.overlay.JoinFailed`.

Neighbour events: a node's neighbours are its parent and its children.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Hashable, Iterable
from typing import Any

from ..effects import CancelTimer, Send, SetTimer
from . import _checks as checks
from ._config import TreeConfig
from ._events import CloseLink, JoinFailed, NeighborDown, NeighborUp
from ._messages import NodeId, TreeAdopt, TreeInfo, TreeJoin, TreeLeave, TreePath, TreeReject

_log = logging.getLogger(__name__)

_JOIN = ("tree", "join")
_INFO = ("tree", "info")
_FULL = "tree full"


class TreeOverlay:
    """One node of the tree overlay; see the module docstring."""

    def __init__(self, node_id: NodeId, config: TreeConfig | None = None, *, rng: random.Random) -> None:
        self.node_id = checks.own_node_id(node_id)
        self.config = config if config is not None else TreeConfig()
        self.rng = rng
        self.parent: NodeId | None = None
        self.path: tuple[NodeId, ...] = ()  # root ... parent
        self.children: dict[NodeId, tuple[int, int]] = {}  # child -> (height, size)
        self.is_root = False
        self._contacts: list[NodeId] = []
        self._attempt = 0
        self._round_failures = 0
        self._resting = False  # every contact failed once: the next join waits for the timer
        self._joining = False
        self._reported: tuple[int, int] | None = None
        self._info_scheduled = False
        self.left = False

    # -- queries ---------------------------------------------------------------------------

    def neighbors(self) -> list[NodeId]:
        return ([self.parent] if self.parent is not None else []) + list(self.children)

    members = neighbors

    @property
    def in_tree(self) -> bool:
        return self.is_root or self.parent is not None

    @property
    def depth(self) -> int:
        return len(self.path)

    @property
    def height(self) -> int:
        return 1 + max(h for h, _ in self.children.values()) if self.children else 0

    @property
    def size(self) -> int:
        return 1 + sum(s for _, s in self.children.values())

    # -- commands --------------------------------------------------------------------------

    def start(self, now: float) -> list[Any]:
        return []

    def join(self, contacts: Iterable[NodeId], now: float) -> list[Any]:
        """Join under ``contacts`` (the first is the root). No other contact: become the root."""
        self.left = False
        self._contacts = list(dict.fromkeys(checks.node_ids(contacts, "contacts")))
        out: list[Any] = []
        if not [c for c in self._contacts if c != self.node_id] or self._contacts[0] == self.node_id:
            self._become_root(out)
            return out
        self._attempt = 0
        self._round_failures = 0
        self._send_join(now, out)
        return out

    def leave(self, now: float) -> list[Any]:
        out: list[Any] = []
        for peer in self.neighbors():
            out += [Send(peer, TreeLeave()), NeighborDown(peer, "left"), CloseLink(peer)]
        self.parent, self.path, self.children, self.is_root = None, (), {}, False
        self._joining = False
        self.left = True
        out += [CancelTimer(_JOIN), CancelTimer(_INFO)]
        return out

    def link_failed(self, peer: NodeId, now: float) -> list[Any]:
        out: list[Any] = []
        if peer == self.parent:
            self._lose(peer, "failed", now, out, rejoin=False)
            self._attempt = 0
            if self._current_contact() == peer:
                self._next_contact(now, out)  # counts as that contact failing
            else:
                self._send_join(now, out)
        elif self._joining and self._current_contact() == peer:
            self._next_contact(now, out)
        else:
            self._lose(peer, "failed", now, out)
        return out

    # -- inputs ----------------------------------------------------------------------------

    def receive(self, sender: NodeId, message: Any, now: float) -> list[Any]:
        out: list[Any] = []
        kind = type(message)
        if self.left:
            if kind is TreeJoin:
                out.append(Send(message.joiner, TreeReject("left")))
            elif kind is TreeAdopt:
                out.append(Send(sender, TreeLeave()))
            return out
        if kind is TreeJoin:
            self._on_join(sender, message, now, out)
        elif kind is TreeAdopt:
            self._on_adopt(sender, message, now, out)
        elif kind is TreeReject:
            if self._joining and not self.in_tree:
                if message.reason == _FULL:
                    self._on_full(now, out)
                else:
                    self._next_contact(now, out, answered=True)
        elif kind is TreePath:
            if sender == self.parent:
                if self.node_id in message.path:
                    self._lose(sender, "cycle", now, out)
                    out.append(Send(sender, TreeLeave()))
                else:
                    self.path = message.path
                    self._push_path(out)
        elif kind is TreeInfo:
            if sender in self.children:
                self.children[sender] = (message.height, message.size)
                self._schedule_info(now, out)
        elif kind is TreeLeave:
            self._lose(sender, "left", now, out)
        return out

    def timer(self, key: Hashable, now: float) -> list[Any]:
        out: list[Any] = []
        if self.left:
            return out
        if key == _JOIN:
            if self._joining and not self.in_tree:
                if self._resting:
                    self._resting = False
                    self._send_join(now, out)
                else:
                    self._next_contact(now, out)
            elif self.is_root and self._contact_index() > 0:
                self._try_merge(now, out)
        elif key == _INFO:
            self._info_scheduled = False
            self._report(out)
        return out

    # -- handlers --------------------------------------------------------------------------

    def _on_join(self, sender: NodeId, msg: TreeJoin, now: float, out: list[Any]) -> None:
        joiner = msg.joiner
        cfg = self.config
        if not self.in_tree:
            out.append(Send(joiner, TreeReject("not in the tree")))
            return
        if joiner == self.node_id or joiner in self.path:
            out.append(Send(joiner, TreeReject("would close a cycle")))
            return
        if joiner in self.children:
            out.append(Send(joiner, TreeAdopt((*self.path, self.node_id))))
            return
        if self.depth + 1 + msg.height > cfg.max_depth:
            out.append(Send(joiner, TreeReject(_FULL)))
            return
        if len(self.children) < cfg.fanout:
            self.children[joiner] = (msg.height, 1)
            out.append(NeighborUp(joiner))
            out.append(Send(joiner, TreeAdopt((*self.path, self.node_id))))
            self._schedule_info(now, out)
            return
        fits = [
            (size, index, child)
            for index, (child, (height, size)) in enumerate(self.children.items())
            if self.depth + 2 + msg.height <= cfg.max_depth and size < self._capacity_below(self.depth + 1)
        ]
        if not fits or msg.hops > cfg.max_depth:
            out.append(Send(joiner, TreeReject(_FULL)))
            return
        _, _, child = min(fits)
        # Count the join as placed below that child until its next TreeInfo says
        # otherwise, so a burst of joins spreads over the children instead of piling
        # onto the one whose report is oldest.
        height, size = self.children[child]
        self.children[child] = (height, size + 1)
        out.append(Send(child, TreeJoin(joiner, msg.height, msg.hops + 1)))

    def _on_adopt(self, sender: NodeId, msg: TreeAdopt, now: float, out: list[Any]) -> None:
        merging_root = self.is_root and self._contact_index() > 0
        if (
            self.node_id in msg.path
            or sender in self.children
            or (self.parent is not None and self.parent != sender)
            or (self.is_root and not merging_root)
        ):
            out.append(Send(sender, TreeLeave()))
            return
        if self.parent == sender:
            self.path = msg.path
            self._push_path(out)
            return
        self.parent = sender
        self.path = msg.path
        self.is_root = False
        self._joining = False
        self._resting = False
        self._round_failures = 0
        self._reported = None
        out.append(CancelTimer(_JOIN))
        out.append(NeighborUp(sender))
        self._push_path(out)
        self._report(out)

    # -- internals -------------------------------------------------------------------------

    def _capacity_below(self, depth: int) -> int:
        """How many nodes fit in a subtree rooted at ``depth``."""
        levels = self.config.max_depth - depth + 1
        f = self.config.fanout
        return levels if f == 1 else (f**levels - 1) // (f - 1)

    def _become_root(self, out: list[Any]) -> None:
        self.is_root = True
        self.parent = None
        self.path = ()
        self._joining = False
        self._push_path(out)

    def _current_contact(self) -> NodeId | None:
        others = [c for c in self._contacts if c != self.node_id]
        return others[self._attempt % len(others)] if others else None

    def _contact_index(self) -> int:
        try:
            return self._contacts.index(self.node_id)
        except ValueError:
            return -1

    def _send_join(self, now: float, out: list[Any]) -> None:
        contact = self._current_contact()
        if contact is None:
            self._become_root(out)
            return
        self._joining = True
        out.append(Send(contact, TreeJoin(self.node_id, self.height, 0)))
        out.append(SetTimer(_JOIN, now + self.config.join_timeout))

    def _next_contact(self, now: float, out: list[Any], *, answered: bool = False) -> None:
        self._attempt += 1
        others = [c for c in self._contacts if c != self.node_id]
        index = self._contact_index()
        if index > 0:
            earlier = [c for c in self._contacts[:index]]
            if self._attempt >= len(earlier):
                # No contact listed before this node could take it: it becomes the root,
                # and keeps trying to join the earlier ones (see _try_merge).
                self._become_root(out)
                out.append(SetTimer(_JOIN, now + self.config.join_timeout * 4))
                return
        if others and self._attempt % len(others) == 0:
            self._round_failures += 1
            if self._round_failures == 1:
                out.append(JoinFailed("no contact could place this node"))
            if answered or self._round_failures > 1:
                # Every contact refused or failed: wait a join_timeout before the next
                # round (contacts that answer at once, e.g. not in the tree yet, or
                # refuse the connection, would make it a storm). The first round after
                # losing a parent goes on at once.
                self._resting = True
                out.append(SetTimer(_JOIN, now + self.config.join_timeout))
                return
        self._send_join(now, out)

    def _try_merge(self, now: float, out: list[Any]) -> None:
        index = self._contact_index()
        earlier = self._contacts[:index]
        target = earlier[self.rng.randrange(len(earlier))]
        out.append(Send(target, TreeJoin(self.node_id, self.height, 0)))
        out.append(SetTimer(_JOIN, now + self.config.join_timeout * 4))

    def _on_full(self, now: float, out: list[Any]) -> None:
        if self.children:
            # Too tall to fit: let the children re-join on their own, then join alone.
            for child in list(self.children):
                out += [Send(child, TreeLeave()), NeighborDown(child, "replaced"), CloseLink(child)]
            self.children.clear()
            self._send_join(now, out)
            return
        self._joining = False
        out.append(CancelTimer(_JOIN))
        out.append(JoinFailed(_FULL))

    def _lose(self, peer: NodeId, reason: str, now: float, out: list[Any], *, rejoin: bool = True) -> None:
        if peer == self.parent:
            self.parent = None
            self.path = ()
            out += [NeighborDown(peer, reason), CloseLink(peer)]
            self._push_path(out)  # children learn their ancestors are gone
            if rejoin:
                self._attempt = 0
                self._send_join(now, out)
        elif peer in self.children:
            del self.children[peer]
            out += [NeighborDown(peer, reason), CloseLink(peer)]
            self._schedule_info(now, out)

    def _push_path(self, out: list[Any]) -> None:
        if self.children:
            down = TreePath((*self.path, self.node_id))
            for child in self.children:
                out.append(Send(child, down))

    def _schedule_info(self, now: float, out: list[Any]) -> None:
        if not self._info_scheduled and self.parent is not None:
            self._info_scheduled = True
            out.append(SetTimer(_INFO, now + self.config.info_interval))

    def _report(self, out: list[Any]) -> None:
        state = (self.height, self.size)
        if self.parent is not None and state != self._reported:
            self._reported = state
            out.append(Send(self.parent, TreeInfo(*state)))
