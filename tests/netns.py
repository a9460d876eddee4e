"""Network namespaces that a test makes for itself, for faults that must cross a network.

``with network(names) as net`` creates one namespace per name (``net.ns(name)``, address
``net.address[name]`` on eth0) and a hub namespace with two bridges, ``br0`` and
``br1``; every node's veth starts on ``br0``. A fault is a change in the hub:
``net.cut(name)`` / ``net.heal(name)`` take one node's link down and up (it hears
nobody), ``net.move(names, "br1")`` moves a group to the other bridge (the group still
hears itself, not the rest) and ``net.move(names, "br0")`` heals that. Everything is
deleted on exit. Needs root and iproute2; the test skips with the reason otherwise
(CI runs as root, where a skip fails the run).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Network:
    """Namespaces ``<tag>-<i>`` with address ``<subnet>.<i + 1>``, bridged in ``<tag>-hub``."""

    def __init__(self, names: list[str], subnet: str) -> None:
        self.tag = "pxn" + secrets.token_hex(3)
        self.names = list(names)
        self.hub = f"{self.tag}-hub"
        self.address = {name: f"{subnet}.{i + 1}" for i, name in enumerate(names)}
        self.created: list[str] = []

    def ns(self, name: str) -> str:
        return f"{self.tag}-{self.names.index(name)}"

    def port(self, name: str) -> str:
        return f"v{self.tag[3:]}{self.names.index(name)}"  # interface names: at most 15 characters

    def up(self) -> None:
        _ip("netns", "add", self.hub)
        self.created.append(self.hub)
        for bridge in ("br0", "br1"):
            _ip("-n", self.hub, "link", "add", bridge, "type", "bridge")
            _ip("-n", self.hub, "link", "set", bridge, "up")
        for name in self.names:
            ns = self.ns(name)
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.hub, "link", "add", self.port(name), "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.hub, "link", "set", self.port(name), "master", "br0")
            _ip("-n", self.hub, "link", "set", self.port(name), "up")
            _ip("-n", ns, "addr", "add", f"{self.address[name]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def cut(self, name: str) -> None:
        _ip("-n", self.hub, "link", "set", self.port(name), "down")

    def heal(self, name: str) -> None:
        _ip("-n", self.hub, "link", "set", self.port(name), "up")

    def move(self, names: list[str], bridge: str) -> None:
        for name in names:
            _ip("-n", self.hub, "link", "set", self.port(name), "master", bridge)

    def down(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created = []


@contextmanager
def network(names: list[str], *, subnet: str = "10.231.0") -> Iterator[Network]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 ('ip') is not installed")
    net = Network(names, subnet)
    try:
        net.up()
        yield net
    finally:
        net.down()
