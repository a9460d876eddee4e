"""Retry schedules for delivery guarantees: how long to wait before the next attempt.

The design's retry strategies, as pure functions of the attempt number and a seeded
random generator (nothing here reads a clock):

- ``exponential_backoff``: full jitter (AWS's "exponential backoff and jitter"): a delay
  drawn uniformly from ``[0, min(cap, base * 2**attempt)]``, so retrying senders spread
  out instead of returning in waves;
- ``linear_backoff``: ``base * (attempt + 1)``, capped;
- ``fixed``: ``base`` every time;
- ``none``: no retries at all.

An attempt is one send followed by waiting ``timeout`` for its acknowledgement; after
``max_retries`` further attempts the delivery fails with
:class:`~phoenix_trio.DeliveryFailed`.
"""

from __future__ import annotations

import random

import attrs

from ._errors import ConfigurationError
from ._message import RETRY_STRATEGIES, DeliveryGuarantee


@attrs.frozen(slots=True)
class RetryPolicy:
    strategy: str = "exponential_backoff"
    timeout: float = 5.0  # seconds to wait for an acknowledgement
    max_retries: int = 3
    base: float = 0.05  # seconds
    cap: float = 10.0  # seconds

    def __attrs_post_init__(self) -> None:
        if self.strategy not in RETRY_STRATEGIES:
            raise ConfigurationError(f"retry strategy must be one of {', '.join(RETRY_STRATEGIES)}")
        if self.timeout <= 0 or self.base < 0 or self.cap < 0 or self.max_retries < 0:
            raise ConfigurationError("timeout must be positive; base, cap and max_retries not negative")

    @classmethod
    def from_guarantee(cls, guarantee: DeliveryGuarantee, *, base: float = 0.05, cap: float = 10.0) -> RetryPolicy:
        """The policy a message's delivery record asks for (its timeout is in milliseconds)."""
        retries = 0 if guarantee.retry_strategy == "none" else guarantee.max_retries
        return cls(guarantee.retry_strategy, max(guarantee.timeout, 1) / 1000.0, retries, base, cap)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        if self.strategy == "exponential_backoff":
            return rng.uniform(0.0, min(self.cap, self.base * (2 ** min(attempt, 60))))
        if self.strategy == "linear_backoff":
            return min(self.cap, self.base * (attempt + 1))
        if self.strategy == "fixed":
            return self.base
        return 0.0

    def gives_up_after(self, attempts: int) -> bool:
        """True once ``attempts`` sends have been made and none may follow."""
        return attempts > self.max_retries
