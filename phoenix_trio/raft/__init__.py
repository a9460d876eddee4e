"""Raft consensus as a sans-IO core, plus its write-ahead log, state machines and tools.

The public names are re-exported here; the modules behind them are private. See
``docs/raft.md``.

- :class:`RaftNode` (the sans-IO core), :class:`RaftConfig`, :class:`DurableState`, :class:`Status`
- the effects it emits beyond ``Send``/``SetTimer``/``CancelTimer`` (``Persist`` ... ``RoleChanged``)
- the protocol messages and their codec (:func:`encode`, :func:`decode`)
- :class:`WriteAheadLog` (files, batched fsync), :class:`MemoryStorage`, and :class:`PersistBarrier`
  (the driver's side of the persist-before-respond contract)
- :class:`KVStateMachine` and the :class:`StateMachine` protocol
- :class:`TotalOrderGroup`: total-order broadcast on the log
- :func:`open_raft` (:class:`Raft`) and :func:`open_total_order_group` (:class:`TotalOrderBroadcast`):
  the Trio driver that runs a member on a node (``phoenix_trio.open_node``)
- :class:`SimCluster`: a cluster in the deterministic simulation with a synchronous façade
- :class:`SafetyChecker` and :func:`check_linearizable`: the verification tools
"""

from ._api import Committed as Committed
from ._api import Queued as Queued
from ._api import Session as Session
from ._barrier import PersistBarrier as PersistBarrier
from ._codec import decode as decode
from ._codec import encode as encode
from ._codec import MAX_MESSAGE_SIZE as MAX_MESSAGE_SIZE
from ._core import CANDIDATE as CANDIDATE
from ._core import DurableState as DurableState
from ._core import EVENTUAL as EVENTUAL
from ._core import FOLLOWER as FOLLOWER
from ._core import LEADER as LEADER
from ._core import PRE_CANDIDATE as PRE_CANDIDATE
from ._core import RaftConfig as RaftConfig
from ._core import RaftNode as RaftNode
from ._core import SESSION as SESSION
from ._core import Status as Status
from ._core import STRONG as STRONG
from ._effects import Persist as Persist
from ._effects import PersistSnapshot as PersistSnapshot
from ._effects import ProposalQueued as ProposalQueued
from ._effects import ProposalResult as ProposalResult
from ._effects import ReadResult as ReadResult
from ._effects import RoleChanged as RoleChanged
from ._driver import DriverStatistics as DriverStatistics
from ._driver import open_raft as open_raft
from ._driver import open_total_order_group as open_total_order_group
from ._driver import Raft as Raft
from ._driver import TotalOrderBroadcast as TotalOrderBroadcast
from ._errors import ConfigChangeInProgress as ConfigChangeInProgress
from ._errors import ProposalDropped as ProposalDropped
from ._errors import ProposalOutcomeUnknown as ProposalOutcomeUnknown
from ._errors import RaftError as RaftError
from ._errors import StorageCorrupt as StorageCorrupt
from ._errors import TransferInProgress as TransferInProgress
from ._invariants import InvariantViolation as InvariantViolation
from ._invariants import SafetyChecker as SafetyChecker
from ._kv import KVStateMachine as KVStateMachine
from ._kv import StateMachine as StateMachine
from ._linearizability import check_linearizable as check_linearizable
from ._linearizability import CheckBudgetExceeded as CheckBudgetExceeded
from ._linearizability import CheckResult as CheckResult
from ._linearizability import Operation as Operation
from ._linearizability import UNKNOWN as UNKNOWN
from ._messages import AppendEntries as AppendEntries
from ._messages import AppendResponse as AppendResponse
from ._messages import Entry as Entry
from ._messages import ENTRY_COMMAND as ENTRY_COMMAND
from ._messages import ENTRY_CONFIG as ENTRY_CONFIG
from ._messages import ENTRY_NOOP as ENTRY_NOOP
from ._messages import GroupSubmit as GroupSubmit
from ._messages import Heartbeat as Heartbeat
from ._messages import HeartbeatResponse as HeartbeatResponse
from ._messages import InstallSnapshot as InstallSnapshot
from ._messages import RequestVote as RequestVote
from ._messages import Snapshot as Snapshot
from ._messages import SnapshotResponse as SnapshotResponse
from ._messages import TimeoutNow as TimeoutNow
from ._messages import VoteResponse as VoteResponse
from ._simcluster import SimCluster as SimCluster
from ._storage import MemoryStorage as MemoryStorage
from ._tob import Deliver as Deliver
from ._tob import DeliveriesSkipped as DeliveriesSkipped
from ._tob import TotalOrderGroup as TotalOrderGroup
from ._wal import WriteAheadLog as WriteAheadLog
