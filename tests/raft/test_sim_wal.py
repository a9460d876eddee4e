"""Simulated clusters whose members persist to real write-ahead logs and recover from disk."""

from __future__ import annotations

import random
from pathlib import Path

from phoenix_trio.raft import SimCluster, WriteAheadLog

from .harness import FAST, Nemesis, Workload, propose_until_committed


class WalStorage:
    """Storage for SimCluster backed by a WriteAheadLog; every (re)start recovers from disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.wal: WriteAheadLog | None = None
        self.recoveries = 0

    def apply(self, effect) -> None:
        assert self.wal is not None
        self.wal.persist([effect])

    def load(self):
        if self.wal is not None:
            self.wal.close()
        self.wal = WriteAheadLog.open(self.directory, fsync=False)
        self.recoveries += 1
        return self.wal.load()


def test_wal_backed_cluster_survives_crashes_and_recovers_from_files(tmp_path: Path) -> None:
    restarts = 0
    for seed in range(6):
        rng = random.Random(seed)
        stores: dict = {}

        def storage(node_id, seed=seed):
            stores[node_id] = WalStorage(tmp_path / str(seed) / str(node_id))
            return stores[node_id]

        cluster = SimCluster(3, seed=seed, config=FAST, loss=0.02, storage=storage)
        workload = Workload(cluster, random.Random(rng.getrandbits(64)))
        nemesis = Nemesis(cluster, random.Random(rng.getrandbits(64)))
        cluster.run(3.0)
        nemesis.stop_and_heal()
        propose_until_committed(cluster, ["put", "after", seed], deadline=cluster.sim.now + 3.0)
        workload.active = False
        cluster.run(1.0)
        cluster.check_final()
        workload.check()
        restarts += sum(s.recoveries - 1 for s in stores.values())
    assert restarts >= 5  # members really came back from their files
    assert any(p.suffix == ".snap" for p in tmp_path.rglob("*"))
