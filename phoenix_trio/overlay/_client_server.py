"""The design's ``client_server`` overlay as a sans-IO state machine: servers and their clients.

Servers (the configured list) greet each other and form a full mesh. Every other node is
a client of exactly one server: it starts with the server its id hashes to (CRC32, so
clients spread evenly and the choice is the same on every run) and moves to the next
server in the list when its server fails, refuses or says goodbye. Neighbour events:
a server's neighbours are the other servers plus its clients; a client's is its server.

Partisan measured this topology dying above 256 nodes (every message goes through a
server), which is why the large-cluster default is HyParView; it is still the simplest
choice for small clusters with a few well-provisioned hubs.
"""

from __future__ import annotations

import logging
import random
import zlib
from collections.abc import Hashable, Iterable
from typing import Any

from ..effects import Send, SetTimer
from . import _checks as checks
from ._config import ClientServerConfig
from ._events import CloseLink, JoinFailed, NeighborDown, NeighborUp
from ._messages import ClientHello, Goodbye, HelloReply, NodeId, ServerHello

_log = logging.getLogger(__name__)

_RETRY = ("client_server", "retry")


class ClientServer:
    """One node of the client_server overlay; see the module docstring."""

    def __init__(self, node_id: NodeId, config: ClientServerConfig, *, rng: random.Random) -> None:
        self.node_id = checks.own_node_id(node_id)
        self.config = config
        self.rng = rng
        self.is_server = node_id in config.servers
        self._others = [s for s in config.servers if s != node_id]
        self._servers_up: dict[NodeId, None] = {}
        self._clients: dict[NodeId, None] = {}
        self._pending: dict[NodeId, float] = {}  # peer -> hello deadline
        self._server: NodeId | None = None
        self._server_index = zlib.crc32(node_id.encode()) % len(config.servers) if self._others else 0
        self._joined = False
        self._failures = 0
        self.left = False

    # -- queries ---------------------------------------------------------------------------

    def neighbors(self) -> list[NodeId]:
        if self.is_server:
            return list(self._servers_up) + list(self._clients)
        return [self._server] if self._server is not None else []

    members = neighbors

    @property
    def server(self) -> NodeId | None:
        """A client's current server (None for servers and unattached clients)."""
        return self._server

    def clients(self) -> list[NodeId]:
        return list(self._clients)

    # -- commands --------------------------------------------------------------------------

    def start(self, now: float) -> list[Any]:
        return []

    def join(self, contacts: Iterable[NodeId] = (), now: float = 0.0) -> list[Any]:
        """Connect: a server greets the other servers, a client asks its server. ``contacts`` is unused."""
        self.left = False
        self._joined = True
        out: list[Any] = []
        self._retry(now, out)
        return out

    def leave(self, now: float) -> list[Any]:
        out: list[Any] = []
        for peer in self.neighbors():
            out += [Send(peer, Goodbye()), NeighborDown(peer, "left"), CloseLink(peer)]
        self._servers_up.clear()
        self._clients.clear()
        self._pending.clear()
        self._server = None
        self._joined = False
        self.left = True
        return out

    def link_failed(self, peer: NodeId, now: float) -> list[Any]:
        out: list[Any] = []
        was_pending = self._pending.pop(peer, None) is not None
        was_server = peer == self._server
        self._drop(peer, "failed", out)
        if not self.is_server and self._joined and (was_pending or was_server):
            self._advance(out)
        if self._joined and not self.left:
            self._retry(now, out, failed=peer)
        return out

    # -- inputs ----------------------------------------------------------------------------

    def receive(self, sender: NodeId, message: Any, now: float) -> list[Any]:
        out: list[Any] = []
        kind = type(message)
        if self.left:
            if kind in (ServerHello, ClientHello):
                out.append(Send(sender, HelloReply(False)))
            return out
        if kind is ServerHello:
            if self.is_server and sender in self._others:
                self._pending.pop(sender, None)
                if sender not in self._servers_up:
                    self._servers_up[sender] = None
                    out.append(NeighborUp(sender))
                out.append(Send(sender, HelloReply(True)))
            else:
                out.append(Send(sender, HelloReply(False)))
        elif kind is ClientHello:
            if self.is_server and sender not in self.config.servers:
                if sender not in self._clients:
                    self._clients[sender] = None
                    out.append(NeighborUp(sender))
                out.append(Send(sender, HelloReply(True)))
            else:
                out.append(Send(sender, HelloReply(False)))
        elif kind is HelloReply:
            self._on_reply(sender, message, now, out)
        elif kind is Goodbye:
            was_pending = self._pending.pop(sender, None) is not None
            was_server = sender == self._server
            self._drop(sender, "left", out)
            if not self.is_server and (was_server or was_pending):
                self._advance(out)
                self._retry(now, out)
        return out

    def timer(self, key: Hashable, now: float) -> list[Any]:
        out: list[Any] = []
        if key == _RETRY and not self.left and self._joined:
            self._retry(now, out)
        return out

    # -- internals -------------------------------------------------------------------------

    def _on_reply(self, sender: NodeId, msg: HelloReply, now: float, out: list[Any]) -> None:
        was_pending = self._pending.pop(sender, None) is not None
        if self.is_server:
            if msg.accepted and sender in self._others and sender not in self._servers_up:
                self._servers_up[sender] = None
                out.append(NeighborUp(sender))
            return
        if not msg.accepted:
            if was_pending:
                self._advance(out)
                self._retry(now, out)
            return
        if self._server is None and sender in self.config.servers:
            self._server = sender
            self._failures = 0
            out.append(NeighborUp(sender))
        elif sender != self._server:
            out += [Send(sender, Goodbye()), CloseLink(sender)]

    def _advance(self, out: list[Any]) -> None:
        """The current server failed, refused or left: move on to the next one."""
        self._server_index += 1
        self._failures += 1
        if self._failures == len(self.config.servers):  # every server failed once: say so, once
            out.append(JoinFailed("no server accepted this client: " + ", ".join(self.config.servers[:8])))

    def _drop(self, peer: NodeId, reason: str, out: list[Any]) -> None:
        if peer in self._servers_up:
            del self._servers_up[peer]
        elif peer in self._clients:
            del self._clients[peer]
        elif peer == self._server:
            self._server = None
        else:
            return
        out += [NeighborDown(peer, reason), CloseLink(peer)]

    def _retry(self, now: float, out: list[Any], failed: NodeId | None = None) -> None:
        """Greet what is missing; a peer whose link just failed waits for the next round
        (a driver may report a failure at once, e.g. no address: greeting it again at once
        would loop)."""
        cfg = self.config
        for peer, deadline in list(self._pending.items()):
            if deadline <= now:
                del self._pending[peer]
                if not self.is_server:
                    self._advance(out)
        if self.is_server:
            missing = [s for s in self._others if s not in self._servers_up and s not in self._pending and s != failed]
            for server in missing:
                self._pending[server] = now + cfg.hello_timeout
                out.append(Send(server, ServerHello()))
            if len(self._servers_up) < len(self._others):
                out.append(SetTimer(_RETRY, now + cfg.retry_interval))
            return
        if self._server is not None or self._pending:
            if self._pending:
                out.append(SetTimer(_RETRY, min(self._pending.values())))
            return
        servers = cfg.servers
        target = servers[self._server_index % len(servers)]
        if target == failed:  # the only server, or the next one is the one that failed
            out.append(SetTimer(_RETRY, now + cfg.retry_interval))
            return
        self._pending[target] = now + cfg.hello_timeout
        out.append(Send(target, ClientHello()))
        out.append(SetTimer(_RETRY, now + cfg.hello_timeout))
