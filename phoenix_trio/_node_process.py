"""Run phoenix_trio nodes as real OS processes: for the demo, tests and benchmarks.

:class:`NodeProcess` starts ``python -m phoenix_trio node ...`` and follows its JSON
event lines on stdout (``listening``, ``member_joined``, ...), so a test waits on the
event it needs instead of sleeping. With ``stdin=True`` the node reads commands
(``--commands``): :meth:`NodeProcess.call` sends one and returns its ``reply`` event.
``prefix`` (e.g. ``["ip", "netns", "exec", "ns1"]``) runs the node inside something.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import trio


async def _kill(process: trio.Process) -> None:
    process.kill()


class NodeProcess:
    def __init__(
        self,
        name: str,
        *,
        seeds: list[str] | tuple[str, ...] = (),
        agents: list[str] | tuple[str, ...] = (),
        failure_timeout: float = 1.0,
        heartbeat: float = 0.2,
        listen: str = "127.0.0.1:0",
        data_dir: str | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        prefix: list[str] | tuple[str, ...] = (),
        stdin: bool = False,
    ) -> None:
        self.name = name
        self.seeds = list(seeds)
        self.agents = list(agents)
        self.failure_timeout = failure_timeout
        self.heartbeat = heartbeat
        self.listen = listen
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.prefix = list(prefix)
        self.stdin = stdin
        self._refs = itertools.count(1)
        self._arrived = trio.lowlevel.ParkingLot()
        self._ended = False
        self.process: trio.Process | None = None
        self.address: str | None = None
        self.events: list[dict[str, Any]] = []
        self._lines: trio.MemoryReceiveChannel[dict[str, Any]] | None = None
        self._buffer = b""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> list[str]:
        cmd = [*self.prefix, sys.executable, "-m", "phoenix_trio", "node", "--name", self.name, "--listen", self.listen]
        cmd += ["--failure-timeout", str(self.failure_timeout), "--heartbeat-interval", str(self.heartbeat)]
        for seed in self.seeds:
            cmd += ["--seed", seed]
        for agent in self.agents:
            cmd += ["--agent", agent]
        if self.data_dir is not None:
            cmd += ["--data-dir", self.data_dir]
        if self.stdin:
            cmd.append("--commands")
        return cmd + self.extra_args

    async def start(self, nursery: trio.Nursery, timeout: float = 20.0) -> NodeProcess:
        """Start the process under ``nursery`` (cancelling it kills the process) and wait until it listens."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = await nursery.start(
            partial(
                trio.run_process,
                self.command(),
                stdin=subprocess.PIPE if self.stdin else None,
                stdout=subprocess.PIPE,
                env=env,
                check=False,
                deliver_cancel=_kill,
            )
        )
        send, receive = trio.open_memory_channel[dict[str, Any]](1000)
        self._lines = receive
        nursery.start_soon(self._pump, send)
        event = await self.wait_for("listening", timeout=timeout)
        self.address = event["address"]
        return self

    async def _pump(self, send: trio.MemorySendChannel[dict[str, Any]]) -> None:
        try:
            await self._pump_lines(send)
        finally:
            self._ended = True
            self._arrived.unpark_all()

    async def _pump_lines(self, send: trio.MemorySendChannel[dict[str, Any]]) -> None:
        assert self.process is not None and self.process.stdout is not None
        async with send:
            while True:
                try:
                    chunk = await self.process.stdout.receive_some(65536)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return
                if not chunk:
                    return
                self._buffer += chunk
                while b"\n" in self._buffer:
                    line, self._buffer = self._buffer.split(b"\n", 1)
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    self.events.append(event)
                    self._arrived.unpark_all()
                    try:
                        send.send_nowait(event)
                    except trio.WouldBlock:
                        pass

    async def wait_for(self, kind: str, *, node: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """The first event of ``kind`` (about ``node``) this process printed, waiting for it if needed."""
        assert self._lines is not None
        for event in self.events:
            if event.get("event") == kind and (node is None or event.get("node") == node):
                return event
        with trio.fail_after(timeout):
            async for event in self._lines:
                if event.get("event") == kind and (node is None or event.get("node") == node):
                    return event
        raise RuntimeError(f"{self.name} exited before {kind}")

    async def wait_until(self, predicate: Callable[[list[dict[str, Any]]], Any], *, timeout: float = 10.0) -> Any:
        """Wait until ``predicate(events so far)`` is true (checked on every new event); returns its value."""
        with trio.fail_after(timeout):
            while True:
                value = predicate(self.events)
                if value:
                    return value
                if self._ended:
                    raise RuntimeError(f"{self.name} exited")
                await self._arrived.park()

    async def next_event(self) -> None:
        """Return when the process prints its next event line (or has exited)."""
        if not self._ended:
            await self._arrived.park()

    async def call(self, op: str, *, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Send one command (``--commands``) and return its ``reply`` event."""
        assert self.process is not None and self.process.stdin is not None, "start with stdin=True"
        ref = next(self._refs)
        await self.process.stdin.send_all((json.dumps({"op": op, "ref": ref, **fields}) + "\n").encode())
        reply: dict[str, Any] = await self.wait_until(
            lambda events: next((e for e in reversed(events) if e.get("event") == "reply" and e.get("ref") == ref), None),
            timeout=timeout,
        )
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {op} failed: {reply['error']}")
        return reply

    def kill(self) -> None:
        """SIGKILL: no goodbye, no cleanup, like a crash."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(timeout):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        return self.process.returncode

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")
