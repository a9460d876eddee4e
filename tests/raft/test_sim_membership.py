"""Membership changes (one server at a time) and leadership transfer in the simulation, under faults."""

from __future__ import annotations

import random

import pytest

from phoenix_trio.raft import LEADER, RaftConfig, SimCluster

from .harness import FAST, Nemesis, Workload, change_until_committed, propose_until_committed


@pytest.mark.parametrize("seed", range(16))
def test_add_and_remove_servers_under_faults(seed: int) -> None:
    membership_run(seed)


@pytest.mark.slow
@pytest.mark.parametrize("block", range(5))
def test_add_and_remove_servers_soak(block: int) -> None:
    for seed in range(1000 + block * 100, 1000 + (block + 1) * 100):
        try:
            membership_run(seed)
        except BaseException:
            print(f"\nFAILING MEMBERSHIP SEED: {seed}")
            raise


def membership_run(seed: int) -> None:
    rng = random.Random(seed)
    cluster = SimCluster(3, seed=seed, config=FAST, loss=0.02, duplicate=0.01, codec=seed % 2 == 0)
    workload = Workload(cluster, random.Random(rng.getrandbits(64)))
    nemesis = Nemesis(cluster, random.Random(rng.getrandbits(64)), period=(0.2, 0.8), max_down=1)
    cluster.run(0.5)
    cluster.start_node("n3")  # a new, empty server: members=()
    change_until_committed(cluster, add="n3", deadline=cluster.sim.now + 20)
    cluster.run(0.5)
    change_until_committed(cluster, remove="n0", deadline=cluster.sim.now + 20)
    cluster.run(0.5)
    nemesis.stop_and_heal()
    propose_until_committed(cluster, ["put", "final", seed], deadline=cluster.sim.now + 5)
    workload.active = False
    cluster.run(1.0)
    leader = cluster.node(cluster.wait_for_leader())
    assert set(leader.voters) == {"n1", "n2", "n3"}
    for node_id in ("n1", "n2", "n3"):
        node = cluster.node(node_id)
        assert cluster.run_until(lambda n=node: n.applied == leader.commit, timeout=3.0)
        assert set(node.voters) == {"n1", "n2", "n3"}
        assert node.sm.data == leader.sm.data
    assert cluster.node("n0").role != LEADER
    cluster.check_final()
    workload.check()


def test_removed_server_does_not_disrupt_the_cluster() -> None:
    cluster = SimCluster(3, seed=99, config=RaftConfig(election_timeout=0.15, heartbeat_interval=0.03))
    leader = cluster.wait_for_leader()
    victim = next(m for m in cluster.members if m != leader)
    cluster.sim.partition([victim])  # it never learns it was removed
    change_until_committed(cluster, remove=victim, deadline=5.0)
    cluster.sim.heal()
    term = cluster.node(leader).term
    cluster.run(3.0)  # the removed server times out over and over
    assert cluster.leader() == leader and cluster.node(leader).term == term
    cluster.propose_value(["put", "x", 1])


def test_leadership_transfer_moves_the_leader_without_losing_writes() -> None:
    cluster = SimCluster(5, seed=3, config=FAST)
    old = cluster.wait_for_leader()
    for i in range(20):
        cluster.propose_value(["put", "k", i])
    target = next(m for m in cluster.members if m != old)
    cluster.submit(old, "t", lambda n, now: n.transfer_leadership(target, now))
    assert cluster.run_until(lambda: cluster.leader() == target, timeout=1.0)
    assert cluster.read_consensus_value("k") == 19
    cluster.propose_value(["put", "k", 20])
    assert cluster.read_consensus_value("k") == 20
