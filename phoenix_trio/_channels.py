"""Parallel channels: several connections per peer pair, so large messages do not hold back small ones.

One TCP connection is one ordered byte stream: a 1 MiB message written ahead of a
100-byte one delays it by the time the megabyte takes to cross (head-of-line blocking).
Partisan's answer, which this follows, is named channels with their own connections.

A node opened with ``channels=ChannelConfig({"bulk": 2})`` keeps, next to each peer's
*primary* connection (channel ``"control"``: membership, heartbeats, control messages,
services, overlay membership, request replies), up to ``parallelism`` more connections
per named channel (*lanes*). Lanes are dialled by the sending node, lazily, on the first
message that needs one, and carry only what that node sends (plus the receiver's
acknowledgements back); they close with the primary connection.

Which channel a message takes:

1. ``channel=`` given at send time (``node.send(..., channel="bulk")``);
2. otherwise the channel configured for the message's type (``types={"phoenix.data.file":
   "bulk"}``: a type or a prefix of whole segments, the longest match wins);
3. otherwise, for a message that is not tracked (``at_most_once``, requests) whose data
   is ``bytes``/``str`` of at least ``large_threshold`` bytes: the ``large`` channel;
4. otherwise the ``default`` channel (``"control"`` unless configured).

Reliable messages (``at_least_once``/``exactly_once``) never take the size rule: a
reliable stream stays on one connection, so exactly-once's in-order acceptance is not
disturbed (docs/delivery.md). Within a channel the lane is ``crc32(agent id) %
parallelism``.

What is promised: messages from one node to one agent on one channel arrive in the
order they were sent (one lane carries them). Across channels, nothing: a small message
on ``control`` may overtake a large one sent earlier on ``bulk``, which is the point.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from typing import Any

import attrs

from ._errors import ConfigurationError

PRIMARY = "control"
MAX_PARALLELISM = 64
_NAME_RE = re.compile(r"[a-z0-9_-]{1,32}")


def _freeze(value: Any) -> tuple[tuple[str, int], ...]:
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigurationError(f"channels must be a mapping of name -> parallelism, got {value!r}")
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            raise ConfigurationError(f"channels must be a mapping of name -> parallelism, got {value!r}")
    return tuple((str(k), v) for k, v in items)


def _freeze_types(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigurationError(f"types must be a mapping of message type (or prefix) -> channel, got {value!r}")
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2 or not all(isinstance(x, str) for x in item):
            raise ConfigurationError(f"types must be a mapping of message type (or prefix) -> channel, got {value!r}")
    return tuple(items)


@attrs.frozen(slots=True)
class ChannelConfig:
    """Named parallel channels for a node (see the module docstring).

    - ``channels``: name -> parallelism (connections per peer, 1 to 64), for example
      ``{"data": 1, "bulk": 2}``. ``"control"`` is the primary connection and always exists.
    - ``default``: the channel of messages that ask for none and are not large.
    - ``large`` / ``large_threshold``: untracked messages whose ``bytes``/``str`` data is
      at least this many bytes go to the ``large`` channel (None: no size rule).
    - ``types``: message type (or a prefix of whole segments) -> channel, for example
      ``{"phoenix.data.file": "bulk"}``; the longest matching prefix wins.
    """

    channels: tuple[tuple[str, int], ...] = attrs.field(converter=_freeze)
    default: str = PRIMARY
    large: str | None = None
    large_threshold: int = 64 * 1024
    types: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_freeze_types)
    _lanes: dict[str, int] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        lanes: dict[str, int] = {}
        for name, parallelism in self.channels:
            if _NAME_RE.fullmatch(name) is None or name == PRIMARY:
                raise ConfigurationError(f"channel name {name!r}: 1-32 of a-z 0-9 _ -, and not {PRIMARY!r}")
            if name in lanes:
                raise ConfigurationError(f"channel {name!r} given twice")
            if not isinstance(parallelism, int) or isinstance(parallelism, bool) or not 1 <= parallelism <= MAX_PARALLELISM:
                raise ConfigurationError(f"channel {name!r}: parallelism must be an integer in [1, {MAX_PARALLELISM}]")
            lanes[name] = parallelism
        for role, chosen in (("default", self.default), ("large", self.large)):
            if chosen is not None and chosen != PRIMARY and chosen not in lanes:
                raise ConfigurationError(f"{role} channel {chosen!r} is not configured")
        for prefix, name in self.types:
            if not prefix or prefix.startswith(".") or prefix.endswith(".") or ".." in prefix:
                raise ConfigurationError(f"types: {prefix!r} is not a message type or a prefix of whole segments")
            if name != PRIMARY and name not in lanes:
                raise ConfigurationError(f"types: channel {name!r} (for {prefix!r}) is not configured")
        if not isinstance(self.large_threshold, int) or self.large_threshold < 1:
            raise ConfigurationError("large_threshold must be a positive number of bytes")
        object.__setattr__(self, "_lanes", lanes)

    def names(self) -> list[str]:
        return [PRIMARY, *self._lanes]

    def parallelism(self, name: str) -> int:
        """Connections per peer for ``name`` (1 for ``"control"``); ConfigurationError if unknown."""
        if name == PRIMARY:
            return 1
        count = self._lanes.get(name)
        if count is None:
            raise ConfigurationError(f"unknown channel {name!r}; this node has {', '.join(self.names())}")
        return count

    def for_type(self, type_: str) -> str | None:
        """The channel configured for messages of ``type_`` (longest prefix), or None."""
        best: tuple[int, str] | None = None
        for prefix, name in self.types:
            if type_ == prefix or type_.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), name)
        return None if best is None else best[1]

    def choose(self, asked: str | None, data: Any, tracked: bool) -> str:
        """The channel for one message (see the module docstring)."""
        if asked is not None:
            return asked
        if self.large is not None and not tracked and data.__class__ in (bytes, str, bytearray) and len(data) >= self.large_threshold:
            return self.large
        return self.default

    def lane(self, name: str, agent_id: str) -> int:
        """Which of ``name``'s connections carries messages for ``agent_id``."""
        count = self._lanes.get(name, 1)
        return 0 if count == 1 else zlib.crc32(agent_id.encode()) % count


POOL = "pool"


def pool_channels(membership: Any) -> ChannelConfig | None:
    """The connection pool of a ``client_server`` overlay: ``pool_size`` connections per pair.

    The primary connection plus ``pool_size - 1`` lanes of channel ``"pool"``, which is
    the default channel, so agents' messages spread over the pool by agent id (one agent's
    messages stay on one connection). None for other overlays or ``pool_size`` 1. A node
    given ``channels=`` explicitly keeps those instead.
    """
    pool_size = getattr(membership, "pool_size", 1) if getattr(membership, "kind", None) == "client_server" else 1
    if pool_size <= 1:
        return None
    return ChannelConfig({POOL: min(pool_size - 1, MAX_PARALLELISM)}, default=POOL)


def configure_channels(channels: Mapping[str, int], **options: Any) -> ChannelConfig:
    """A validated :class:`ChannelConfig`: ``configure_channels({"bulk": 2}, large="bulk")``."""
    unknown = set(options) - {"default", "large", "large_threshold", "types"}
    if unknown:
        raise ConfigurationError(f"unknown channel option(s): {', '.join(sorted(unknown))}")
    return ChannelConfig(channels, **options)


__all__ = ["POOL", "PRIMARY", "ChannelConfig", "configure_channels", "pool_channels"]
