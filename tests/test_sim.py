"""The deterministic network simulation that drives every sans-IO core in tests."""

from __future__ import annotations

from phoenix_trio.effects import CancelTimer, Send, SetTimer
from phoenix_trio.sim import Simulation


class Pinger:
    """Sends a numbered ping to each peer every 0.1 s; records what it receives."""

    def __init__(self, name: str, peers: list[str]) -> None:
        self.name = name
        self.peers = peers
        self.count = 0
        self.received: list[tuple[str, int, float]] = []

    def start(self, now: float):
        return [SetTimer("tick", now + 0.1)]

    def timer(self, key, now: float):
        self.count += 1
        return [Send(p, self.count) for p in self.peers] + [SetTimer("tick", now + 0.1)]

    def receive(self, sender, message, now: float):
        self.received.append((sender, message, round(now, 9)))
        return []


def build(seed: int, **kw) -> tuple[Simulation, dict[str, Pinger]]:
    sim = Simulation(seed=seed, **kw)
    names = ["a", "b", "c"]
    nodes = {n: Pinger(n, [p for p in names if p != n]) for n in names}
    for n, node in nodes.items():
        sim.add(n, node)
    return sim, nodes


def test_same_seed_same_run_different_seed_different_run() -> None:
    runs = []
    for seed in (1, 1, 2):
        sim, nodes = build(seed, loss=0.2, duplicate=0.1, latency=(0.001, 0.3))
        sim.run(until=5.0)
        runs.append([nodes[n].received for n in "abc"])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_loss_duplication_and_reordering_happen() -> None:
    sim, nodes = build(3, loss=0.3, duplicate=0.2, latency=(0.001, 0.5))
    sim.run(until=10.0)
    assert sim.stats.lost > 0 and sim.stats.duplicated > 0
    from_b = [m for s, m, _ in nodes["a"].received if s == "b"]
    assert from_b != sorted(from_b)  # reordered
    assert len(from_b) != len(set(from_b))  # duplicated


def test_partition_one_way_block_and_heal() -> None:
    sim, nodes = build(4)
    sim.partition(["a"], ["b", "c"])
    sim.run(until=1.0)
    assert all(s == "c" for s, _, _ in nodes["b"].received)
    assert nodes["a"].received == []
    sim.heal()
    sim.block("a", "b")
    mark = len(nodes["a"].received)
    sim.run(until=2.0)
    assert {s for s, _, _ in nodes["a"].received[mark:]} == {"b", "c"}
    assert all(s != "a" for s, _, t in nodes["b"].received if t > 1.0)


def test_crash_kills_timers_and_restart_starts_fresh() -> None:
    sim, nodes = build(5)
    sim.run(until=1.0)
    sim.crash("a")
    count_at_crash = nodes["a"].count
    sim.run(until=2.0)
    assert nodes["a"].count == count_at_crash
    assert sim.stats.to_dead > 0
    fresh = Pinger("a", ["b", "c"])
    sim.restart("a", fresh)
    sim.run(until=3.0)
    assert fresh.count >= 9 and fresh.received


def test_timers_replace_and_cancel() -> None:
    fired: list[tuple[str, float]] = []

    class Node:
        def start(self, now):
            return [SetTimer("x", 5.0), SetTimer("x", 1.0), SetTimer("y", 2.0), CancelTimer("y")]

        def timer(self, key, now):
            fired.append((key, now))
            return []

        def receive(self, sender, message, now):
            return []

    sim = Simulation(seed=0)
    sim.add("n", Node())
    sim.run(until=10.0)
    assert fired == [("x", 1.0)]


def test_custom_effects_and_run_until() -> None:
    seen = []

    class Node:
        def timer(self, key, now):
            return []

        def receive(self, sender, message, now):
            return [("custom", message)]

    sim = Simulation(seed=0, on_effect=lambda node, effect: seen.append((node, effect)))
    sim.add("a", Node())
    sim.add("b", Node())
    sim.deliver_now("a", "b", "hello")
    assert sim.run_until(lambda: bool(seen), timeout=1.0)
    assert seen == [("b", ("custom", "hello"))]
    sim.call("a", lambda now: [Send("b", "again")])
    assert sim.run_until(lambda: len(seen) == 2, timeout=1.0)
    assert not sim.run_until(lambda: len(seen) == 3, timeout=1.0)
