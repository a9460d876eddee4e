"""The reference key-value state machine: a dict model, snapshots, bad commands."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from phoenix_trio import ValidationError
from phoenix_trio.raft import KVStateMachine, StateMachine

keys = st.sampled_from(["a", "b", "c", 1, b"k"])
values = st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=3), st.lists(st.integers(0, 3), max_size=2))
commands = st.one_of(
    st.tuples(st.just("put"), keys, values).map(list),
    st.tuples(st.just("delete"), keys).map(list),
    st.tuples(st.just("cas"), keys, values, values).map(list),
)


@given(st.lists(commands, max_size=40))
@settings(max_examples=300)
def test_kv_matches_a_dict_model_and_snapshots_restore_exactly(cmds) -> None:
    kv = KVStateMachine()
    model: dict = {}
    for index, cmd in enumerate(cmds, start=1):
        result = kv.apply(index, cmd)
        op, key = cmd[0], cmd[1]
        if op == "put":
            assert result == model.get(key)
            model[key] = cmd[2]
        elif op == "delete":
            assert result == model.pop(key, None)
        else:
            expected, new = cmd[2], cmd[3]
            won = model.get(key) == expected
            assert result is won
            if won:
                if new is None:
                    model.pop(key, None)
                else:
                    model[key] = new
        assert all(kv.query(k) == model.get(k) for k in ["a", "b", "c", 1, b"k"])
    copy = KVStateMachine()
    copy.restore(kv.snapshot())
    assert copy.data == kv.data and copy.snapshot() == kv.snapshot()


def test_bad_commands_are_answered_not_raised_and_change_nothing() -> None:
    kv = KVStateMachine()
    kv.apply(1, ["put", "x", 1])
    for bad in (None, [], ["put"], ["frobnicate", "x"], ["cas", "x", 1], 42, ["put", ["unhashable"], 1]):
        assert isinstance(kv.apply(2, bad), ValidationError)
    assert kv.data == {"x": 1}
    assert kv.query(["unhashable"]) is None


def test_kv_satisfies_the_protocol() -> None:
    assert isinstance(KVStateMachine(), StateMachine)
