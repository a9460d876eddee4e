"""phoenix_trio: the Phoenix communication layer for distributed agent systems, on Trio.

The public surface is what this module re-exports, plus the documented subpackages
(:mod:`phoenix_trio.core` for the C hot path, :mod:`phoenix_trio.sim` for deterministic
simulation of the sans-IO protocol cores). Everything else is private.
"""

from ._errors import AgentNotFound as AgentNotFound
from ._errors import Backpressure as Backpressure
from ._errors import BadMagic as BadMagic
from ._errors import ChecksumMismatch as ChecksumMismatch
from ._errors import CircuitOpen as CircuitOpen
from ._errors import ConfigurationError as ConfigurationError
from ._errors import DecodeError as DecodeError
from ._errors import DeliveryFailed as DeliveryFailed
from ._errors import EncodeError as EncodeError
from ._errors import FrameError as FrameError
from ._errors import FrameTooLarge as FrameTooLarge
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import MalformedBatch as MalformedBatch
from ._errors import NodeUnreachable as NodeUnreachable
from ._errors import NotLeader as NotLeader
from ._errors import PhoenixError as PhoenixError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import RequestTimeout as RequestTimeout
from ._errors import ReservedFlags as ReservedFlags
from ._errors import SecurityError as SecurityError
from ._errors import UnsupportedVersion as UnsupportedVersion
from ._errors import ValidationError as ValidationError

from ._flow import FlowControl as FlowControl
from ._flow import FlowStatistics as FlowStatistics
from ._inbox import Inbox as Inbox
from ._inbox import InboxStatistics as InboxStatistics
from ._membership import MemberEvent as MemberEvent
from ._node import Agent as Agent
from ._node import MemberView as MemberView
from ._node import Node as Node
from ._node import NodeConfig as NodeConfig
from ._node import open_node as open_node
from ._pipeline import DEAD_LETTER_TYPE as DEAD_LETTER_TYPE
from ._pipeline import METRIC_TYPE as METRIC_TYPE
from ._pipeline import PIPELINE_TYPE as PIPELINE_TYPE
from ._pipeline import RESULT_TYPE as RESULT_TYPE
from ._pipeline import STAGE_ERROR_TYPE as STAGE_ERROR_TYPE
from ._pipeline import Pipeline as Pipeline
from ._pipeline import PipelineError as PipelineError
from ._pipeline import PipelineResult as PipelineResult
from ._pipeline import PipelineStatistics as PipelineStatistics
from ._pipeline import PipelineStopped as PipelineStopped
from ._pipeline import Stage as Stage
from ._pipeline import StageStatistics as StageStatistics
from ._pipeline import serve_stage as serve_stage
from ._pipeline import stage_error as stage_error
from ._pubsub import PUBLISH_TYPE as PUBLISH_TYPE
from ._pubsub import PubSub as PubSub
from ._pubsub import PubSubStatistics as PubSubStatistics
from ._pubsub import Subscription as Subscription
from ._pubsub import SubscriptionStatistics as SubscriptionStatistics
from ._service import Service as Service
from ._topics import InvalidTopic as InvalidTopic
from ._topics import TopicTrie as TopicTrie
from ._topics import pattern_matches as pattern_matches
from ._topics import validate_pattern as validate_pattern
from ._topics import validate_topic as validate_topic
from ._transport import BroadcastResult as BroadcastResult
from ._transport import InProcessTransport as InProcessTransport
from ._transport import TcpTransport as TcpTransport
from ._transport import Transport as Transport
from ._service import ServiceStatistics as ServiceStatistics
from ._message import EXTENSION_ATTRIBUTES as EXTENSION_ATTRIBUTES
from ._message import DeliveryGuarantee as DeliveryGuarantee
from ._message import Message as Message
from ._message import QoSRequirements as QoSRequirements
from ._message import RoutingMetadata as RoutingMetadata
from ._message import SecurityInfo as SecurityInfo
from ._message import local_node_id as local_node_id
from ._message import validate_message as validate_message
from ._taxonomy import CONTROL_PLANE as CONTROL_PLANE
from ._taxonomy import DATA_PLANE as DATA_PLANE
from ._taxonomy import DEFAULT_CHARACTERISTICS as DEFAULT_CHARACTERISTICS
from ._taxonomy import OBSERVABILITY as OBSERVABILITY
from ._taxonomy import Characteristics as Characteristics
from ._taxonomy import is_valid_type as is_valid_type
from ._taxonomy import message_characteristics as message_characteristics
from ._taxonomy import message_class as message_class
from ._taxonomy import validate_type as validate_type
from ._trace import TraceContext as TraceContext
from ._trace import current_trace as current_trace
from ._trace import use_trace as use_trace
from ._vclock import Causality as Causality
from ._vclock import LocalClock as LocalClock
from ._vclock import VectorClock as VectorClock

__version__ = "0.1.0"
