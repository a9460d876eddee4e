"""The synchronous façade in the design's shape: propose_value and read_consensus_value."""

from __future__ import annotations

import pytest

from phoenix_trio import NotLeader, RequestTimeout
from phoenix_trio.raft import Committed, Queued, RaftConfig, Session, SimCluster

CFG = RaftConfig(election_timeout=0.15, heartbeat_interval=0.03)


def test_propose_value_commits_or_queues() -> None:
    cluster = SimCluster(3, seed=1, config=CFG)
    cluster.wait_for_leader()
    committed = cluster.propose_value(["put", "k", 1])
    assert isinstance(committed, Committed) and committed.index >= 2 and committed.result is None
    assert cluster.propose_value(["cas", "k", 1, 2]).result is True
    queued = cluster.propose_value(["put", "k", 3], wait=False)
    assert isinstance(queued, Queued) and queued.index == committed.index + 2
    assert cluster.read_consensus_value("k") == 3  # strong read after the queued write committed


def test_not_leader_carries_the_known_leader() -> None:
    cluster = SimCluster(3, seed=2, config=CFG)
    leader = cluster.wait_for_leader()
    cluster.run(0.1)
    follower = next(m for m in cluster.members if m != leader)
    with pytest.raises(NotLeader) as info:
        cluster.propose_value(["put", "k", 1], node=follower)
    assert info.value.leader == leader
    with pytest.raises(NotLeader):
        cluster.read_consensus_value("k", node=follower)


def test_eventual_reads_may_be_stale_session_reads_are_not() -> None:
    cluster = SimCluster(3, seed=3, config=CFG)
    leader = cluster.wait_for_leader()
    follower = next(m for m in cluster.members if m != leader)
    cluster.propose_value(["put", "k", "old"])
    cluster.run(0.2)
    cluster.sim.partition([follower])  # the follower stops hearing about new writes
    session = Session()
    cluster.propose_value(["put", "k", "new"], session=session)
    assert cluster.read_consensus_value("k", consistency="eventual", node=follower) == "old"
    with pytest.raises(RequestTimeout):
        # read-your-writes: the follower cannot answer until it has the session's write
        cluster.read_consensus_value("k", consistency="session", node=follower, session=session, timeout=0.5)
    cluster.sim.heal()
    assert cluster.read_consensus_value("k", consistency="session", node=follower, session=session) == "new"


def test_no_leader_means_not_leader_for_strong_and_timeouts_are_reported() -> None:
    cluster = SimCluster(3, seed=4, config=CFG)
    with pytest.raises(NotLeader):
        cluster.propose_value(["put", "k", 1])  # nobody has been elected yet
    leader = cluster.wait_for_leader()
    cluster.sim.partition([leader])
    with pytest.raises(RequestTimeout):
        cluster.propose_value(["put", "k", 1], node=leader, timeout=0.1)
