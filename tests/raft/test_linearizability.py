"""The WGL checker: it must reject non-linearizable histories and accept tricky legal ones."""

from __future__ import annotations

import random

import pytest

from phoenix_trio.raft import UNKNOWN, CheckBudgetExceeded, Operation, check_linearizable


def op(client, kind, value=None, output=UNKNOWN, invoke=0.0, complete=None, key="k"):
    return Operation(client, kind, key, value, output, invoke, complete)


# -- violations the checker must catch ---------------------------------------------------


def test_stale_read_after_completed_write_is_rejected() -> None:
    history = [
        op("a", "put", 1, None, 0, 1),
        op("a", "put", 2, 1, 2, 3),
        op("b", "read", None, 1, 4, 5),  # began after put(2) completed, still sees 1
    ]
    result = check_linearizable(history)
    assert not result.ok and result.key == "k"


def test_lost_write_is_rejected() -> None:
    history = [
        op("a", "put", 1, UNKNOWN, 0, 1),
        op("b", "read", None, None, 2, 3),  # the acknowledged write vanished
    ]
    assert not check_linearizable(history).ok


def test_read_of_a_value_never_written_is_rejected() -> None:
    assert not check_linearizable([op("a", "read", None, 7, 0, 1)]).ok


def test_two_cas_from_the_same_expected_value_cannot_both_win() -> None:
    history = [
        op("a", "put", 0, None, 0, 1),
        op("b", "cas", (0, 1), True, 2, 5),
        op("c", "cas", (0, 2), True, 3, 6),
    ]
    assert not check_linearizable(history).ok


def test_failed_cas_while_value_matched_is_rejected() -> None:
    history = [
        op("a", "put", 5, None, 0, 1),
        op("b", "cas", (5, 6), False, 2, 3),  # nothing else ran: it must have succeeded
    ]
    assert not check_linearizable(history).ok


def test_cas_success_invisible_to_a_later_read_is_rejected() -> None:
    history = [
        op("a", "put", 0, None, 0, 1),
        op("a", "cas", (0, 9), True, 2, 3),
        op("b", "read", None, 0, 4, 5),
    ]
    assert not check_linearizable(history).ok


def test_reads_that_go_back_in_time_are_rejected() -> None:
    # put(1) and put(2) concurrent; once one reader saw 2 then 1, a later read cannot see 2 again
    history = [
        op("a", "put", 1, UNKNOWN, 0, 10),
        op("b", "put", 2, UNKNOWN, 0, 10),
        op("c", "read", None, 2, 1, 2),
        op("c", "read", None, 1, 3, 4),
        op("d", "read", None, 2, 5, 6),
    ]
    assert not check_linearizable(history).ok


def test_put_returning_a_wrong_previous_value_is_rejected() -> None:
    history = [op("a", "put", 1, None, 0, 1), op("b", "put", 2, None, 2, 3)]  # must return 1
    assert not check_linearizable(history).ok


# -- legal histories it must accept ---------------------------------------------------------


def test_concurrent_writes_may_be_seen_in_either_order() -> None:
    history = [
        op("a", "put", 1, UNKNOWN, 0, 10),
        op("b", "put", 2, UNKNOWN, 0, 10),
        op("c", "read", None, 2, 1, 2),
        op("d", "read", None, 1, 3, 4),
    ]
    assert check_linearizable(history).ok


def test_read_overlapping_a_write_may_see_old_or_new() -> None:
    for seen in (None, 1):
        history = [op("a", "put", 1, UNKNOWN, 0, 10), op("b", "read", None, seen, 1, 2)]
        assert check_linearizable(history).ok


def test_unknown_outcome_write_may_take_effect_late_or_never() -> None:
    never = [op("a", "put", 1, UNKNOWN, 0, None), op("b", "read", None, None, 5, 6)]
    late = [op("a", "put", 1, UNKNOWN, 0, None), op("b", "read", None, None, 5, 6), op("b", "read", None, 1, 7, 8)]
    assert check_linearizable(never).ok
    assert check_linearizable(late).ok
    # ... but not before it was invoked
    early = [op("b", "read", None, 1, 0, 1), op("a", "put", 1, UNKNOWN, 2, None)]
    assert not check_linearizable(early).ok


def test_cas_chain_with_interleaved_failures() -> None:
    history = [
        op("a", "put", 0, None, 0, 1),
        op("b", "cas", (0, 1), True, 2, 6),
        op("c", "cas", (0, 2), False, 3, 7),  # lost the race to b
        op("d", "cas", (1, 3), True, 4, 8),  # linearized after b
        op("e", "read", None, 3, 9, 10),
    ]
    assert check_linearizable(history).ok


def test_keys_are_independent() -> None:
    history = [
        op("a", "put", 1, None, 0, 1, key="x"),
        op("a", "put", 2, None, 0, 1, key="y"),
        op("b", "read", None, 1, 2, 3, key="x"),
        op("b", "read", None, 2, 2, 3, key="y"),
    ]
    assert check_linearizable(history).ok
    history.append(op("c", "read", None, 2, 4, 5, key="x"))
    result = check_linearizable(history)
    assert not result.ok and result.key == "x"


def test_linearizable_random_histories_from_a_sequential_execution_pass() -> None:
    # run a real register sequentially, then stretch each operation's interval randomly:
    # the real order stays a witness, so the checker must accept every such history.
    rng = random.Random(7)
    for _ in range(50):
        state = None
        history = []
        t = 0.0
        for i in range(40):
            t += 1.0
            start = t - rng.uniform(0, 5)
            end = t + rng.uniform(0, 5)
            kind = rng.choice(["read", "put", "cas"])
            if kind == "read":
                history.append(op(i % 4, "read", None, state, start, end))
            elif kind == "put":
                value = rng.randrange(4)
                history.append(op(i % 4, "put", value, state, start, end))
                state = value
            else:
                expected, new = rng.randrange(4), rng.randrange(4)
                won = state == expected
                history.append(op(i % 4, "cas", (expected, new), won, start, end))
                if won:
                    state = new
        assert check_linearizable(history).ok


def test_budget_bounds_the_search() -> None:
    history = [op(i, "put", i, UNKNOWN, 0, 100) for i in range(14)] + [op("r", "read", None, 99, 101, 102)]
    with pytest.raises(CheckBudgetExceeded):
        check_linearizable(history, budget=1000)
