"""Topics and topic patterns: the syntax, validation, and a trie matcher.

Syntax (AMQP topic-exchange style, on dot-separated topics):

- A **topic** is one or more non-empty segments separated by dots: ``sensors.eu.temp``.
  A segment is any run of characters other than ``.``, ``*``, ``#``, whitespace and
  control characters. At most :data:`MAX_TOPIC_LENGTH` characters and
  :data:`MAX_SEGMENTS` segments.
- A **pattern** is a topic whose segments may also be a wildcard, standing alone:

  * ``*`` matches exactly one segment: ``sensors.*.temp`` matches ``sensors.eu.temp``,
    not ``sensors.temp`` nor ``sensors.eu.west.temp``;
  * ``#`` matches zero or more segments: ``sensors.#`` matches ``sensors``,
    ``sensors.eu`` and ``sensors.eu.temp``; ``#.temp`` matches ``temp`` and
    ``a.b.temp``; ``#`` alone matches every topic.

  A wildcard must be a whole segment (``sensor*`` is refused) and ``#.#`` is refused
  (write ``#``). Why AMQP's ``*``/``#`` rather than MQTT's ``+``/``#``: topics here are
  dot-separated like AMQP routing keys, and ``#`` may stand anywhere, not only last.

Invalid topics and patterns raise :class:`InvalidTopic` (a ``ValidationError``, so a
``ValueError``) saying what is wrong.

Matching: :class:`TopicTrie` stores patterns in a trie over segments and matches a
topic by walking it once, following the exact child, the ``*`` child and the ``#``
child of each trie node it reaches (an NFA walk with a visited set, so the work is
bounded by trie nodes × topic segments, whatever the patterns). The cost of a publish
does not grow with the number of patterns that do not match. :func:`pattern_matches` is
the plain reference definition the trie is tested against.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

from ._errors import ValidationError

MAX_TOPIC_LENGTH = 4096
MAX_SEGMENTS = 128
ONE = "*"
MANY = "#"

_SEGMENT_RE = re.compile(r"[^\s.*#\x00-\x1f\x7f]+")

T = TypeVar("T", bound=Hashable)


class InvalidTopic(ValidationError):
    """A topic or topic pattern that does not follow the syntax (see :mod:`phoenix_trio._topics`)."""

    def __init__(self, value: object, reason: str) -> None:
        super().__init__(f"invalid topic {value!r}: {reason}" if not isinstance(value, str) or len(value) < 200 else f"invalid topic: {reason}")
        self.value = value
        self.reason = reason


def _split(value: object, what: str) -> list[str]:
    if type(value) is not str:
        raise InvalidTopic(value, f"a {what} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidTopic(value, f"a {what} must not be empty")
    if len(value) > MAX_TOPIC_LENGTH:
        raise InvalidTopic(value, f"a {what} is at most {MAX_TOPIC_LENGTH} characters (got {len(value)})")
    segments = value.split(".")
    if len(segments) > MAX_SEGMENTS:
        raise InvalidTopic(value, f"a {what} has at most {MAX_SEGMENTS} segments (got {len(segments)})")
    return segments


def _check_segment(value: str, index: int, segment: str, what: str) -> None:
    if not segment:
        raise InvalidTopic(value, f"segment {index + 1} is empty (no leading, trailing or doubled dots)")
    if _SEGMENT_RE.fullmatch(segment) is None:
        if "*" in segment or "#" in segment:
            if what == "topic":
                raise InvalidTopic(value, "wildcards (* and #) belong in subscription patterns, not in published topics")
            raise InvalidTopic(value, f"segment {segment!r}: a wildcard must be a whole segment ('*' or '#')")
        raise InvalidTopic(value, f"segment {segment!r} contains whitespace or control characters")


def validate_topic(topic: object) -> list[str]:
    """The segments of ``topic``, or raise :class:`InvalidTopic`. Topics have no wildcards."""
    segments = _split(topic, "topic")
    for index, segment in enumerate(segments):
        if _SEGMENT_RE.fullmatch(segment) is None:
            _check_segment(topic, index, segment, "topic")  # type: ignore[arg-type]
    return segments


def validate_pattern(pattern: object) -> list[str]:
    """The segments of ``pattern``, or raise :class:`InvalidTopic`."""
    segments = _split(pattern, "pattern")
    previous = None
    for index, segment in enumerate(segments):
        if segment == MANY:
            if previous == MANY:
                raise InvalidTopic(pattern, "'#.#' means the same as '#'; write '#'")
        elif segment != ONE and _SEGMENT_RE.fullmatch(segment) is None:
            _check_segment(pattern, index, segment, "pattern")  # type: ignore[arg-type]
        previous = segment
    return segments


def is_pattern(value: str) -> bool:
    """Whether a (valid) pattern contains a wildcard."""
    return any(s == ONE or s == MANY for s in value.split("."))


def pattern_matches(pattern: str, topic: str) -> bool:
    """The reference definition: does ``pattern`` match ``topic``? (Both must be valid.)

    A direct recursive reading of the syntax, with no trie and no cleverness; the trie
    is tested against it.
    """
    p = validate_pattern(pattern)
    t = validate_topic(topic)

    def match(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(t)
        if p[i] == MANY:
            return any(match(i + 1, k) for k in range(j, len(t) + 1))
        if j == len(t):
            return False
        return (p[i] == ONE or p[i] == t[j]) and match(i + 1, j + 1)

    return match(0, 0)


class _TrieNode(Generic[T]):
    __slots__ = ("children", "values", "many")

    def __init__(self, many: bool = False) -> None:
        self.children: dict[str, _TrieNode[T]] = {}
        self.values: dict[T, int] = {}  # value -> how many times it was added under this pattern
        self.many = many  # this node was reached through a '#' segment


class TopicTrie(Generic[T]):
    """Patterns mapped to values, matched against topics. See the module docstring.

    ``add(pattern, value)`` counts: a value added twice under one pattern must be removed
    twice. ``match(topic)`` returns the set of values whose patterns match.
    """

    def __init__(self) -> None:
        self._root: _TrieNode[T] = _TrieNode()
        self._patterns: dict[str, dict[T, int]] = {}

    def __len__(self) -> int:
        """How many distinct (pattern, value) pairs are stored."""
        return sum(len(v) for v in self._patterns.values())

    def patterns(self) -> Iterator[tuple[str, T]]:
        for pattern, values in self._patterns.items():
            for value in values:
                yield pattern, value

    def add(self, pattern: str, value: T) -> bool:
        """Store ``value`` under ``pattern``; True if this pair is new."""
        segments = validate_pattern(pattern)
        node = self._root
        for segment in segments:
            child = node.children.get(segment)
            if child is None:
                child = node.children[segment] = _TrieNode(segment == MANY)
            node = child
        count = node.values.get(value, 0)
        node.values[value] = count + 1
        self._patterns.setdefault(pattern, {})[value] = count + 1
        return count == 0

    def remove(self, pattern: str, value: T) -> bool:
        """Undo one :meth:`add`; True if the pair is now gone. KeyError if it was not there."""
        segments = validate_pattern(pattern)
        path = [self._root]
        node = self._root
        for segment in segments:
            node = node.children[segment]
            path.append(node)
        count = node.values[value]
        if count > 1:
            node.values[value] = count - 1
            self._patterns[pattern][value] = count - 1
            return False
        del node.values[value]
        values = self._patterns[pattern]
        del values[value]
        if not values:
            del self._patterns[pattern]
        # prune empty branches
        for depth in range(len(segments), 0, -1):
            child = path[depth]
            if child.values or child.children:
                break
            del path[depth - 1].children[segments[depth - 1]]
        return True

    def match(self, topic: str) -> set[T]:
        """Every value whose pattern matches ``topic`` (which must be valid; see :func:`validate_topic`)."""
        segments = topic.split(".")
        end = len(segments)
        found: set[T] = set()
        stack: list[tuple[_TrieNode[T], int]] = [(self._root, 0)]
        seen: set[tuple[int, int]] = set()
        while stack:
            node, i = stack.pop()
            key = (id(node), i)
            if key in seen:
                continue
            seen.add(key)
            children = node.children
            many = children.get(MANY)
            if many is not None:
                stack.append((many, i))  # '#' matching zero segments
            if i == end:
                if node.values:
                    found.update(node.values)
                continue
            if node.many:
                stack.append((node, i + 1))  # '#' taking one more segment
            child = children.get(segments[i])
            if child is not None:
                stack.append((child, i + 1))
            child = children.get(ONE)
            if child is not None:
                stack.append((child, i + 1))
        return found


__all__ = [
    "InvalidTopic",
    "TopicTrie",
    "is_pattern",
    "pattern_matches",
    "validate_pattern",
    "validate_topic",
]
