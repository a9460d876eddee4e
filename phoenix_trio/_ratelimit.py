"""Rate limiting: token buckets by id on the C core, a sliding-window limiter, adaptive throttling.

:class:`RateLimiter` is the design's ``Phoenix.RateLimit`` registry: buckets by id.

- ``create_bucket(bucket_id, capacity, refill_rate)``: a token bucket of the C core
  (:class:`phoenix_trio.core.TokenBucket`): at most ``capacity`` tokens (the burst),
  refilled at ``refill_rate`` tokens per second, starting full. ``distributed=True``
  needs a limiter opened on a node (:func:`~phoenix_trio._ratelimit_node.open_rate_limiter`):
  then all the nodes sharing the bucket together respect one capacity and rate (see
  that module for the lease scheme).
- ``create_window(bucket_id, limit, window, sub_windows=10)``: a
  :class:`SlidingWindow` limiter under the same API.
- ``acquire_tokens(bucket_id, n)`` takes ``n`` tokens if it can: ``0.0`` means granted
  (the design's ``{:ok, :tokens_acquired}``); otherwise nothing is taken and the result
  is the number of seconds after which ``n`` tokens could be granted if nobody else took
  any (the design's ``{:error, :insufficient_tokens, current}``; ``available(bucket_id)``
  gives ``current``). Not a checkpoint: it never blocks.
- ``try_acquire(bucket_id, n)``: the same, raising :class:`RateLimited` (with
  ``retry_after`` and ``available``) instead of returning a wait.
- ``await acquire(bucket_id, n)``: waits until granted (a checkpoint; cancellation
  leaves nothing taken). Waiters are not queued: after each wait they try again, so
  under contention the order among them is not FIFO.

Unknown ids raise :class:`BucketNotFound` (the design's ``{:error, :bucket_not_found}``);
``n`` above a bucket's capacity (or a window's limit) raises
:class:`~phoenix_trio.ConfigurationError`: it could never be granted.

Time is ``trio.current_time()`` by default (so ``trio.testing.MockClock`` drives it);
pass ``clock=`` for another monotonic clock. On the fast path ``acquire_tokens`` on a
token bucket is one dict lookup, one clock read and one cffi call.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio

from . import core
from ._errors import ConfigurationError, PhoenixError


class RateLimited(PhoenixError):
    """``bucket_id`` cannot grant the tokens now; ``retry_after`` seconds until it could."""

    def __init__(self, bucket_id: str, retry_after: float, available: float) -> None:
        super().__init__(f"rate limited on {bucket_id!r}: retry after {retry_after:.3f} s ({available:g} available)")
        self.bucket_id = bucket_id
        self.retry_after = retry_after
        self.available = available


class BucketNotFound(PhoenixError, KeyError):
    """No bucket or window with this id is registered in the limiter."""

    def __init__(self, bucket_id: str) -> None:
        super().__init__(f"no rate-limit bucket {bucket_id!r}")
        self.bucket_id = bucket_id

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class _Limit(Protocol):
    def acquire(self, n: float, now: float) -> float: ...

    def available(self, now: float) -> float: ...


# -- sliding window ---------------------------------------------------------------------------


class SlidingWindow:
    """At most ``limit`` events in any interval of ``window`` seconds (sliding-window counter).

    The window is split into ``sub_windows`` slots of ``window / sub_windows`` seconds,
    each with a counter (memory: ``sub_windows + 1`` counters, whatever the rate). An
    acquisition of ``n`` at time ``t`` counts every slot that overlaps ``(t - window, t]``,
    including the whole of the oldest, partly covered slot, and succeeds when that count
    plus ``n`` is at most ``limit``.

    Error bound: the count covers every event of the last ``window`` seconds, so the
    limiter **never admits more than ``limit`` in any interval of length ``window``**
    (exact upper bound, unlike the interpolating sliding counter, which can admit up to
    twice the limit). It may refuse early: the oldest slot's events may lie up to one
    slot before the window, so it behaves like a window between ``window`` and
    ``window * (1 + 1/sub_windows)``; at a steady rate it admits at least
    ``limit * sub_windows / (sub_windows + 1)`` per ``window`` (``limit`` with a sliding log).

    Time is passed in. ``set_limit`` changes the limit at once (adaptive throttling).
    """

    __slots__ = ("limit", "window", "sub_windows", "_width", "_slots", "_count")

    def __init__(self, limit: int, window: float, *, sub_windows: int = 10) -> None:
        if not (isinstance(limit, int) and limit >= 1):
            raise ConfigurationError("a sliding window's limit is an int >= 1")
        if not (math.isfinite(window) and window > 0) or not (isinstance(sub_windows, int) and 1 <= sub_windows <= 10_000):
            raise ConfigurationError("a sliding window needs window > 0 and 1 <= sub_windows <= 10000")
        self.limit = limit
        self.window = float(window)
        self.sub_windows = sub_windows
        self._width = self.window / sub_windows
        self._slots: deque[list[int]] = deque()  # [slot index, count], oldest first
        self._count = 0

    def _expire(self, now: float) -> None:
        oldest = math.floor((now - self.window) / self._width)
        slots = self._slots
        while slots and slots[0][0] < oldest:
            self._count -= slots.popleft()[1]

    def count(self, now: float) -> int:
        """Events counted for the window ending at ``now``."""
        self._expire(now)
        return self._count

    def available(self, now: float) -> float:
        return float(max(0, self.limit - self.count(now)))

    def acquire(self, n: float, now: float) -> float:
        """Record ``n`` events if allowed: 0.0, else the seconds until they would be."""
        if not (n >= 0 and n <= self.limit) or n != int(n):
            raise ConfigurationError(f"cannot acquire {n} from a sliding window limited to {self.limit}")
        n = int(n)
        self._expire(now)
        if self._count + n <= self.limit:
            if n:
                slot = math.floor(now / self._width)
                slots = self._slots
                if slots and slots[-1][0] >= slot:
                    slots[-1][1] += n  # same slot (or a clock that stepped back a hair)
                else:
                    slots.append([slot, n])
                self._count += n
            return 0.0
        excess = self._count + n - self.limit
        for index, count in self._slots:
            excess -= count
            if excess <= 0:
                # That slot stops being counted once now - window reaches its end (rounded
                # up to the first float time at which _expire agrees).
                wait = (index + 1) * self._width + self.window - now
                while math.floor((now + wait - self.window) / self._width) <= index:
                    wait = math.nextafter(wait, math.inf)
                return wait
        return self.window  # unreachable: the slots hold the whole count

    def set_limit(self, limit: int) -> None:
        if not (isinstance(limit, int) and limit >= 1):
            raise ConfigurationError("a sliding window's limit is an int >= 1")
        self.limit = limit


class AdaptiveThrottle:
    """Client-side adaptive throttling (Google SRE book, "Handling Overload"), on sliding windows.

    Over the last ``window`` seconds the client counts ``requests`` (attempts) and
    ``accepts`` (those the backend accepted). A new request is rejected locally with
    probability ``max(0, (requests - k * accepts) / (requests + 1))``: while the backend
    accepts everything nothing is throttled; when it starts refusing, the client sheds
    the excess itself instead of sending it. ``k`` (default 2) sets how much more than
    the accepted rate may still be tried. Counts use :class:`SlidingWindow`-style slots
    (the same error bound: up to one slot of extra history). Randomness comes from the
    ``random.Random`` passed in.
    """

    def __init__(self, *, window: float = 120.0, k: float = 2.0, sub_windows: int = 12, rng: random.Random) -> None:
        if k < 1.0:
            raise ConfigurationError("k must be at least 1")
        big = 1 << 62
        self.k = k
        self._requests = SlidingWindow(big, window, sub_windows=sub_windows)
        self._accepts = SlidingWindow(big, window, sub_windows=sub_windows)
        self._rng = rng

    def reject_probability(self, now: float) -> float:
        requests = self._requests.count(now)
        return max(0.0, (requests - self.k * self._accepts.count(now)) / (requests + 1))

    def allow(self, now: float) -> bool:
        """Whether to send this request (counts it as a request either way)."""
        p = self.reject_probability(now)
        self._requests.acquire(1, now)
        return not (p > 0.0 and self._rng.random() < p)

    def record(self, accepted: bool, now: float) -> None:
        """The backend's answer to a request that was sent."""
        if accepted:
            self._accepts.acquire(1, now)


# -- the registry -------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class BucketInfo:
    """What ``RateLimiter.describe`` reports about one bucket or window."""

    bucket_id: str
    kind: str  # "token_bucket" | "sliding_window" | "distributed"
    capacity: float
    rate: float
    available: float


class RateLimiter:
    """Buckets by id. See the module docstring."""

    def __init__(self, *, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._limits: dict[str, _Limit] = {}
        self._acquire: dict[str, Callable[[float, float], float]] = {}
        self._kinds: dict[str, tuple[str, float, float]] = {}
        self._distributed: Any = None  # set by open_rate_limiter: creates leased buckets

    # -- creating -------------------------------------------------------------------------

    def create_bucket(self, bucket_id: str, capacity: float, refill_rate: float, *, distributed: bool = False) -> None:
        """Register a token bucket: ``capacity`` tokens (burst), ``refill_rate`` per second.

        ``distributed=True`` shares it with the other members of the node limiter (the
        same id, capacity and rate on each). Raises ``ConfigurationError`` if the id is
        taken or the numbers are invalid.
        """
        self._check_new(bucket_id)
        now = self._clock()
        if distributed:
            if self._distributed is None:
                raise ConfigurationError("distributed buckets need a limiter opened on a node (open_rate_limiter)")
            bucket = self._distributed.add_bucket(bucket_id, float(capacity), float(refill_rate), now)
            kind = "distributed"
        else:
            bucket = core.TokenBucket(capacity, refill_rate, now)
            kind = "token_bucket"
        self._register(bucket_id, bucket, kind, float(capacity), float(refill_rate))

    def create_window(self, bucket_id: str, limit: int, window: float, *, sub_windows: int = 10) -> SlidingWindow:
        """Register a :class:`SlidingWindow`: at most ``limit`` per ``window`` seconds."""
        self._check_new(bucket_id)
        limiter = SlidingWindow(limit, window, sub_windows=sub_windows)
        self._register(bucket_id, limiter, "sliding_window", float(limit), limit / window)
        return limiter

    def remove_bucket(self, bucket_id: str) -> None:
        if bucket_id not in self._limits:
            raise BucketNotFound(bucket_id)
        del self._limits[bucket_id], self._acquire[bucket_id], self._kinds[bucket_id]
        if self._distributed is not None:
            self._distributed.remove_bucket(bucket_id, self._clock())

    def _check_new(self, bucket_id: str) -> None:
        if type(bucket_id) is not str or not 0 < len(bucket_id) <= 200:
            raise ConfigurationError("bucket ids are strings of 1-200 characters")
        if bucket_id in self._limits:
            raise ConfigurationError(f"bucket {bucket_id!r} already exists")

    def _register(self, bucket_id: str, limit: Any, kind: str, capacity: float, rate: float) -> None:
        self._limits[bucket_id] = limit
        self._acquire[bucket_id] = limit.acquire
        self._kinds[bucket_id] = (kind, capacity, rate)

    # -- acquiring ------------------------------------------------------------------------------

    def acquire_tokens(self, bucket_id: str, n: float = 1) -> float:
        """Take ``n`` tokens: 0.0 when granted, else the seconds to wait (nothing taken)."""
        try:
            acquire = self._acquire[bucket_id]
        except KeyError:
            raise BucketNotFound(bucket_id) from None
        return acquire(n, self._clock())

    def try_acquire(self, bucket_id: str, n: float = 1) -> None:
        """Take ``n`` tokens or raise :class:`RateLimited` (nothing taken)."""
        wait = self.acquire_tokens(bucket_id, n)
        if wait:
            raise RateLimited(bucket_id, wait, self.available(bucket_id))

    async def acquire(self, bucket_id: str, n: float = 1) -> None:
        """Wait until ``n`` tokens are granted, then take them. Always a checkpoint; a
        cancelled call has taken nothing."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            wait = self.acquire_tokens(bucket_id, n)
            if not wait:
                await trio.lowlevel.cancel_shielded_checkpoint()  # taken: cancellation may not lose them
                return
            limit = self._limits[bucket_id]
            changed = getattr(limit, "changed", None)  # a distributed bucket's lease can arrive sooner
            with trio.move_on_after(wait if math.isfinite(wait) else 3600.0):
                if changed is not None:
                    await changed.wait()
                else:
                    await trio.sleep_forever()

    def available(self, bucket_id: str) -> float:
        """Tokens (or window room) available now."""
        try:
            limit = self._limits[bucket_id]
        except KeyError:
            raise BucketNotFound(bucket_id) from None
        return limit.available(self._clock())

    def describe(self, bucket_id: str) -> BucketInfo:
        if bucket_id not in self._kinds:
            raise BucketNotFound(bucket_id)
        kind, capacity, rate = self._kinds[bucket_id]
        return BucketInfo(bucket_id, kind, capacity, rate, self.available(bucket_id))

    def buckets(self) -> list[str]:
        return sorted(self._limits)

    def __contains__(self, bucket_id: object) -> bool:
        return bucket_id in self._limits
