"""The agent directory: which node hosts which agent, and which agents form each group.

Each node is the authority for its own agents and tells its peers about them (a full
list when a connection opens, then each change). When a node dies or leaves, its
entries become *tombstones* for a while, so a send to one of its agents fails with
:class:`~phoenix_trio.NodeUnreachable` (the node is gone) rather than
:class:`~phoenix_trio.AgentNotFound` (nobody ever had it). Tombstones are bounded in
number and age.

If two nodes claim the same agent id, the local agent wins on its own node and the
most recent claim wins elsewhere; a warning is logged.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import attrs

from ._errors import AgentNotFound, NodeUnreachable

log = logging.getLogger(__name__)

MAX_TOMBSTONES = 10_000
TOMBSTONE_TTL = 300.0


@attrs.frozen(slots=True)
class Location:
    """Where an agent lives: ``node`` is None for this node."""

    agent_id: str
    node: str | None


class Directory:
    def __init__(self, local_node: str) -> None:
        self.local_node = local_node
        self.local: dict[str, str | None] = {}  # agent id -> group
        self.remote: dict[str, tuple[str, str | None]] = {}  # agent id -> (node, group)
        self.groups: dict[str, set[str]] = {}
        self.by_node: dict[str, set[str]] = {}
        self._tombstones: OrderedDict[str, tuple[str, float]] = OrderedDict()

    # -- local agents ---------------------------------------------------------------------

    def add_local(self, agent_id: str, group: str | None) -> None:
        self.local[agent_id] = group
        self._tombstones.pop(agent_id, None)
        if group is not None:
            self.groups.setdefault(group, set()).add(agent_id)

    def remove_local(self, agent_id: str) -> None:
        group = self.local.pop(agent_id, None)
        self._leave_group(agent_id, group)

    # -- remote agents --------------------------------------------------------------------

    def update_remote(self, node: str, agent_id: str, group: str | None, up: bool) -> None:
        if up:
            if agent_id in self.local:
                log.warning("node %s also claims agent %r, which lives here; keeping ours", node, agent_id)
            previous = self.remote.get(agent_id)
            if previous is not None and previous[0] != node:
                log.warning("agent %r moved from node %s to %s", agent_id, previous[0], node)
                self._forget_remote(agent_id)
            self.remote[agent_id] = (node, group)
            self.by_node.setdefault(node, set()).add(agent_id)
            self._tombstones.pop(agent_id, None)
            if group is not None:
                self.groups.setdefault(group, set()).add(agent_id)
        elif self.remote.get(agent_id, (None,))[0] == node:
            self._forget_remote(agent_id)

    def replace_node(self, node: str, agents: list[tuple[str, str | None]]) -> None:
        """``node`` sent its full agent list: make the directory match it."""
        for agent_id in list(self.by_node.get(node, ())):
            self._forget_remote(agent_id)
        for agent_id, group in agents:
            self.update_remote(node, agent_id, group, True)

    def node_gone(self, node: str, now: float) -> list[str]:
        """``node`` died or left: its agents become tombstones. Returns their ids."""
        agents = list(self.by_node.get(node, ()))
        for agent_id in agents:
            self._forget_remote(agent_id)
            self._tombstones[agent_id] = (node, now)
            self._tombstones.move_to_end(agent_id)
        while len(self._tombstones) > MAX_TOMBSTONES:
            self._tombstones.popitem(last=False)
        return agents

    def _forget_remote(self, agent_id: str) -> None:
        entry = self.remote.pop(agent_id, None)
        if entry is None:
            return
        node, group = entry
        agents = self.by_node.get(node)
        if agents is not None:
            agents.discard(agent_id)
            if not agents:
                del self.by_node[node]
        self._leave_group(agent_id, group)

    def _leave_group(self, agent_id: str, group: str | None) -> None:
        if group is None:
            return
        members = self.groups.get(group)
        if members is not None:
            members.discard(agent_id)
            if not members:
                del self.groups[group]

    # -- lookups --------------------------------------------------------------------------

    def locate(self, agent_id: str, now: float) -> Location:
        """Where ``agent_id`` lives; raises AgentNotFound or NodeUnreachable (tombstone)."""
        if agent_id in self.local:
            return Location(agent_id, None)
        entry = self.remote.get(agent_id)
        if entry is not None:
            return Location(agent_id, entry[0])
        tomb = self._tombstones.get(agent_id)
        if tomb is not None:
            node, since = tomb
            if now - since <= TOMBSTONE_TTL:
                raise NodeUnreachable(node, f"node hosting agent {agent_id!r} is down")
            del self._tombstones[agent_id]
        raise AgentNotFound(agent_id)

    def group_members(self, name: str) -> list[str]:
        members = self.groups.get(name)
        return sorted(members) if members else []

    def agents(self) -> dict[str, str]:
        """Every known agent and its node id (this node's agents under its own id)."""
        known = {agent_id: node for agent_id, (node, _) in self.remote.items()}
        known.update({agent_id: self.local_node for agent_id in self.local})
        return known
