"""Raft members as real OS processes (``phoenix-trio raft``), for tests and benchmarks.

:class:`RaftProcess` is a :class:`~phoenix_trio._node_process.NodeProcess` that starts
``python -m phoenix_trio raft ...`` instead of ``node``; it follows the same JSON event
lines, plus ``raft_role``. ``prefix`` (e.g. ``["ip", "netns", "exec", "ns1"]``) runs the
process inside a network namespace.
"""

from __future__ import annotations

import sys
from typing import Any

import trio

from .._node_process import NodeProcess


class RaftProcess(NodeProcess):
    data_dir: str  # required here (optional for a plain node)

    def __init__(
        self,
        name: str,
        *,
        members: list[str],
        data_dir: str,
        group: str = "kv",
        election_timeout: float = 0.3,
        raft_heartbeat: float = 0.05,
        fsync: bool = True,
        tob: list[str] | tuple[str, ...] = (),
        prefix: list[str] | tuple[str, ...] = (),
        extra: list[str] | tuple[str, ...] = (),
        **options: Any,
    ) -> None:
        super().__init__(name, **options)
        self.members = list(members)
        self.data_dir = data_dir
        self.group = group
        self.election_timeout = election_timeout
        self.raft_heartbeat = raft_heartbeat
        self.fsync = fsync
        self.tob = list(tob)
        self.prefix = list(prefix)
        self.extra = list(extra)

    def command(self) -> list[str]:
        cmd = [*self.prefix, sys.executable, "-m", "phoenix_trio", "raft", "--name", self.name, "--listen", self.listen]
        cmd += ["--members", ",".join(self.members), "--data-dir", self.data_dir, "--group", self.group]
        cmd += ["--election-timeout", str(self.election_timeout), "--raft-heartbeat", str(self.raft_heartbeat)]
        cmd += ["--failure-timeout", str(self.failure_timeout), "--heartbeat-interval", str(self.heartbeat)]
        if not self.fsync:
            cmd.append("--no-fsync")
        for seed in self.seeds:
            cmd += ["--seed", seed]
        for name in self.tob:
            cmd += ["--tob", name]
        return cmd + self.extra

    async def wait_for_role(
        self, role: str, *, min_term: int = 0, timeout: float = 10.0, with_leader: bool = False
    ) -> dict[str, Any]:
        """The first ``raft_role`` event with ``role`` in a term >= ``min_term`` (waiting if needed);
        with ``with_leader``, only one that names a known leader."""
        assert self._lines is not None

        def matches(event: dict[str, Any]) -> bool:
            return (
                event.get("event") == "raft_role"
                and event.get("role") == role
                and event.get("term", 0) >= min_term
                and (not with_leader or event.get("leader") is not None)
            )

        for event in self.events:
            if matches(event):
                return event
        with trio.fail_after(timeout):
            async for event in self._lines:
                if matches(event):
                    return event
        raise RuntimeError(f"{self.name} exited before becoming {role}")

    def latest_role(self) -> dict[str, Any] | None:
        roles = [e for e in self.events if e.get("event") == "raft_role"]
        return roles[-1] if roles else None
