"""Load balancing across the agents of a group (several agents behind one name).

A strategy picks one candidate from a group using per-candidate statistics the node
keeps up to date: requests outstanding and an exponentially weighted moving average of
latency. The default, :class:`PowerOfTwoChoices`, samples two candidates at random and
takes the one with the lower cost ``(outstanding + 1) * latency_ewma`` (Mitzenmacher's
"power of two choices", as Finagle and Envoy use it): nearly as good as least-loaded,
without herding onto one target. :class:`RoundRobin` and :class:`RandomChoice` are the
simple alternatives; any object with a ``choose(candidates, stats, rng)`` method works.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Protocol

import attrs

DEFAULT_LATENCY = 0.001  # seconds assumed for a candidate never measured
EWMA_ALPHA = 0.3


@attrs.define(slots=True)
class CandidateStats:
    """What the balancer knows about one candidate."""

    outstanding: int = 0
    latency_ewma: float = DEFAULT_LATENCY
    completed: int = 0
    failures: int = 0

    def started(self) -> None:
        self.outstanding += 1

    def finished(self, latency: float | None, *, failed: bool = False) -> None:
        self.outstanding = max(0, self.outstanding - 1)
        if failed:
            self.failures += 1
            # A failure counts as slow: steer away from it for a while.
            latency = max(latency or 0.0, self.latency_ewma * 4)
        if latency is not None:
            self.latency_ewma += EWMA_ALPHA * (latency - self.latency_ewma)
        self.completed += 1

    @property
    def cost(self) -> float:
        return (self.outstanding + 1) * self.latency_ewma


class Strategy(Protocol):
    def choose(self, candidates: Sequence[str], stats: Mapping[str, CandidateStats], rng: random.Random) -> str: ...


class PowerOfTwoChoices:
    """Two random candidates, the cheaper one wins."""

    def choose(self, candidates: Sequence[str], stats: Mapping[str, CandidateStats], rng: random.Random) -> str:
        if len(candidates) == 1:
            return candidates[0]
        a, b = rng.sample(range(len(candidates)), 2)
        first, second = candidates[a], candidates[b]
        cost_a = stats[first].cost if first in stats else DEFAULT_LATENCY
        cost_b = stats[second].cost if second in stats else DEFAULT_LATENCY
        return first if cost_a <= cost_b else second


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Sequence[str], stats: Mapping[str, CandidateStats], rng: random.Random) -> str:
        choice = candidates[self._next % len(candidates)]
        self._next += 1
        return choice


class RandomChoice:
    def choose(self, candidates: Sequence[str], stats: Mapping[str, CandidateStats], rng: random.Random) -> str:
        return candidates[rng.randrange(len(candidates))]


class LoadBalancer:
    """Picks group members with a strategy and keeps their statistics (bounded by live members)."""

    def __init__(self, strategy: Strategy | None = None, *, rng: random.Random | None = None) -> None:
        self.strategy: Strategy = strategy or PowerOfTwoChoices()
        self.rng = rng or random.Random()
        self.stats: dict[str, CandidateStats] = {}

    def choose(self, candidates: Sequence[str]) -> str:
        if not candidates:
            raise ValueError("no candidates")
        return self.strategy.choose(candidates, self.stats, self.rng)

    def stats_for(self, candidate: str) -> CandidateStats:
        stats = self.stats.get(candidate)
        if stats is None:
            stats = self.stats[candidate] = CandidateStats()
        return stats

    def forget(self, candidate: str) -> None:
        self.stats.pop(candidate, None)
