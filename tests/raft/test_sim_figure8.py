"""Raft paper figure 8, scripted in the full simulation.

An entry X of an old term reaches a majority under a later leader L3 whose own no-op
does not. Correct Raft must not count X as committed: L2, whose log holds another
entry at X's index, can still win an election and overwrite X. A leader that committed
X by counting replicas would make the SafetyChecker fail (leader completeness /
state-machine safety): with that rule broken on purpose, this test fails with
"leader completeness: ... without committed entry".
"""

from __future__ import annotations

from phoenix_trio.raft import RaftConfig, SimCluster

CONFIG = RaftConfig(
    election_timeout=0.15,
    heartbeat_interval=0.03,
    pre_vote=False,
    check_quorum=False,
    max_batch_entries=1,  # X and the new leader's no-op travel in separate messages
)


def test_figure_8_an_old_term_entry_on_a_majority_is_not_committed_by_counting() -> None:
    cluster = SimCluster(5, seed=8, config=CONFIG, latency=(0.002, 0.002), fsync_delay=(0.001, 0.001))
    a = cluster.wait_for_leader()
    cluster.run(0.2)
    others = [m for m in cluster.members if m != a]
    b = others[0]
    rest = others[1:]
    # 1. A (term t1) gets X onto B only
    cluster.sim.partition([a, b], rest)
    x_index = cluster.node(a).log.last_index + 1
    cluster.submit_propose(a, ["put", "x", "X"], request_id="X")
    assert cluster.run_until(lambda: cluster.node(b).log.last_index == x_index, timeout=1.0)
    assert cluster.node(a).commit < x_index
    # 2. A dies; L2 is elected among the rest and appends its no-op at X's index, alone
    cluster.crash(a)
    assert cluster.run_until(lambda: cluster.leader() in rest, timeout=5.0)
    l2 = cluster.leader()
    cluster.sim.partition([l2])
    cluster.run(0.05)
    assert cluster.node(l2).log.last_index == x_index and cluster.node(l2).log.last_term > cluster.node(b).log.last_term
    cluster.crash(l2)
    c, d = [m for m in rest if m != l2]
    # 3. A comes back; A or B leads a later term and spreads X to C, but not its own no-op
    cluster.sim.heal()
    cluster.sim.partition([a, b, c], [d])
    cluster.restart(a)
    assert cluster.run_until(lambda: cluster.leader() in (a, b) and cluster.node(cluster.leader()).term > cluster.node(l2).term, timeout=10.0)
    l3 = cluster.leader()
    assert cluster.run_until(lambda: cluster.node(c).log.last_index >= x_index, timeout=2.0)
    cluster.sim.block(l3, c)  # C acknowledges X, then hears nothing more (no no-op of L3's term)
    cluster.run(0.2)
    assert cluster.node(c).log.term(x_index) == cluster.node(b).log.term(x_index)  # X is on A, B and C
    assert cluster.node(l3).commit < x_index, "X (an old-term entry) was committed by counting replicas"
    # 4. L3 and the other holder of its no-op die; L2 returns and can win with C and D,
    #    overwriting X: legal, because X never committed (the checker would object otherwise)
    cluster.crash(l3)
    cluster.crash(b if l3 == a else a)
    cluster.sim.heal()
    cluster.restart(l2)
    assert cluster.run_until(lambda: cluster.leader() in (l2, c, d), timeout=10.0)
    committed = cluster.propose_value(["put", "y", 1], timeout=5.0)
    assert committed.index > x_index
    cluster.run(0.5)
    survivors = [cluster.node(m) for m in (l2, c, d)]
    assert len({n.log.term(x_index) for n in survivors}) == 1
    cluster.check_final()
