"""Deterministic simulation of Raft clusters under faults, with safety checked continuously.

Each seed picks a cluster size (3 or 5), network conditions and a fault schedule; the
:class:`SafetyChecker` runs after every event, clients record a history that must be
linearizable, and after the faults heal the cluster must elect a leader and commit.
A failing seed prints itself; ``run_seed(seed)`` replays it exactly.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys

import attrs
import pytest

from phoenix_trio.raft import LEADER, SimCluster

from .harness import FAST, Nemesis, Workload, propose_until_committed

FAST_SEEDS = 1000


def run_seed(seed: int, *, fault_time: float = 8.0, verbose: bool = False) -> dict:
    rng = random.Random(seed)
    size = rng.choice([3, 3, 5])
    config = attrs.evolve(FAST, pre_vote=rng.random() < 0.7, check_quorum=rng.random() < 0.7)
    # slow disks in some seeds: a wide window in which a crash loses unsynced writes. Raft
    # needs broadcast time (fsync + round trip + fsync) well below the election timeout,
    # so those seeds use longer timeouts, as a deployment on such disks would.
    slow_disk = rng.random() < 0.5
    if slow_disk:
        config = attrs.evolve(config, election_timeout=0.4, heartbeat_interval=0.08)
    cluster = SimCluster(
        size,
        seed=seed,
        config=config,
        loss=rng.choice([0.0, 0.01, 0.05]),
        duplicate=rng.choice([0.0, 0.02]),
        latency=(0.001, rng.choice([0.004, 0.02])),
        codec=seed % 4 == 0,
        fsync_delay=(0.002, 0.03) if slow_disk else (0.0002, 0.002),
    )
    workload = Workload(cluster, random.Random(rng.getrandbits(64)), clients=rng.choice([2, 3, 4]))
    nemesis = Nemesis(cluster, random.Random(rng.getrandbits(64)))
    cluster.run(fault_time)
    nemesis.stop_and_heal()
    # liveness: a leader within a few election timeouts, and a proposal commits
    timeout = cluster.config.election_timeout * 6  # measured: at most 3.4 over 3000 seeds
    leader = cluster.wait_for_leader(timeout=timeout)
    committed = propose_until_committed(cluster, ["put", "liveness", seed], deadline=cluster.sim.now + 2.0)
    assert committed.index > 0
    workload.active = False
    cluster.run(1.5)
    # convergence: every member applied the same prefix and holds the same state
    nodes = cluster.alive_nodes()
    assert len(nodes) == size
    commit = max(n.commit for n in nodes)
    assert cluster.run_until(lambda: all(n.applied == commit for n in cluster.alive_nodes()), timeout=3.0), [
        n.status() for n in nodes
    ]
    states = {n.id: n.sm.snapshot() for n in nodes}
    assert len(set(states.values())) == 1, "replicas diverged"
    assert sum(1 for n in nodes if n.role == LEADER) == 1
    cluster.check_final()
    workload.check()
    if verbose:
        print(seed, size, cluster.sim.stats, nemesis.actions)
    trace = repr((workload.history(), nemesis.actions, cluster.sim.stats, [n.status() for n in nodes]))
    return {
        "fingerprint": hashlib.sha256(trace.encode()).hexdigest(),
        "ops": workload.completed,
        "events": cluster.checker.checks,
        "leader": leader,
        "terms": max(n.term for n in nodes),
        "snapshots": max(n.status().snapshot_index for n in nodes),
    }


def _run(seed: int) -> None:
    try:
        run_seed(seed)
    except BaseException:
        print(f"\nFAILING SEED: {seed}  (replay: python -c 'from tests.raft.test_sim_raft import run_seed; run_seed({seed}, verbose=True)')")
        raise


@pytest.mark.parametrize("block", range(20))
def test_simulated_seeds(block: int) -> None:
    per_block = FAST_SEEDS // 20
    for seed in range(block * per_block, (block + 1) * per_block):
        _run(seed)


@pytest.mark.slow
@pytest.mark.parametrize("block", range(20))
def test_simulated_seeds_soak(block: int) -> None:
    for seed in range(10_000 + block * 500, 10_000 + (block + 1) * 500):
        _run(seed)


def test_same_seed_replays_exactly_even_in_another_process() -> None:
    first = run_seed(12345)
    assert first == run_seed(12345)
    assert first["fingerprint"] != run_seed(12346)["fingerprint"]
    # a fresh interpreter with another string-hash seed replays the very same run
    code = "from tests.raft.test_sim_raft import run_seed; print(run_seed(12345)['fingerprint'])"
    env = dict(os.environ, PYTHONHASHSEED="4242")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == first["fingerprint"]
