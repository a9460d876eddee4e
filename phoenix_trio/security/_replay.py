"""Replay protection: a timestamp window and the nonces accepted within it (sans-IO).

A message is fresh when its authenticated timestamp is within ``window`` seconds of the
verifier's clock (either side, so small clock skew is tolerated) and its nonce has not
been accepted before. Nonces are remembered, indexed by their message's timestamp, only
as long as that timestamp is inside the window: anything older is refused by the
timestamp check anyway, so the cache holds at most the nonces of one window.

Memory is bounded by ``max_entries``. When a burst fills the cache before its entries
age out, the oldest entries are dropped and the *floor* rises to the newest timestamp
dropped: from then on, messages stamped at or before the floor are refused as out of
window. So a full cache shortens the effective window; it never lets a replay through. The
floor also rises as entries age out, so a verifier clock that steps backwards cannot
revive a forgotten nonce either: the rule is always "refuse anything stamped at or
before the newest timestamp forgotten". Time is always passed in (seconds since the
epoch).
"""

from __future__ import annotations

import heapq

from .._errors import ConfigurationError


class ReplayGuard:
    """See the module docstring."""

    def __init__(self, window: float = 300.0, max_entries: int = 100_000) -> None:
        if not window > 0:
            raise ConfigurationError("the replay window must be positive")
        if max_entries < 1:
            raise ConfigurationError("max_entries must be at least 1")
        self.window = float(window)
        self.max_entries = max_entries
        self.floor = float("-inf")
        self._seen: dict[bytes, float] = {}
        self._by_time: list[tuple[float, bytes]] = []

    def window_problem(self, timestamp: float, now: float) -> str | None:
        """Why ``timestamp`` is not acceptable at ``now``, or None when it is."""
        if timestamp < now - self.window:
            return f"timestamp is {now - timestamp:.3f} s old; the window is {self.window:g} s"
        if timestamp > now + self.window:
            return f"timestamp is {timestamp - now:.3f} s ahead; the window is {self.window:g} s"
        if timestamp <= self.floor:
            return "timestamp is older than the replay cache can vouch for (cache full)"
        return None

    def seen(self, nonce: bytes) -> bool:
        return nonce in self._seen

    def record(self, nonce: bytes, timestamp: float, now: float) -> bool:
        """Remember an accepted nonce; False (and nothing recorded) if it was already seen."""
        self.prune(now)
        if nonce in self._seen:
            return False
        while len(self._seen) >= self.max_entries:
            oldest, old_nonce = heapq.heappop(self._by_time)
            del self._seen[old_nonce]
            if oldest > self.floor:
                self.floor = oldest
        self._seen[nonce] = timestamp
        heapq.heappush(self._by_time, (timestamp, nonce))
        return True

    def prune(self, now: float) -> None:
        """Forget nonces whose timestamps have left the window."""
        horizon = now - self.window
        heap = self._by_time
        while heap and heap[0][0] < horizon:
            timestamp, nonce = heapq.heappop(heap)
            del self._seen[nonce]
            if timestamp > self.floor:  # a clock that steps back must not revive forgotten nonces
                self.floor = timestamp

    def __len__(self) -> int:
        return len(self._seen)
