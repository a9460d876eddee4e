"""Unit tests of the sans-IO core, driving one RaftNode by hand with messages and timers."""

from __future__ import annotations

import random

import pytest

from phoenix_trio import ConfigurationError, NotLeader
from phoenix_trio.effects import Send, SetTimer
from phoenix_trio.raft import (
    CANDIDATE,
    ENTRY_COMMAND,
    ENTRY_NOOP,
    FOLLOWER,
    LEADER,
    PRE_CANDIDATE,
    AppendEntries,
    AppendResponse,
    ConfigChangeInProgress,
    Entry,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    KVStateMachine,
    MemoryStorage,
    Persist,
    PersistSnapshot,
    ProposalDropped,
    ProposalQueued,
    ProposalResult,
    RaftConfig,
    RaftNode,
    ReadResult,
    RequestVote,
    SnapshotResponse,
    TimeoutNow,
    TransferInProgress,
    VoteResponse,
)

CFG = RaftConfig(election_timeout=1.0, heartbeat_interval=0.1)


def make(node_id="a", members=("a", "b", "c"), storage=None, config=CFG):
    durable = storage.load() if storage is not None else None
    return RaftNode(node_id, members=members, state_machine=KVStateMachine(), rng=random.Random(1), config=config, durable=durable)


def sends(effects, kind=None):
    return [(e.dest, e.message) for e in effects if type(e) is Send and (kind is None or type(e.message) is kind)]


def persist_then(effects, storage):
    """Apply the persists to ``storage`` like a driver; return the effects."""
    for e in effects:
        if type(e) in (Persist, PersistSnapshot):
            storage.apply(e)
    return effects


def elect(n, now=10.0):
    """Make ``n`` (with peers b, c) the leader of term 1 (or its next term)."""
    n.start(0.0)
    effects = n.timer("raft.election", now)
    assert n.role in (PRE_CANDIDATE, CANDIDATE)
    if n.role == PRE_CANDIDATE:
        n.receive("b", VoteResponse(n.term + 1, True, True), now)
    assert n.role == CANDIDATE
    effects = n.receive("b", VoteResponse(n.term, True, False), now)
    assert n.role == LEADER
    return effects


def test_single_node_elects_itself_and_commits_alone() -> None:
    n = make(members=("a",))
    n.start(0.0)
    n.timer("raft.election", 5.0)
    assert n.role == LEADER and n.term == 1
    effects = n.propose("p1", ["put", "x", 1], 5.0)
    kinds = [type(e) for e in effects]
    # the persist comes before the proposal is reported committed
    assert kinds.index(Persist) < kinds.index(ProposalResult)
    [result] = [e for e in effects if type(e) is ProposalResult]
    assert result.request_id == "p1" and result.index == 2 and result.error is None
    assert n.sm.query("x") == 1


def test_pre_vote_does_not_change_terms_and_election_follows() -> None:
    n = make()
    n.start(0.0)
    effects = n.timer("raft.election", 5.0)
    assert n.role == PRE_CANDIDATE and n.term == 0
    assert {d for d, m in sends(effects, RequestVote)} == {"b", "c"}
    assert all(m.pre_vote and m.term == 1 for _, m in sends(effects, RequestVote))
    assert not [e for e in effects if type(e) is Persist]
    effects = n.receive("b", VoteResponse(1, True, True), 5.0)
    assert n.role == CANDIDATE and n.term == 1 and n.vote == "a"
    kinds = [type(e) for e in effects]
    assert kinds.index(Persist) < kinds.index(Send)  # term and vote durable before asking
    effects = n.receive("c", VoteResponse(1, True, False), 5.0)
    assert n.role == LEADER
    appends = sends(effects, AppendEntries)
    assert {d for d, _ in appends} == {"b", "c"}
    assert appends[0][1].entries[0].kind == ENTRY_NOOP


def test_vote_is_persisted_before_the_reply_and_survives_a_restart() -> None:
    storage = MemoryStorage()
    n = make("c", storage=storage)
    effects = persist_then(n.receive("a", RequestVote(3, 0, 0), 1.0), storage)
    kinds = [type(e) for e in effects]
    assert kinds.index(Persist) < kinds.index(Send)
    [(_, reply)] = sends(effects, VoteResponse)
    assert reply.granted and reply.term == 3
    # crash and restart: the vote for "a" in term 3 must still bind
    again = make("c", storage=storage)
    [(_, reply)] = sends(again.receive("b", RequestVote(3, 5, 1), 1.0), VoteResponse)
    assert not reply.granted
    [(_, reply)] = sends(again.receive("a", RequestVote(3, 0, 0), 1.0), VoteResponse)
    assert reply.granted  # the same candidate may ask again


def test_a_vote_in_the_current_term_is_persisted_too() -> None:
    storage = MemoryStorage()
    n = make("c", storage=storage)
    persist_then(n.receive("a", AppendEntries(2, 0, 0, (Entry(2, 1),), 0), 1.0), storage)
    # term 3: b's log is too short (rejected, term now 3), then a asks in the same term
    persist_then(n.receive("b", RequestVote(3, 0, 0), 9.0), storage)
    effects = persist_then(n.receive("a", RequestVote(3, 1, 2), 9.0), storage)
    [(_, reply)] = sends(effects, VoteResponse)
    assert reply.granted
    assert storage.state.term == 3 and storage.state.vote == "a"


def test_vote_requires_an_up_to_date_log() -> None:
    n = make("c")
    n.receive("a", AppendEntries(1, 0, 0, (Entry(1, 1), Entry(1, 2)), 0), 1.0)
    [(_, reply)] = sends(n.receive("b", RequestVote(5, 1, 1), 9.0), VoteResponse)
    assert not reply.granted  # shorter log, same last term
    [(_, reply)] = sends(n.receive("b", RequestVote(6, 1, 2), 9.0), VoteResponse)
    assert reply.granted  # higher last term wins


def test_leader_lease_ignores_disruptive_candidates_but_not_transfers() -> None:
    n = make("c")
    n.receive("a", Heartbeat(1, 0, 1), 1.0)
    assert sends(n.receive("b", RequestVote(2, 0, 0), 1.2)) == []
    assert n.term == 1
    [(_, reply)] = sends(n.receive("b", RequestVote(2, 0, 0, False, True), 1.2), VoteResponse)
    assert reply.granted and n.term == 2


def test_check_quorum_makes_an_isolated_leader_step_down() -> None:
    n = make()
    elect(n, 10.0)
    n.receive("b", HeartbeatResponse(n.term, 0), 10.5)
    n.timer("raft.election", 11.0)  # heard from b: stays
    assert n.role == LEADER
    n.timer("raft.election", 12.0)  # nobody since: steps down
    assert n.role == FOLLOWER and n.leader is None


def test_leader_does_not_commit_an_old_term_entry_by_counting_replicas() -> None:
    # Raft paper, figure 8: index 2 holds a term-2 entry; the leader of term 4 replicates it
    # to a majority, yet may only commit it together with an entry of its own term.
    storage = MemoryStorage()
    storage.apply(Persist(3, None, (Entry(1, 1), Entry(2, 2, ENTRY_COMMAND, ["put", "x", 2]))))
    n = make("a", storage=storage)
    elect(n, 10.0)
    assert n.term == 4 and n.log.last_index == 3  # the no-op of term 4 is at 3
    n.receive("b", AppendResponse(4, True, 2), 10.0)
    assert n.commit == 0, "committed an entry of term 2 by counting replicas"
    n.receive("b", AppendResponse(4, True, 3), 10.0)
    assert n.commit == 3 and n.sm.query("x") == 2


def test_follower_truncates_a_conflicting_suffix_and_hints_on_mismatch() -> None:
    n = make("c")
    n.receive("a", AppendEntries(1, 0, 0, (Entry(1, 1), Entry(1, 2), Entry(1, 3)), 1), 1.0)
    # a new leader of term 3 whose index 2 is of term 2
    [(_, r)] = sends(n.receive("b", AppendEntries(3, 2, 2, (Entry(3, 3),), 1), 2.0), AppendResponse)
    # "I may match up to 2, where my term is 1": the leader skips its entries of terms > 1
    assert not r.success and r.index == 2 and r.hint_term == 1
    effects = n.receive("b", AppendEntries(3, 1, 1, (Entry(2, 2), Entry(3, 3)), 1), 2.0)
    [persist] = [e for e in effects if type(e) is Persist]
    assert persist.truncate_from == 2 and [e.index for e in persist.entries] == [2, 3]
    assert [(e.index, e.term) for e in n.log.entries] == [(1, 1), (2, 2), (3, 3)]


def test_stale_and_duplicate_appends_never_truncate_matching_entries() -> None:
    n = make("c")
    full = AppendEntries(1, 0, 0, (Entry(1, 1), Entry(1, 2), Entry(1, 3)), 0)
    old = AppendEntries(1, 0, 0, (Entry(1, 1),), 0)
    n.receive("a", full, 1.0)
    effects = n.receive("a", old, 1.1)
    assert not [e for e in effects if type(e) is Persist]
    assert n.log.last_index == 3
    [(_, r)] = sends(effects, AppendResponse)
    assert r.success and r.index == 1


def test_followers_ack_only_after_persisting() -> None:
    n = make("c")
    effects = n.receive("a", AppendEntries(1, 0, 0, (Entry(1, 1),), 0), 1.0)
    kinds = [type(e) for e in effects]
    assert kinds.index(Persist) < kinds.index(Send)


def test_pipelining_and_batching_respect_the_window() -> None:
    config = RaftConfig(election_timeout=1.0, heartbeat_interval=0.1, max_batch_entries=3, max_inflight=2)
    n = make(config=config)
    elect(n, 10.0)
    n.receive("b", AppendResponse(n.term, True, 1), 10.0)  # probe -> replicate
    effects = n.propose_batch([(i, ["put", "k", i]) for i in range(10)], 10.0)
    to_b = [m for d, m in sends(effects, AppendEntries) if d == "b"]
    assert [len(m.entries) for m in to_b] == [3, 3]  # two batches in flight, then the window is full
    effects = n.receive("b", AppendResponse(n.term, True, 4), 10.1)
    assert [len(m.entries) for d, m in sends(effects, AppendEntries) if d == "b"] == [3]


def test_proposals_outcomes_are_decided_by_the_entry_committed_at_their_index() -> None:
    n = make()
    elect(n, 10.0)
    effects = n.propose("mine", ["put", "x", 1], 10.0)
    [queued] = [e for e in effects if type(e) is ProposalQueued]
    assert queued.index == 2
    # deposed before it committed; the new leader commits something else at index 2
    effects = n.receive("b", AppendEntries(5, 1, 1, (Entry(5, 2, ENTRY_NOOP, None),), 2), 11.0)
    [result] = [e for e in effects if type(e) is ProposalResult]
    assert result.request_id == "mine" and isinstance(result.error, ProposalDropped)


def test_proposals_on_followers_raise_not_leader_with_a_hint() -> None:
    n = make("c")
    n.receive("a", Heartbeat(1, 0, 1), 1.0)
    with pytest.raises(NotLeader) as info:
        n.propose("x", ["put", "x", 1], 1.0)
    assert info.value.leader == "a"


def test_strong_read_waits_for_a_quorum_round() -> None:
    n = make()
    elect(n, 10.0)
    n.receive("b", AppendResponse(n.term, True, 1), 10.0)  # commits the no-op
    effects = n.read("r1", "x", 10.0)
    assert not [e for e in effects if type(e) is ReadResult]
    [seq] = {m.seq for _, m in sends(effects, Heartbeat)}
    effects = n.receive("c", HeartbeatResponse(n.term, seq - 1), 10.1)  # an older round does not count
    assert not [e for e in effects if type(e) is ReadResult]
    effects = n.receive("c", HeartbeatResponse(n.term, seq), 10.1)
    [result] = [e for e in effects if type(e) is ReadResult]
    assert result.request_id == "r1" and result.error is None


def test_strong_read_waits_for_the_noop_then_fails_if_deposed() -> None:
    n = make()
    elect(n, 10.0)
    assert n.read("r1", "x", 10.0) == []  # the term's no-op is not committed yet
    effects = n.receive("b", Heartbeat(n.term + 1, 0, 1), 10.2)
    [result] = [e for e in effects if type(e) is ReadResult]
    assert isinstance(result.error, NotLeader) and result.error.leader == "b"
    with pytest.raises(NotLeader):
        n.read("r2", "x", 10.3)


def test_session_read_waits_until_the_session_index_is_applied() -> None:
    n = make("c")
    assert [type(e) for e in n.read("r", "x", 1.0, consistency="session", session_index=1)] == []
    effects = n.receive("a", AppendEntries(1, 0, 0, (Entry(1, 1, ENTRY_COMMAND, ["put", "x", 7]),), 1), 1.0)
    [result] = [e for e in effects if type(e) is ReadResult]
    assert result.value == 7 and result.index == 1
    [result] = n.read("r2", "x", 1.0, consistency="eventual")
    assert result.value == 7
    with pytest.raises(ConfigurationError):
        n.read("r3", "x", 1.0, consistency="linearizable-ish")


def test_snapshot_compacts_the_log_and_is_sent_in_chunks() -> None:
    config = RaftConfig(election_timeout=1.0, heartbeat_interval=0.1, snapshot_threshold=5, snapshot_trailing=0, snapshot_chunk=8)
    n = make(members=("a", "b"), config=config)
    elect(n, 10.0)
    effects = n.propose_batch([(i, ["put", f"k{i}", "v" * 5]) for i in range(6)], 10.0)
    effects = n.receive("b", AppendResponse(n.term, True, 7), 10.0)
    snaps = [e for e in effects if type(e) is PersistSnapshot]
    assert snaps and snaps[0].snapshot.index == 7 and n.log.offset == 7
    # a new, empty follower "b2" cannot get entries any more: it gets the snapshot in chunks
    f = make("b", members=("a", "b"), config=config)
    n.progress["b"].next = 1
    n.progress["b"].match = 0
    n.progress["b"].probe = True
    n.progress["b"].paused = False
    effects = n.receive("b", AppendResponse(n.term, False, 0, 0), 10.1)
    chunks = 0
    while True:
        [(_, msg)] = sends(effects, InstallSnapshot)
        chunks += 1
        assert len(msg.data) <= 8
        [(_, reply)] = sends(f.receive("a", msg, 10.2), SnapshotResponse)
        effects = n.receive("b", reply, 10.2)
        if msg.done:
            break
    assert chunks > 2
    assert f.sm.data == n.sm.data and f.applied == 7 and n.progress["b"].match == 7


def test_membership_changes_one_at_a_time() -> None:
    n = make()
    elect(n, 10.0)
    with pytest.raises(ConfigChangeInProgress):
        n.change_membership("m0", 10.0, add="d")  # no-op of the term not committed yet
    n.receive("b", AppendResponse(n.term, True, 1), 10.0)
    n.change_membership("m1", 10.0, add="d")
    assert n.voters == ("a", "b", "c", "d") and "d" in n.progress  # in force once appended
    with pytest.raises(ConfigChangeInProgress):
        n.change_membership("m2", 10.0, remove="b")
    n.receive("b", AppendResponse(n.term, True, 2), 10.0)
    assert n.commit == 1  # 2 of 4 is no majority any more
    effects = n.receive("c", AppendResponse(n.term, True, 2), 10.0)
    assert n.commit == 2
    assert [e.request_id for e in effects if type(e) is ProposalResult] == ["m1"]
    with pytest.raises(ConfigurationError):
        n.change_membership("m3", 10.0, add="d")


def test_removed_leader_steps_down_once_the_change_commits() -> None:
    n = make()
    elect(n, 10.0)
    n.receive("b", AppendResponse(n.term, True, 1), 10.0)
    n.change_membership("m", 10.0, remove="a")
    assert n.role == LEADER
    n.receive("b", AppendResponse(n.term, True, 2), 10.0)
    assert n.commit == 1  # the leader no longer counts itself
    n.receive("c", AppendResponse(n.term, True, 2), 10.0)
    assert n.commit == 2 and n.role == FOLLOWER
    assert n.timer("raft.election", 20.0) and n.role == FOLLOWER  # a non-voter never campaigns


def test_leadership_transfer_catches_up_then_sends_timeout_now() -> None:
    n = make()
    elect(n, 10.0)
    effects = n.transfer_leadership("b", 10.0)
    assert not sends(effects, TimeoutNow)  # b is behind: catch it up first
    with pytest.raises(TransferInProgress) as info:
        n.propose("p", ["put", "x", 1], 10.0)
    assert info.value.leader == "b"
    effects = n.receive("b", AppendResponse(n.term, True, 1), 10.1)
    assert sends(effects, TimeoutNow) == [("b", TimeoutNow(n.term))]
    # the target campaigns at once, flagged so that leases do not block it
    b = make("b")
    b.receive("a", AppendEntries(1, 0, 0, (Entry(1, 1, ENTRY_NOOP, None),), 1), 10.0)
    effects = b.receive("a", TimeoutNow(1), 10.2)
    assert b.role == CANDIDATE and b.term == 2
    assert all(m.transfer and not m.pre_vote for _, m in sends(effects, RequestVote))


def test_transfer_times_out_and_proposals_resume() -> None:
    n = make()
    elect(n, 10.0)
    n.transfer_leadership("c", 10.0)
    n.timer("raft.transfer", 11.0)
    assert [type(e) for e in n.propose("p", ["put", "x", 1], 11.0) if type(e) is ProposalQueued]


def test_restart_rebuilds_state_from_snapshot_and_log() -> None:
    config = RaftConfig(election_timeout=1.0, heartbeat_interval=0.1, snapshot_threshold=3, snapshot_trailing=0)
    storage = MemoryStorage()
    n = make(members=("a",), storage=storage, config=config)
    n.start(0.0)
    persist_then(n.timer("raft.election", 1.0), storage)
    for i in range(5):
        persist_then(n.propose(i, ["put", "k", i], 1.0), storage)
    assert storage.state.snapshot is not None
    again = make(members=("a",), storage=storage, config=config)
    assert again.applied == storage.state.snapshot.index
    again.start(2.0)
    again.timer("raft.election", 3.0)
    assert again.role == LEADER and again.sm.query("k") == 4


def test_timers_are_requested_not_read() -> None:
    n = make()
    [timer] = n.start(0.0)
    assert type(timer) is SetTimer and 1.0 <= timer.deadline < 2.0
    # a follower that heard from its leader re-arms instead of campaigning
    n.receive("b", Heartbeat(1, 0, 1), 1.0)
    effects = n.timer("raft.election", timer.deadline)
    assert n.role == FOLLOWER and [type(e) for e in effects] == [SetTimer]


def test_a_raising_state_machine_answers_the_proposer_and_keeps_going() -> None:
    class Fussy(KVStateMachine):
        def apply(self, index, command):
            if command == "boom":
                raise RuntimeError("boom")
            return super().apply(index, command)

    n = RaftNode("a", members=("a",), state_machine=Fussy(), rng=random.Random(1), config=CFG)
    n.start(0.0)
    n.timer("raft.election", 5.0)
    [result] = [e for e in n.propose("p1", "boom", 5.0) if type(e) is ProposalResult]
    assert isinstance(result.result, RuntimeError) and result.error is None
    [result] = [e for e in n.propose("p2", ["put", "x", 1], 5.0) if type(e) is ProposalResult]
    assert result.error is None and n.sm.query("x") == 1


def test_single_member_strong_read_needs_no_round_and_cancelled_reads_stay_silent() -> None:
    n = make(members=("a",))
    n.start(0.0)
    n.timer("raft.election", 5.0)
    n.propose("p", ["put", "x", 1], 5.0)
    [result] = n.read("r", "x", 5.0)
    assert result.value == 1 and result.index == n.applied
    f = make("c")
    assert f.read("s", "x", 1.0, consistency="session", session_index=5) == []
    f.cancel_read("s")
    effects = f.receive("a", AppendEntries(1, 0, 0, tuple(Entry(1, i) for i in range(1, 6)), 5), 1.0)
    assert not [e for e in effects if type(e) is ReadResult]


def test_out_of_order_snapshot_chunks_are_refused_with_the_wanted_offset() -> None:
    f = make("c")
    reply = lambda effects: sends(effects, SnapshotResponse)[0][1]  # noqa: E731
    assert reply(f.receive("a", InstallSnapshot(1, 9, 1, ("a", "b", "c"), 4, b"late", False), 1.0)).offset == 0
    assert reply(f.receive("a", InstallSnapshot(1, 9, 1, ("a", "b", "c"), 0, b"abcd", False), 1.0)).offset == 4
    r = reply(f.receive("a", InstallSnapshot(1, 9, 1, ("a", "b", "c"), 8, b"gap!", False), 1.0))
    assert (r.offset, r.done) == (4, False)
    assert f.applied == 0


def test_membership_and_transfer_arguments_are_checked() -> None:
    n = make()
    elect(n, 10.0)
    n.receive("b", AppendResponse(n.term, True, 1), 10.0)
    with pytest.raises(ConfigurationError):
        n.change_membership("m", 10.0)
    with pytest.raises(ConfigurationError):
        n.change_membership("m", 10.0, add="d", remove="b")
    with pytest.raises(ConfigurationError):
        n.change_membership("m", 10.0, remove="zz")
    with pytest.raises(ConfigurationError):
        n.transfer_leadership("zz", 10.0)
    assert n.transfer_leadership("a", 10.0) == []  # already the leader
    assert n.propose_batch([], 10.0) == []

