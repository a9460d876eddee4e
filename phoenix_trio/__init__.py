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

__version__ = "0.1.0"
