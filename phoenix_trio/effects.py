"""The effects that sans-IO protocol cores hand back to whoever drives them.

Every protocol core in phoenix_trio (framing, Raft, HyParView, Plumtree, gossip, circuit
breakers, token buckets) is a plain state machine: inputs (messages, timer firings,
commands) go in together with the current time, and a list of effects comes out. The
core never sends, sleeps, reads a clock or draws unseeded randomness itself.

The three effects every driver understands are defined here. A core may add its own
(Raft adds ``Persist`` and ``Apply``, for instance); drivers pass those to the code that
knows them. Two drivers exist for every core: the Trio runtime, which moves bytes over
real sockets, and :mod:`phoenix_trio.sim`, a seeded discrete-event simulation.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import attrs


@attrs.frozen(slots=True)
class Send:
    """Send ``message`` to the peer ``dest``. Delivery is not promised: peers may be gone."""

    dest: Hashable
    message: Any


@attrs.frozen(slots=True)
class SetTimer:
    """Fire the timer ``key`` at absolute time ``deadline`` (seconds, the driver's clock).

    Setting a key that is already pending replaces it: only the latest deadline fires.
    """

    key: Hashable
    deadline: float


@attrs.frozen(slots=True)
class CancelTimer:
    """Forget the pending timer ``key``; nothing happens if none is pending."""

    key: Hashable


Effect = Any
"""Any effect record: :class:`Send`, :class:`SetTimer`, :class:`CancelTimer` or a core's own."""
