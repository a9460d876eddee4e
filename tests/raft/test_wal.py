"""The write-ahead log: batching, recovery, torn and corrupt tails at every byte, snapshots."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from phoenix_trio.raft import (
    ENTRY_CONFIG,
    DurableState,
    Entry,
    KVStateMachine,
    Persist,
    PersistSnapshot,
    RaftConfig,
    RaftNode,
    Snapshot,
    StorageCorrupt,
    WriteAheadLog,
)


def entries(first, count, term=1):
    return tuple(Entry(term, i, 0, ["put", f"k{i}", "v" * (i % 7)]) for i in range(first, first + count))


def same(a: DurableState, b: DurableState) -> bool:
    return (a.term, a.vote, a.snapshot, a.entries) == (b.term, b.vote, b.snapshot, b.entries)


def test_many_persists_make_one_write_and_one_fsync(tmp_path: Path) -> None:
    wal = WriteAheadLog.open(tmp_path)
    wal.append([Persist(1, "a", entries(1, 3))])
    wal.append([Persist(1, "a", entries(4, 2)), Persist(2, None, entries(6, 1, term=2))])
    assert wal.syncs == 0
    wal.sync()
    assert wal.syncs == 1
    wal.close()
    state = WriteAheadLog.open(tmp_path).state
    assert state.term == 2 and state.vote is None
    assert [e.index for e in state.entries] == list(range(1, 7))
    assert state.entries[5].term == 2


def test_unsynced_appends_are_not_on_disk(tmp_path: Path) -> None:
    wal = WriteAheadLog.open(tmp_path)
    wal.persist([Persist(1, "a", entries(1, 2))])
    wal.append([Persist(1, "a", entries(3, 2))])  # the crash comes before sync
    state = WriteAheadLog.open(tmp_path).state
    assert [e.index for e in state.entries] == [1, 2]


def test_truncation_and_config_entries_survive_recovery(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as wal:
        wal.persist([Persist(1, "a", entries(1, 5))])
        conflict = (Entry(3, 4, ENTRY_CONFIG, ("a", "b")), Entry(3, 5))
        wal.persist([Persist(3, "b", conflict, truncate_from=4)])
        expected = wal.load()
    state = WriteAheadLog.open(tmp_path).state
    assert same(state, expected)
    assert state.entries[3].data == ("a", "b") and state.entries[4].term == 3


def _history(tmp_path: Path) -> tuple[Path, DurableState, DurableState]:
    """Write a log whose last record is a big entries batch; return the segment and states before/after it."""
    wal = WriteAheadLog.open(tmp_path)
    wal.persist([Persist(1, "a", entries(1, 4))])
    wal.persist([Persist(2, "b", ())])
    before = wal.load()
    wal.persist([Persist(2, "b", entries(5, 3, term=2))])
    after = wal.load()
    wal.close()
    [segment] = tmp_path.glob("wal-*.log")
    return segment, before, after


def test_a_torn_last_record_is_truncated_at_every_byte_offset(tmp_path: Path) -> None:
    segment, before, after = _history(tmp_path / "ref")
    data = segment.read_bytes()
    last_record = len(data) - (len(data) - _last_record_start(data))
    for cut in range(last_record, len(data) + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / segment.name).write_bytes(data[:cut])
        wal = WriteAheadLog.open(d)
        assert same(wal.state, after if cut == len(data) else before), cut
        # the torn tail is gone from disk and new writes follow cleanly
        assert (d / segment.name).stat().st_size == (len(data) if cut == len(data) else last_record)
        wal.persist([Persist(9, "z", ())])
        wal.close()
        assert WriteAheadLog.open(d).state.term == 9


def test_a_corrupt_byte_in_the_last_record_drops_it(tmp_path: Path) -> None:
    segment, before, after = _history(tmp_path / "ref")
    data = segment.read_bytes()
    start = _last_record_start(data)
    for position in range(start, len(data)):
        d = tmp_path / f"flip{position}"
        d.mkdir()
        corrupt = bytearray(data)
        corrupt[position] ^= 0x5A
        (d / segment.name).write_bytes(bytes(corrupt))
        assert same(WriteAheadLog.open(d).state, before), position


def test_corruption_before_the_last_segment_is_an_error(tmp_path: Path) -> None:
    wal = WriteAheadLog.open(tmp_path)
    wal.persist([Persist(1, "a", entries(1, 3))])
    snap = Snapshot(2, 1, ("a",), b"state")
    wal.persist([PersistSnapshot(snap)])  # rotates to a new segment
    wal.persist([Persist(1, "a", entries(4, 1))])
    wal.close()
    segments = sorted(tmp_path.glob("wal-*.log"))
    assert len(segments) == 1  # the old segment was compacted away
    # make a second segment, then damage the first one in the middle
    (tmp_path / "wal-99999999.log").write_bytes(b"")
    first = segments[0]
    data = bytearray(first.read_bytes())
    data[10] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(StorageCorrupt):
        WriteAheadLog.open(tmp_path)


def _last_record_start(data: bytes) -> int:
    import struct

    pos = 0
    last = 0
    while pos < len(data):
        last = pos
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 8 + length
    return last


def test_snapshots_are_atomic_and_compact_the_log(tmp_path: Path) -> None:
    wal = WriteAheadLog.open(tmp_path)
    wal.persist([Persist(1, "a", entries(1, 10))])
    snap = Snapshot(6, 1, ("a", "b"), b"x" * 1000)
    wal.persist([PersistSnapshot(snap, keep_log=True)])
    wal.persist([Persist(1, "a", entries(11, 2))])
    wal.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len([n for n in names if n.endswith(".snap")]) == 1
    assert not [n for n in names if n.endswith(".tmp")]
    state = WriteAheadLog.open(tmp_path).state
    assert state.snapshot == snap
    assert [e.index for e in state.entries] == list(range(7, 13))


def test_a_snapshot_without_its_durable_marker_is_ignored(tmp_path: Path) -> None:
    wal = WriteAheadLog.open(tmp_path)
    wal.persist([Persist(1, "a", entries(1, 4))])
    wal.append([PersistSnapshot(Snapshot(3, 1, ("a",), b"s"))])  # file written, marker not synced
    state = WriteAheadLog.open(tmp_path).state
    assert state.snapshot is None and len(state.entries) == 4
    assert not list(tmp_path.glob("*.snap"))


def test_a_discarding_snapshot_install_replaces_the_log(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path) as wal:
        wal.persist([Persist(1, "a", entries(1, 4))])
        wal.persist([PersistSnapshot(Snapshot(9, 3, ("a",), b"s"), keep_log=False)])
        wal.persist([Persist(3, "a", entries(10, 1, term=3))])
    state = WriteAheadLog.open(tmp_path).state
    assert state.snapshot.index == 9 and [e.index for e in state.entries] == [10]


def test_a_node_restarts_from_the_wal(tmp_path: Path) -> None:
    config = RaftConfig(election_timeout=1.0, heartbeat_interval=0.1, snapshot_threshold=20, snapshot_trailing=5)
    wal = WriteAheadLog.open(tmp_path)

    def node():
        return RaftNode("a", members=("a",), state_machine=KVStateMachine(), rng=random.Random(0), config=config, durable=wal.load())

    n = node()
    n.start(0.0)
    wal.persist(n.timer("raft.election", 1.0))
    for i in range(50):
        wal.persist(n.propose(i, ["put", f"k{i % 5}", i], 1.0))
    wal.close()
    assert len(list(tmp_path.glob("wal-*.log"))) == 1
    wal = WriteAheadLog.open(tmp_path)
    again = node()
    again.start(2.0)
    wal.persist(again.timer("raft.election", 3.0))
    assert again.role == "leader" and again.term == 2
    assert {f"k{i}": again.sm.query(f"k{i}") for i in range(5)} == {f"k{i}": 45 + i for i in range(5)}


def test_random_crash_points_recover_a_prefix_of_the_synced_history(tmp_path: Path) -> None:
    rng = random.Random(3)
    wal = WriteAheadLog.open(tmp_path / "w")
    synced_states = []
    next_index = 1
    term = 1
    for step in range(40):
        count = rng.randint(1, 5)
        if rng.random() < 0.2 and next_index > 3:
            cut = rng.randint(max(1, next_index - 3), next_index - 1)
            term += 1
            wal.persist([Persist(term, None, entries(cut, count, term=term), truncate_from=cut)])
            next_index = cut + count
        else:
            wal.persist([Persist(term, "a", entries(next_index, count, term=term))])
            next_index += count
        synced_states.append(wal.load())
    wal.close()
    [segment] = (tmp_path / "w").glob("wal-*.log")
    data = segment.read_bytes()
    for _ in range(60):
        cut = rng.randint(0, len(data))
        d = tmp_path / f"c{cut}"
        if d.exists():
            continue
        d.mkdir()
        (d / segment.name).write_bytes(data[:cut])
        state = WriteAheadLog.open(d).state
        # whatever survived is the state at some sync point (or nothing at all)
        assert same(state, DurableState()) or any(same(state, s) for s in synced_states), cut


def test_a_crash_during_the_rewrite_after_a_snapshot_recovers_the_same_state(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    wal = WriteAheadLog.open(ref)
    wal.persist([Persist(1, "a", entries(1, 8))])
    old_segment = next(ref.glob("wal-*.log"))
    old_bytes_before = old_segment.read_bytes()
    snap = Snapshot(5, 1, ("a",), b"snapshot-state")
    wal.persist([PersistSnapshot(snap)])  # marker synced into the old segment, then a new segment
    expected = wal.load()
    wal.close()
    [new_segment] = ref.glob("wal-*.log")
    assert new_segment.name != old_segment.name
    new_bytes = new_segment.read_bytes()
    snap_file = next(ref.glob("*.snap"))
    # the old segment as it was on disk at the moment of the rewrite: its records plus the marker
    marker_len = len(_marker_record(snap, snap_file.name))
    old_bytes = old_bytes_before + _marker_record(snap, snap_file.name)
    assert marker_len > 8
    for cut in range(0, len(new_bytes) + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / old_segment.name).write_bytes(old_bytes)
        (d / new_segment.name).write_bytes(new_bytes[:cut])
        (d / snap_file.name).write_bytes(snap_file.read_bytes())
        assert same(WriteAheadLog.open(d).state, expected), cut


def _marker_record(snap: Snapshot, name: str) -> bytes:
    from phoenix_trio.raft._wal import _R_SNAPSHOT, _record

    return _record(_R_SNAPSHOT, [snap.index, snap.term, True, name])
