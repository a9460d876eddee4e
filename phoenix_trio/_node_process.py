"""Run phoenix_trio nodes as real OS processes: for the demo, tests and benchmarks.

:class:`NodeProcess` starts ``python -m phoenix_trio node ...`` and follows its JSON
event lines on stdout (``listening``, ``member_joined``, ...), so a test waits on the
event it needs instead of sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
    ) -> None:
        self.name = name
        self.seeds = list(seeds)
        self.agents = list(agents)
        self.failure_timeout = failure_timeout
        self.heartbeat = heartbeat
        self.listen = listen
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
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
        cmd = [sys.executable, "-m", "phoenix_trio", "node", "--name", self.name, "--listen", self.listen]
        cmd += ["--failure-timeout", str(self.failure_timeout), "--heartbeat-interval", str(self.heartbeat)]
        for seed in self.seeds:
            cmd += ["--seed", seed]
        for agent in self.agents:
            cmd += ["--agent", agent]
        if self.data_dir is not None:
            cmd += ["--data-dir", self.data_dir]
        return cmd + self.extra_args

    async def start(self, nursery: trio.Nursery, timeout: float = 20.0) -> NodeProcess:
        """Start the process under ``nursery`` (cancelling it kills the process) and wait until it listens."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = await nursery.start(
            partial(trio.run_process, self.command(), stdout=subprocess.PIPE, env=env, check=False, deliver_cancel=_kill)
        )
        send, receive = trio.open_memory_channel[dict[str, Any]](1000)
        self._lines = receive
        nursery.start_soon(self._pump, send)
        event = await self.wait_for("listening", timeout=timeout)
        self.address = event["address"]
        return self

    async def _pump(self, send: trio.MemorySendChannel[dict[str, Any]]) -> None:
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
