"""The pluggable state-machine protocol and the reference replicated key-value store.

A state machine must be deterministic: every member applies the same commands in the
same order and must reach the same state. Commands arrive as msgpack-decoded values, so
a tuple sent by the leader arrives as a list on followers: treat commands as sequences.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import msgpack

from .._errors import ValidationError


@runtime_checkable
class StateMachine(Protocol):
    """What a Raft node drives. ``apply`` sees each committed command once, in log order."""

    def apply(self, index: int, command: Any) -> Any:
        """Apply the committed ``command`` at log ``index``; the return value goes to the proposer.

        It must be deterministic. An exception it raises is logged and handed to the
        proposer as the result (every replica raises the same one); state changes made
        before raising stay, so prefer returning errors.
        """

    def query(self, query: Any) -> Any:
        """Answer a read without changing state."""

    def snapshot(self) -> bytes:
        """The whole state as bytes."""

    def restore(self, data: bytes) -> None:
        """Replace the whole state by one :meth:`snapshot` produced."""


class KVStateMachine:
    """A replicated dict. Commands (lists or tuples):

    - ``("put", key, value)`` -> the previous value (``None`` if absent)
    - ``("delete", key)`` -> the previous value
    - ``("cas", key, expected, new)`` -> ``True`` if the value was ``expected`` (absent = ``None``) and is now ``new``

    Queries: a key -> its value or ``None``. Keys are str, bytes or int; values any msgpack value.
    Unknown or malformed commands change nothing and return a :class:`ValidationError`
    (returned, not raised: a bad command must not stop the replicas).
    """

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}

    def apply(self, index: int, command: Any) -> Any:
        data = self.data
        try:
            op = command[0]
            if op == "put":
                _, key, value = command
                old = data.get(key)
                data[key] = value
                return old
            if op == "cas":
                _, key, expected, new = command
                if data.get(key) == expected:
                    if new is None:
                        data.pop(key, None)
                    else:
                        data[key] = new
                    return True
                return False
            if op == "delete":
                _, key = command
                return data.pop(key, None)
        except (TypeError, ValueError, IndexError, KeyError):
            pass
        return ValidationError(f"bad KV command: {command!r:.80}")

    def query(self, query: Any) -> Any:
        try:
            return self.data.get(query)
        except TypeError:
            return None

    def snapshot(self) -> bytes:
        return msgpack.packb(self.data, use_bin_type=True)

    def restore(self, data: bytes) -> None:
        self.data = msgpack.unpackb(data, raw=False, strict_map_key=False)
