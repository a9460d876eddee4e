"""Circuit breaker: a sans-IO state machine isolating a failing target.

States, as in the classic pattern:

- ``closed``: calls flow. Outcomes are counted in a sliding time window of
  ``window`` seconds (``buckets`` slices). When at least ``minimum_calls`` outcomes are
  in the window and the failure rate reaches ``failure_rate_threshold``, it opens.
- ``open``: calls are refused with :class:`~phoenix_trio.CircuitOpen` (carrying how long
  until a probe is allowed) for ``reset_timeout`` seconds.
- ``half_open``: up to ``half_open_probes`` calls go through as probes. When
  ``probes_to_close`` of them succeed it closes (with a fresh window); any failure
  reopens it for another ``reset_timeout``.

Time is passed in; nothing here reads a clock. Every transition is appended to
``transitions`` so a driver can emit observability events.
"""

from __future__ import annotations

from typing import Literal

import attrs

from ._errors import CircuitOpen, ConfigurationError

State = Literal["closed", "open", "half_open"]


@attrs.frozen(slots=True)
class BreakerConfig:
    failure_rate_threshold: float = 0.5
    minimum_calls: int = 10
    window: float = 10.0
    buckets: int = 10
    reset_timeout: float = 5.0
    half_open_probes: int = 1
    probes_to_close: int = 1

    def __attrs_post_init__(self) -> None:
        if not 0.0 < self.failure_rate_threshold <= 1.0:
            raise ConfigurationError("failure_rate_threshold must be in (0, 1]")
        if self.minimum_calls < 1 or self.buckets < 1 or self.half_open_probes < 1 or self.probes_to_close < 1:
            raise ConfigurationError("minimum_calls, buckets and probe counts must be at least 1")
        if self.window <= 0 or self.reset_timeout <= 0:
            raise ConfigurationError("window and reset_timeout must be positive")
        if self.probes_to_close > self.half_open_probes:
            raise ConfigurationError("probes_to_close cannot exceed half_open_probes")


@attrs.frozen(slots=True)
class Transition:
    at: float
    old: State
    new: State
    reason: str


@attrs.frozen(slots=True)
class BreakerStats:
    state: State
    calls_in_window: int
    failures_in_window: int
    failure_rate: float
    rejected: int
    opened: int


class CircuitBreaker:
    """One target's breaker. ``allow(now)`` before a call, then ``record_success``/``record_failure``."""

    def __init__(self, target: str, config: BreakerConfig | None = None) -> None:
        self.target = target
        self.config = config or BreakerConfig()
        self._state: State = "closed"
        self._bucket_width = self.config.window / self.config.buckets
        self._successes = [0] * self.config.buckets
        self._failures = [0] * self.config.buckets
        self._bucket_epoch = [-1] * self.config.buckets  # which time slice each bucket holds
        self._opened_at = 0.0
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._rejected = 0
        self._opened = 0
        self.transitions: list[Transition] = []

    # -- queries ----------------------------------------------------------------------

    def state(self, now: float) -> State:
        """The state at ``now`` (an open breaker past its timeout reads as half-open)."""
        if self._state == "open" and now - self._opened_at >= self.config.reset_timeout:
            return "half_open"
        return self._state

    def stats(self, now: float) -> BreakerStats:
        calls, failures = self._window_counts(now)
        return BreakerStats(
            self.state(now), calls, failures, failures / calls if calls else 0.0, self._rejected, self._opened
        )

    # -- inputs -----------------------------------------------------------------------

    def allow(self, now: float) -> None:
        """Permit one call or raise :class:`CircuitOpen`. A permitted half-open call is a probe."""
        if self._state == "open":
            remaining = self.config.reset_timeout - (now - self._opened_at)
            if remaining > 0:
                self._rejected += 1
                raise CircuitOpen(self.target, remaining)
            self._move("half_open", now, "reset timeout elapsed")
        if self._state == "half_open":
            if self._probes_in_flight >= self.config.half_open_probes:
                self._rejected += 1
                raise CircuitOpen(self.target, 0.0)
            self._probes_in_flight += 1

    def record_success(self, now: float) -> None:
        if self._state == "half_open":
            self._probes_in_flight = max(0, self._probes_in_flight - 1)
            self._probe_successes += 1
            if self._probe_successes >= self.config.probes_to_close:
                self._reset_window()
                self._move("closed", now, f"{self._probe_successes} probe(s) succeeded")
            return
        if self._state == "closed":
            self._count(now, failed=False)

    def record_failure(self, now: float) -> None:
        if self._state == "half_open":
            self._probes_in_flight = max(0, self._probes_in_flight - 1)
            self._open(now, "probe failed")
            return
        if self._state == "closed":
            self._count(now, failed=True)
            calls, failures = self._window_counts(now)
            if calls >= self.config.minimum_calls and failures / calls >= self.config.failure_rate_threshold:
                self._open(now, f"failure rate {failures}/{calls} in {self.config.window:g} s")

    def release_probe(self) -> None:
        """A probe ended without an outcome (cancelled): free its slot."""
        if self._state == "half_open":
            self._probes_in_flight = max(0, self._probes_in_flight - 1)

    # -- internals --------------------------------------------------------------------

    def _open(self, now: float, reason: str) -> None:
        self._opened_at = now
        self._opened += 1
        self._probe_successes = 0
        self._move("open", now, reason)

    def _move(self, new: State, now: float, reason: str) -> None:
        old = self._state
        self._state = new
        if new != "half_open":
            self._probes_in_flight = 0
        if new == "half_open":
            self._probe_successes = 0
        self.transitions.append(Transition(now, old, new, reason))
        if len(self.transitions) > 100:
            del self.transitions[:50]

    def _reset_window(self) -> None:
        n = self.config.buckets
        self._successes = [0] * n
        self._failures = [0] * n
        self._bucket_epoch = [-1] * n

    def _count(self, now: float, *, failed: bool) -> None:
        epoch = int(now // self._bucket_width)
        index = epoch % self.config.buckets
        if self._bucket_epoch[index] != epoch:
            self._bucket_epoch[index] = epoch
            self._successes[index] = 0
            self._failures[index] = 0
        if failed:
            self._failures[index] += 1
        else:
            self._successes[index] += 1

    def _window_counts(self, now: float) -> tuple[int, int]:
        current = int(now // self._bucket_width)
        oldest = current - self.config.buckets + 1
        calls = failures = 0
        for i, epoch in enumerate(self._bucket_epoch):
            if oldest <= epoch <= current:
                calls += self._successes[i] + self._failures[i]
                failures += self._failures[i]
        return calls, failures
