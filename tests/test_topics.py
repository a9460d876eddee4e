"""Topic syntax and the trie matcher, checked against the plain reference definition."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_trio import ValidationError
from phoenix_trio._topics import InvalidTopic, TopicTrie, pattern_matches, validate_pattern, validate_topic

SEGMENTS = st.sampled_from(["a", "b", "c", "dd"])
TOPICS = st.lists(SEGMENTS, min_size=1, max_size=6).map(".".join)


def _pattern(segments: list[str]) -> str:
    # collapse '#.#' (refused by the syntax) into '#'
    out: list[str] = []
    for s in segments:
        if s == "#" and out and out[-1] == "#":
            continue
        out.append(s)
    return ".".join(out)


PATTERNS = st.lists(st.sampled_from(["a", "b", "c", "dd", "*", "#"]), min_size=1, max_size=6).map(_pattern)


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("a.b.c", "a.b.c", True),
        ("a.b.c", "a.b", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.c", False),
        ("a.*.c", "a.b.b.c", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("a.#", "b", False),
        ("#.c", "c", True),
        ("#.c", "a.b.c", True),
        ("#.c", "a.b", False),
        ("#", "anything.at.all", True),
        ("a.#.c", "a.c", True),
        ("a.#.c", "a.x.y.c", True),
        ("a.#.c", "a.x.y", False),
        ("*.#", "a", True),
        ("*", "a.b", False),
        ("*.*", "a.b", True),
        ("#.*.#", "a", True),
        ("sensors.+.temp", "sensors.+.temp", True),  # '+' is an ordinary character here
    ],
)
def test_syntax_examples(pattern: str, topic: str, expected: bool) -> None:
    assert pattern_matches(pattern, topic) is expected
    trie: TopicTrie[str] = TopicTrie()
    trie.add(pattern, "x")
    assert (trie.match(topic) == {"x"}) is expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "must not be empty"),
        ("a..b", "segment 2 is empty"),
        (".a", "segment 1 is empty"),
        ("a.", "segment 2 is empty"),
        ("a.b c", "whitespace"),
        ("a.*", "wildcards"),
        ("a.#", "wildcards"),
        ("x" * 5000, "at most 4096"),
        (".".join(["a"] * 200), "at most 128 segments"),
        (b"a.b", "must be a str"),
    ],
)
def test_invalid_topics_say_why(value: object, fragment: str) -> None:
    with pytest.raises(InvalidTopic) as caught:
        validate_topic(value)
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ValidationError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("a.b*", "whole segment"),
        ("a.#x", "whole segment"),
        ("a.#.#", "write '#'"),
        ("a..#", "segment 2 is empty"),
        ("a.\tb", "whitespace"),
    ],
)
def test_invalid_patterns_say_why(value: str, fragment: str) -> None:
    with pytest.raises(InvalidTopic) as caught:
        validate_pattern(value)
    assert fragment in str(caught.value)


def test_trie_counts_additions_and_prunes_on_removal() -> None:
    trie: TopicTrie[str] = TopicTrie()
    assert trie.add("a.*", "v") is True
    assert trie.add("a.*", "v") is False  # counted twice
    assert trie.add("a.#", "w") is True
    assert trie.match("a.b") == {"v", "w"}
    assert trie.remove("a.*", "v") is False
    assert trie.match("a.b") == {"v", "w"}
    assert trie.remove("a.*", "v") is True
    assert trie.match("a.b") == {"w"}
    assert trie.remove("a.#", "w") is True
    assert len(trie) == 0 and trie._root.children == {}
    with pytest.raises(KeyError):
        trie.remove("a.#", "w")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(PATTERNS, st.integers(0, 3)), max_size=12), st.lists(TOPICS, min_size=1, max_size=8), st.data())
def test_trie_agrees_with_the_reference_matcher(entries: list[tuple[str, int]], topics: list[str], data: st.DataObject) -> None:
    trie: TopicTrie[int] = TopicTrie()
    stored: list[tuple[str, int]] = []
    for pattern, value in entries:
        trie.add(pattern, value)
        stored.append((pattern, value))
    # remove some of them again
    removals = data.draw(st.lists(st.integers(0, max(0, len(stored) - 1)), max_size=len(stored), unique=True)) if stored else []
    for index in sorted(removals, reverse=True):
        pattern, value = stored.pop(index)
        trie.remove(pattern, value)
    for topic in topics:
        expected = {value for pattern, value in stored if pattern_matches(pattern, topic)}
        assert trie.match(topic) == expected, (topic, stored)


@settings(max_examples=300, deadline=None)
@given(PATTERNS, TOPICS)
def test_reference_matcher_agrees_with_brute_force_expansion(pattern: str, topic: str) -> None:
    # An independent reading: expand every '#' into 0..n '*' segments and compare segment-wise.
    import itertools

    p = pattern.split(".")
    t = topic.split(".")
    hashes = sum(1 for s in p if s == "#")
    expected = False
    for counts in itertools.product(range(len(t) + 1), repeat=hashes):
        it = iter(counts)
        expanded = [x for s in p for x in (["*"] * next(it) if s == "#" else [s])]
        if len(expanded) == len(t) and all(e == "*" or e == x for e, x in zip(expanded, t)):
            expected = True
            break
    assert pattern_matches(pattern, topic) is expected


def test_matching_many_patterns_touches_only_what_can_match() -> None:
    trie: TopicTrie[int] = TopicTrie()
    for i in range(10_000):
        trie.add(f"tenant{i}.orders.*", i)
    trie.add("#.orders.created", -1)
    assert trie.match("tenant42.orders.created") == {42, -1}
    assert trie.match("tenant42.invoices.created") == set()
