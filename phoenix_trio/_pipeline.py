"""Pipelines: ordered processing chains through agents, possibly on several nodes.

``pipeline = await node.create_pipeline(["parse", "enrich", "store"])`` starts a
pipeline; ``await node.send_to_pipeline(pipeline.id, data)`` (or ``pipeline.send``)
feeds it; ``async for result in pipeline`` yields what leaves the last stage, **in the
order the messages entered**. ``await pipeline.aclose()`` (or leaving ``async with
pipeline``) drains and stops it; closing the node stops it too.

Stages
------
A stage is an agent id or a group name (then every message goes to one member, picked
by the node's load balancer: a stage with several workers), on any node. Each message
reaches a stage as a request of type ``phoenix.pipeline.process`` whose routing carries
the pipeline id, pattern ``pipeline`` and ordering ``sequential``; its data is the
pipeline input for the first stage and the previous stage's result after that. The stage
answers with ``await message.reply(result)``. To signal an error it answers with
``await stage_error(message, reason)`` (a reply of type ``phoenix.pipeline.stage.error``);
no answer within the stage timeout, an unreachable node or a missing agent are errors
too. :func:`serve_stage` runs a handler as a stage: its return value is the reply, an
exception is a stage error.

The coordinator (on the node that created the pipeline) sends each message to a stage,
takes the reply and sends the result on to the next stage; results that finish out of
order (several workers, retries) wait in a reorder buffer and leave in sequence order.

Error strategies (per pipeline, overridable per :class:`Stage`)
-----------------------------------------------------------------
- ``retry`` (default): send the message to the stage again after an exponential backoff
  with jitter (``retry_backoff`` doubling up to ``retry_backoff_max``), at most
  ``max_retries`` times; after that it is dead-lettered.
- ``skip``: drop the message (counted as ``skipped``); later messages carry on.
- ``dead_letter``: publish it on the dead-letter topic (default
  ``phoenix.pipeline.<id>.dead_letter``, type ``phoenix.pipeline.dead_letter``, data:
  pipeline, sequence, stage, target, error, attempts and the message's data at that
  stage); subscribe to read them.
- ``stop``: the pipeline stops: ``send_to_pipeline`` raises :class:`PipelineStopped`,
  messages in flight are abandoned (counted), and the output iterator yields what was
  already in order, then raises :class:`PipelineStopped`.

A message that failed and was retried may have been processed twice by that stage (the
first reply may simply have been late): stages see at-least-once processing.

Backpressure (what happens at the high-water mark)
---------------------------------------------------
At most ``window`` messages (default 1024) are inside the pipeline at once (in a stage,
in the reorder buffer, or finished but not yet taken by the output consumer). Further
messages wait in an input buffer of ``buffer_size`` (default 10,000). When that is full:

- ``buffer`` (default): ``send_to_pipeline`` raises :class:`~phoenix_trio.Backpressure`
  at once; nothing is dropped and nobody waits.
- ``block``: ``send_to_pipeline`` waits for room.
- ``drop``: the new message is discarded, counted in ``dropped``, and
  ``send_to_pipeline`` returns None instead of its sequence number.

A consumer that stops reading the output fills the window, then the input buffer: the
pipeline never grows without bound.

Reconfiguration
---------------
``add_stage``, ``remove_stage`` and ``replace_stage`` change the stages while traffic
flows. A message already sent to a stage finishes there and continues with the stage
that now follows it; a message waiting for a stage that is removed or replaced goes to
what takes its place; a message that has not yet reached an added stage goes through
it. ``remove_stage`` and ``replace_stage`` return once the old stage has nothing in
flight, so its agent can then be stopped. Nothing is lost, duplicated or reordered.

Monitoring
----------
:meth:`Pipeline.statistics` gives per-stage throughput, latency (mean, p50, p99 over the
last 1,024 replies), queue depth (waiting + in flight) and error counts. With
``monitoring=True`` the same figures are published every ``monitoring_interval`` seconds
(default 1 s) as ``phoenix.telemetry.metric.update`` messages on the topic
``phoenix.telemetry.pipeline.<id>``.
"""

from __future__ import annotations

import heapq
import inspect
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._errors import AgentNotFound, Backpressure, CircuitOpen, ConfigurationError, NodeUnreachable, PhoenixError
from ._ids import new_id
from ._message import DeliveryGuarantee, Message, QoSRequirements, RoutingMetadata, node_uri
from ._peer_protocol import FLAG_REQUEST, SendTemplate
from ._taxonomy import message_characteristics
from ._trace import _current as _current_trace

if TYPE_CHECKING:
    from ._node import Agent, Node

log = logging.getLogger(__name__)

PIPELINE_TYPE = "phoenix.pipeline.process"
STAGE_ERROR_TYPE = "phoenix.pipeline.stage.error"
RESULT_TYPE = "phoenix.pipeline.result"
DEAD_LETTER_TYPE = "phoenix.pipeline.dead_letter"
METRIC_TYPE = "phoenix.telemetry.metric.update"
ERROR_STRATEGIES = ("retry", "skip", "dead_letter", "stop")
BACKPRESSURES = ("buffer", "block", "drop")
LATENCY_SAMPLES = 1024


class PipelineError(PhoenixError):
    """A pipeline could not do what was asked."""


class PipelineStopped(PipelineError):
    """The pipeline stopped (its ``stop`` error strategy fired, or it was closed)."""

    def __init__(self, pipeline_id: str, reason: str) -> None:
        super().__init__(f"pipeline {pipeline_id} stopped: {reason}")
        self.pipeline_id = pipeline_id
        self.reason = reason


@attrs.frozen(slots=True)
class Stage:
    """A stage: ``target`` (agent id or group name) and optional per-stage settings.

    ``error_strategy`` and ``max_retries`` default to the pipeline's; ``timeout`` (seconds
    for one reply) to the pipeline's ``stage_timeout``; ``concurrency`` (messages in
    flight at this stage at once) to the pipeline's window.
    """

    target: str
    error_strategy: str | None = None
    max_retries: int | None = None
    timeout: float | None = None
    concurrency: int | None = None

    def __attrs_post_init__(self) -> None:
        if type(self.target) is not str or not 0 < len(self.target) <= 256:
            raise ConfigurationError("a stage target is an agent id or group name (1-256 characters)")
        if self.error_strategy is not None and self.error_strategy not in ERROR_STRATEGIES:
            raise ConfigurationError(f"error_strategy must be one of {', '.join(ERROR_STRATEGIES)}; got {self.error_strategy!r}")
        if self.max_retries is not None and (type(self.max_retries) is not int or self.max_retries < 0):
            raise ConfigurationError("max_retries must be an int >= 0")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigurationError("a stage timeout must be > 0")
        if self.concurrency is not None and (type(self.concurrency) is not int or self.concurrency < 1):
            raise ConfigurationError("stage concurrency must be an int >= 1")


@attrs.frozen(slots=True)
class PipelineResult:
    """One message leaving the pipeline: its sequence number (order of entry), the last
    stage's result, and the last stage's reply Message (None for a pipeline without stages)."""

    sequence: int
    data: Any
    message: Message | None


@attrs.frozen(slots=True)
class StageStatistics:
    index: int
    target: str
    error_strategy: str
    sent: int
    completed: int
    errors: int
    retries: int
    skipped: int
    dead_lettered: int
    waiting: int
    in_flight: int
    queue_depth: int
    throughput_per_s: float
    latency_mean_ms: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None


@attrs.frozen(slots=True)
class PipelineStatistics:
    id: str
    state: str
    stages: tuple[StageStatistics, ...]
    accepted: int
    completed: int
    dropped: int
    rejected: int
    skipped: int
    dead_lettered: int
    abandoned: int
    input_queued: int
    inside: int
    reorder_buffered: int
    output_queued: int
    window: int


# -- internals ------------------------------------------------------------------------------


class _StageState:
    __slots__ = (
        "spec", "target", "error_strategy", "max_retries", "timeout", "concurrency", "active", "queue", "calls",
        "templates", "sent", "completed", "errors", "retries", "skipped", "dead_lettered", "latencies",
        "mark_time", "mark_completed", "drained",
    )  # fmt: skip

    def __init__(self, spec: Stage, pipeline: Pipeline) -> None:
        self.spec = spec
        self.target = spec.target
        self.error_strategy = spec.error_strategy or pipeline.error_strategy
        self.max_retries = pipeline.max_retries if spec.max_retries is None else spec.max_retries
        self.timeout = spec.timeout or pipeline.stage_timeout
        self.concurrency = spec.concurrency or pipeline.window
        self.active = 0  # records assigned to this stage: dispatched, about to be, or in backoff
        self.queue: deque[_Record] = deque()  # waiting for concurrency
        self.calls: deque[_Call] = deque()  # in dispatch order, for timeouts
        self.templates: dict[tuple[str, bool], SendTemplate] = {}
        self.sent = self.completed = self.errors = self.retries = self.skipped = self.dead_lettered = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.mark_time = trio.current_time()
        self.mark_completed = 0
        self.drained = trio.lowlevel.ParkingLot()


class _Record:
    __slots__ = ("seq", "data", "entered", "stage", "waiting", "next", "attempt", "call", "reply")

    def __init__(self, seq: int, data: Any, entered: float) -> None:
        self.seq = seq
        self.data = data
        self.entered = entered
        self.stage: _StageState | None = None  # assigned to (in flight at) this stage
        self.waiting: _StageState | None = None  # queued for this stage
        self.next = 0  # index of the stage after the current one
        self.attempt = 0
        self.call: _Call | None = None
        self.reply: Message | None = None


class _Call:
    """One request to a stage, registered in the node's pending requests.

    The node resolves it like a ``node.request``: ``reply`` or ``error`` set, then
    ``event.set()`` (this object is its own event), which hands it to the coordinator.
    """

    __slots__ = ("pipeline", "record", "stage", "node", "target", "correlation_id", "started", "deadline", "reply", "error", "_set")

    def __init__(self, pipeline: Pipeline, record: _Record, stage: _StageState, agent_id: str, node: str | None, correlation_id: str, started: float) -> None:
        self.pipeline = pipeline
        self.record = record
        self.stage = stage
        self.target = agent_id
        self.node = node
        self.correlation_id = correlation_id
        self.started = started
        self.deadline = started + stage.timeout
        self.reply: Message | None = None
        self.error: Exception | None = None
        self._set = False

    @property
    def event(self) -> _Call:
        return self

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if not self._set:
            self._set = True
            self.pipeline._completed.append(self)
            self.pipeline._wake()


_SKIPPED = object()


class Pipeline:
    """A running pipeline. Made by ``node.create_pipeline``; see the module docstring."""

    def __init__(
        self,
        node: Node,
        stages: Sequence[str | Stage],
        *,
        error_strategy: str,
        backpressure: str,
        monitoring: bool,
        max_retries: int,
        retry_backoff: float,
        retry_backoff_max: float,
        stage_timeout: float,
        window: int,
        buffer_size: int,
        output: str | None,
        dead_letter_topic: str | None,
        monitoring_interval: float,
        pipeline_id: str | None,
        seed: int | None,
    ) -> None:
        if error_strategy not in ERROR_STRATEGIES:
            raise ConfigurationError(f"error_strategy must be one of {', '.join(ERROR_STRATEGIES)}; got {error_strategy!r}")
        if backpressure not in BACKPRESSURES:
            raise ConfigurationError(f"backpressure must be one of {', '.join(BACKPRESSURES)}; got {backpressure!r}")
        for name, value in (("window", window), ("buffer_size", buffer_size)):
            if type(value) is not int or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1")
        if type(max_retries) is not int or max_retries < 0:
            raise ConfigurationError("max_retries must be an int >= 0")
        if not (retry_backoff >= 0 and retry_backoff_max >= retry_backoff and stage_timeout > 0 and monitoring_interval > 0):
            raise ConfigurationError("retry_backoff, retry_backoff_max, stage_timeout and monitoring_interval must be positive")
        self.node = node
        self.id = pipeline_id or new_id()
        if self.id in node._pipelines:
            raise ConfigurationError(f"pipeline {self.id!r} already exists on this node")
        self.agent_id = f"pipeline/{self.id}"
        self.uri = node_uri(node.id, self.agent_id)
        self.error_strategy = error_strategy
        self.backpressure = backpressure
        self.monitoring = monitoring
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.stage_timeout = stage_timeout
        self.window = window
        self.buffer_size = buffer_size
        self.output = output
        self.dead_letter_topic = dead_letter_topic or f"phoenix.pipeline.{self.id}.dead_letter"
        self.telemetry_topic = f"phoenix.telemetry.pipeline.{self.id}"
        self.monitoring_interval = monitoring_interval
        from ._topics import validate_topic

        validate_topic(self.dead_letter_topic)
        validate_topic(self.telemetry_topic)
        self._rng = random.Random(seed)
        self.state = "running"
        self.stop_reason: str | None = None
        self._stages: list[_StageState] = [_StageState(_stage(s), self) for s in stages]
        self._input: deque[tuple[int, Any, float]] = deque()
        self._records: dict[int, _Record] = {}
        self._call_stages: dict[int, _StageState] = {}  # stages with calls to watch for timeouts
        self._draining: set[_StageState] = set()  # old stages someone waits to see empty
        self._ready: deque[_Record] = deque()
        self._completed: list[_Call] = []
        self._retries: list[tuple[float, int, _Record]] = []
        self._done: dict[int, Any] = {}  # reorder buffer: seq -> PipelineResult or _SKIPPED
        self._output: deque[PipelineResult] = deque()
        self._to_send: deque[PipelineResult] = deque()  # in order, for the output agent
        self._dead_letters: list[dict[str, Any]] = []
        self._next_seq = 0  # the next sequence number to hand out
        self._next_out = 0  # the next sequence number to leave
        self._inside = 0  # admitted and not yet released (taken by the consumer, skipped, or sent on)
        self._dirty = False
        self._lot = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()  # block: senders waiting for input room
        self._output_lot = trio.lowlevel.ParkingLot()
        self._idle = trio.lowlevel.ParkingLot()  # aclose waiting for the pipeline to empty
        self._cancel_scope: trio.CancelScope | None = None
        self._finished = trio.Event()
        self.accepted = self.completed = self.dropped = self.rejected = 0
        self.skipped = self.dead_lettered = self.abandoned = 0

    # -- feeding -----------------------------------------------------------------------------

    async def send(self, data: Any, *, wait: bool = True) -> int | None:
        """Feed ``data`` (or a Message's data) in; its sequence number, or None if dropped.

        At the input buffer's high-water mark: ``buffer`` raises
        :class:`~phoenix_trio.Backpressure`, ``block`` waits (``wait=False`` raises
        instead), ``drop`` discards it and returns None. Raises :class:`PipelineStopped`
        once the pipeline stopped or closes. A cancellation point.
        """
        if isinstance(data, Message):
            data = data.data
        while True:
            if self.state != "running":
                raise PipelineStopped(self.id, self.stop_reason or self.state)
            if len(self._input) < self.buffer_size:
                break
            if self.backpressure == "drop":
                self.dropped += 1
                await trio.lowlevel.checkpoint()
                return None
            if self.backpressure == "buffer" or not wait:
                self.rejected += 1
                raise Backpressure(self.agent_id, f"pipeline input buffer full ({self.buffer_size} messages)")
            await self._space.park()
        seq = self._next_seq
        self._next_seq += 1
        self.accepted += 1
        now = trio.current_time()
        self._input.append((seq, data, now))
        self._admit(now)
        self._wake()
        await trio.lowlevel.checkpoint_if_cancelled()
        return seq

    def _wake(self) -> None:
        self._dirty = True
        if self._lot:
            self._lot.unpark_all()

    # -- output ---------------------------------------------------------------------------------

    def __aiter__(self) -> Pipeline:
        return self

    async def __anext__(self) -> PipelineResult:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def receive(self) -> PipelineResult:
        """The next result in order; ``trio.EndOfChannel`` once closed and drained,
        :class:`PipelineStopped` once stopped by an error."""
        if self.output is not None:
            raise PipelineError(f"pipeline {self.id} sends its results to {self.output!r}")
        while not self._output:
            if self.state == "stopped":
                raise PipelineStopped(self.id, self.stop_reason or "stopped")
            if self._finished.is_set():
                raise trio.EndOfChannel
            await self._output_lot.park()
        await trio.lowlevel.checkpoint_if_cancelled()
        result = self._output.popleft()
        self._release(1)
        return result

    def _release(self, count: int) -> None:
        self._inside -= count
        self._wake()

    # -- reconfiguration -----------------------------------------------------------------------

    @property
    def stages(self) -> list[Stage]:
        return [s.spec for s in self._stages]

    async def add_stage(self, stage: str | Stage, index: int | None = None) -> None:
        """Insert ``stage`` at ``index`` (default: at the end) while traffic flows.

        Messages that have not yet passed that position go through the new stage."""
        new = _StageState(_stage(stage), self)
        index = len(self._stages) if index is None else index
        if not 0 <= index <= len(self._stages):
            raise IndexError(f"stage index {index} out of range")
        following = self._stages[index] if index < len(self._stages) else None
        self._stages.insert(index, new)
        if following is not None:
            # waiting for the stage that now follows the new one: not past the new one yet
            self._move_waiting(following, index)
        self._renumber("insert", index, None)
        self._wake()
        await trio.lowlevel.checkpoint()

    async def remove_stage(self, index: int) -> None:
        """Remove the stage at ``index``; returns once it has nothing in flight."""
        if not 0 <= index < len(self._stages):
            raise IndexError(f"stage index {index} out of range")
        old = self._stages.pop(index)
        self._move_waiting(old, index)
        self._renumber("remove", index, old)
        self._wake()
        await self._drain(old)

    async def replace_stage(self, index: int, stage: str | Stage) -> None:
        """Put ``stage`` in place of the stage at ``index``; returns once the old one has nothing in flight."""
        if not 0 <= index < len(self._stages):
            raise IndexError(f"stage index {index} out of range")
        new = _StageState(_stage(stage), self)
        old = self._stages[index]
        self._stages[index] = new
        self._move_waiting(old, index)
        self._renumber("replace", index, old)
        self._wake()
        await self._drain(old)

    def _move_waiting(self, stage: _StageState, index: int) -> None:
        """Records waiting for ``stage`` go to whatever is at ``index`` now."""
        waiting = list(stage.queue)
        stage.queue.clear()
        for record in waiting:
            record.waiting = None
            self._enqueue(record, index)

    def _renumber(self, op: str, index: int, old: _StageState | None) -> None:
        """After a change at ``index``, point every record's ``next`` into the new stage list."""
        position = {id(s): i for i, s in enumerate(self._stages)}
        for record in list(self._records.values()):
            current = record.stage or record.waiting
            if current is None:
                continue
            i = position.get(id(current))
            if i is not None:
                record.next = i + 1
            elif current is old:  # in flight at the stage just removed or replaced
                record.next = index + 1 if op == "replace" else index
            elif op == "insert" and record.next > index:  # in flight at a stage removed earlier
                record.next += 1
            elif op == "remove" and record.next > index:
                record.next -= 1

    async def _drain(self, stage: _StageState) -> None:
        self._draining.add(stage)
        try:
            while stage.active and self.state != "stopped" and not self._finished.is_set():
                await stage.drained.park()
        finally:
            self._draining.discard(stage)
        await trio.lowlevel.checkpoint()

    # -- the coordinator ------------------------------------------------------------------------

    async def _run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        node = self.node
        try:
            with trio.CancelScope() as scope:
                self._cancel_scope = scope
                async with node.agent(self.agent_id, capacity=min(self.buffer_size, 65536)) as agent, trio.open_nursery() as nursery:
                    nursery.start_soon(self._serve_remote, agent)
                    if self.monitoring:
                        nursery.start_soon(self._monitor)
                    task_status.started()
                    await self._coordinate()
        finally:
            node._pipelines.pop(self.id, None)
            for record in self._records.values():
                if record.call is not None:
                    node._pending_requests.pop(record.call.correlation_id, None)
            if self.state != "stopped":
                self.state = "closed"
            self._finished.set()
            self._output_lot.unpark_all()
            self._space.unpark_all()
            self._idle.unpark_all()
            for stage in [*self._stages, *self._draining]:
                stage.drained.unpark_all()

    async def _serve_remote(self, agent: Agent) -> None:
        """``send_to_pipeline`` from other nodes arrives as messages to the pipeline's agent.

        A full input buffer makes this wait (then the agent's inbox fills and the remote
        sender waits in turn) whatever the strategy, except ``drop``, which drops.
        """
        async for message in agent:
            while len(self._input) >= self.buffer_size and self.backpressure != "drop" and self.state == "running":
                await self._space.park()
            try:
                await self.send(message.data, wait=True)
            except (Backpressure, PipelineStopped) as exc:
                log.info("pipeline %s refused a message from %s: %s", self.id, message.source, exc)

    async def _coordinate(self) -> None:
        while True:
            if not self._dirty:
                deadline = self._next_deadline()
                with trio.move_on_at(deadline):
                    await self._lot.park()
            self._dirty = False
            now = trio.current_time()
            if self._completed:
                calls, self._completed = self._completed, []
                for call in calls:
                    self._on_call_done(call, now)
            self._expire(now)
            self._admit(now)
            while self._ready and self.state != "stopped":
                await self._dispatch(self._ready.popleft())
            if self._dead_letters:
                letters, self._dead_letters = self._dead_letters, []
                for letter in letters:
                    await self._publish_safely(self.dead_letter_topic, letter, DEAD_LETTER_TYPE)
            while self._to_send:
                result = self._to_send.popleft()
                try:
                    await self.node.send(self.output, result.data, type=RESULT_TYPE, source=self.uri)  # type: ignore[arg-type]
                except (AgentNotFound, NodeUnreachable, CircuitOpen) as exc:
                    log.warning("pipeline %s could not deliver result %d to %s: %s", self.id, result.sequence, self.output, exc)
                self._release(1)
            if self.state == "stopped" or (not self._records and not self._input):
                self._idle.unpark_all()

    def _next_deadline(self) -> float:
        deadline = self._retries[0][0] if self._retries else float("inf")
        for stage in self._stages_with_calls():
            calls = stage.calls
            while calls and calls[0]._set:
                calls.popleft()
            if calls:
                deadline = min(deadline, calls[0].deadline)
        return deadline

    def _stages_with_calls(self) -> list[_StageState]:
        for key in [k for k, s in self._call_stages.items() if not s.calls]:
            del self._call_stages[key]
        return list(self._call_stages.values())

    def _expire(self, now: float) -> None:
        retries = self._retries
        while retries and retries[0][0] <= now:
            _, _, record = heapq.heappop(retries)
            if record.stage is not None and self.state != "stopped":
                self._ready.append(record)
        for stage in self._stages_with_calls():
            calls = stage.calls
            while calls and (calls[0]._set or calls[0].deadline <= now):
                call = calls.popleft()
                if not call._set:
                    call._set = True
                    call.error = trio.TooSlowError(f"no reply from {call.target!r} within {stage.timeout:g} s")
                    self._on_call_done(call, now)

    def _admit(self, now: float) -> None:
        while self._input and self._inside < self.window and self.state != "stopped":
            seq, data, entered = self._input.popleft()
            record = _Record(seq, data, entered)
            self._records[seq] = record
            self._inside += 1
            self._enqueue(record, 0)
        if self._space and len(self._input) < self.buffer_size:
            self._space.unpark_all()

    def _enqueue(self, record: _Record, index: int) -> None:
        """Send ``record`` to the stage at ``index`` (or out, past the last stage)."""
        if index >= len(self._stages):
            self._finish(record, PipelineResult(record.seq, record.data, record.reply))
            return
        stage = self._stages[index]
        record.next = index + 1
        record.attempt = 0
        if stage.active < stage.concurrency:
            stage.active += 1
            record.stage = stage
            self._ready.append(record)
        else:
            record.waiting = stage
            stage.queue.append(record)

    async def _dispatch(self, record: _Record) -> None:
        stage = record.stage
        assert stage is not None
        node = self.node
        now = trio.current_time()
        try:
            agent_id, node_id = node._route(stage.target)
        except (AgentNotFound, CircuitOpen, NodeUnreachable) as exc:
            self._on_error(record, stage, f"{type(exc).__name__}: {exc}", now)
            return
        correlation_id = f"{self.id}/{record.seq}/{record.attempt}"
        call = _Call(self, record, stage, agent_id, node_id, correlation_id, now)
        record.call = call
        stage.calls.append(call)
        self._call_stages[id(stage)] = stage
        stage.sent += 1
        node._pending_requests[correlation_id] = call  # type: ignore[assignment]
        node.balancer.stats_for(agent_id).started()
        template = self._template(stage, agent_id, record.data.__class__ is bytes)
        try:
            if node_id is None:
                await node._deliver(agent_id, None, template, record.data, correlation_id, FLAG_REQUEST, True, node._local_reply)
            else:
                # Queued for the connection's writer, not written from here one by one: the
                # coordinator sends requests in bursts, and batches are what scale.
                connection = node._connections.get(node_id)
                if connection is None or connection.closed:
                    raise NodeUnreachable(node_id, "not connected")
                entry = (template, record.data, agent_id, _current_trace.get(), correlation_id, FLAG_REQUEST)
                if node.security is not None:
                    entry = node.security.outgoing(entry)
                if not connection.try_enqueue(entry):
                    await connection.enqueue(entry)
                await trio.lowlevel.checkpoint_if_cancelled()
        except (AgentNotFound, NodeUnreachable, Backpressure) as exc:
            if not call._set:
                call.error = exc
                call.set()

    def _template(self, stage: _StageState, agent_id: str, binary: bool) -> SendTemplate:
        key = (agent_id, binary)
        template = stage.templates.get(key)
        if template is None:
            traits = message_characteristics(PIPELINE_TYPE)
            template = SendTemplate(
                self.uri,
                PIPELINE_TYPE,
                "application/octet-stream" if binary else "application/json",
                DeliveryGuarantee.build("at_most_once", ordering="total", max_retries=stage.max_retries),
                RoutingMetadata(pattern="pipeline", target=agent_id, priority=traits.priority, pipeline_id=self.id, ordering="sequential"),
                QoSRequirements(priority=traits.priority, consistency=traits.consistency),
            )
            if len(stage.templates) > 1024:
                stage.templates.clear()
            stage.templates[key] = template
        return template

    def _on_call_done(self, call: _Call, now: float) -> None:
        node = self.node
        node._pending_requests.pop(call.correlation_id, None)
        record = call.record
        latency = now - call.started
        failed = call.error is not None or (call.reply is not None and call.reply.type == STAGE_ERROR_TYPE)
        node.balancer.stats_for(call.target).finished(latency, failed=failed)
        if record.call is not call or self.state == "stopped":
            return  # a late reply to an attempt that timed out, or the pipeline stopped
        record.call = None
        stage = call.stage
        if failed:
            if call.error is not None:
                reason = f"{type(call.error).__name__}: {call.error}"
            else:
                reason = _error_text(call.reply.data)  # type: ignore[union-attr]
            self._on_error(record, stage, reason, now)
            return
        stage.completed += 1
        stage.latencies.append(latency)
        record.data = call.reply.data  # type: ignore[union-attr]
        record.reply = call.reply
        self._leave_stage(record, stage)
        self._enqueue(record, record.next)

    def _leave_stage(self, record: _Record, stage: _StageState) -> None:
        record.stage = None
        stage.active -= 1
        while stage.queue and stage.active < stage.concurrency and stage in self._stages:
            waiting = stage.queue.popleft()
            waiting.waiting = None
            stage.active += 1
            waiting.stage = stage
            self._ready.append(waiting)
        if not stage.active:
            stage.drained.unpark_all()

    def _on_error(self, record: _Record, stage: _StageState, reason: str, now: float) -> None:
        stage.errors += 1
        strategy = stage.error_strategy
        if strategy == "retry" and record.attempt < stage.max_retries:
            record.attempt += 1
            stage.retries += 1
            delay = min(self.retry_backoff_max, self.retry_backoff * 2 ** (record.attempt - 1))
            delay *= 0.5 + 0.5 * self._rng.random()  # jitter: half to full backoff
            heapq.heappush(self._retries, (now + delay, record.seq, record))
            return
        index = self._stages.index(stage) if stage in self._stages else None
        self._leave_stage(record, stage)
        if strategy == "stop":
            self._stop(f"stage {index if index is not None else '(removed)'} ({stage.target}) failed on message {record.seq}: {reason}")
            return
        if strategy == "skip":
            stage.skipped += 1
            self.skipped += 1
        else:  # dead_letter, or retry out of attempts
            stage.dead_lettered += 1
            self.dead_lettered += 1
            self._dead_letters.append(
                {
                    "pipeline": self.id,
                    "sequence": record.seq,
                    "stage": index,
                    "target": stage.target,
                    "error": reason,
                    "attempts": record.attempt + 1,
                    "data": record.data,
                }
            )
        self._finish(record, _SKIPPED)

    def _finish(self, record: _Record, outcome: Any) -> None:
        """``record`` left the pipeline (or was skipped): release what is now in order."""
        self._records.pop(record.seq, None)
        self._done[record.seq] = outcome
        released = 0
        while self._next_out in self._done:
            out = self._done.pop(self._next_out)
            self._next_out += 1
            if out is _SKIPPED:
                released += 1
                continue
            self.completed += 1
            if self.output is None:
                self._output.append(out)
                if self._output_lot:
                    self._output_lot.unpark_all()
            else:
                self._to_send.append(out)
        if released:
            self._release(released)

    def _stop(self, reason: str) -> None:
        self.state = "stopped"
        self.stop_reason = reason
        log.warning("pipeline %s stopped: %s", self.id, reason)
        self.abandoned += len(self._records) + len(self._input)
        for record in self._records.values():
            if record.call is not None:
                self.node._pending_requests.pop(record.call.correlation_id, None)
                record.call._set = True
        self._input.clear()
        self._ready.clear()
        self._space.unpark_all()
        self._output_lot.unpark_all()
        self._idle.unpark_all()
        for stage in [*self._stages, *self._draining]:
            stage.drained.unpark_all()

    # -- monitoring -----------------------------------------------------------------------------

    async def _monitor(self) -> None:
        while True:
            await trio.sleep(self.monitoring_interval)
            stats = self.statistics()
            now = trio.current_time()
            for stage in self._stages:
                stage.mark_time = now
                stage.mark_completed = stage.completed
            metrics = _metrics(stats)
            self.node.emit_telemetry("pipeline", metrics)  # the node's telemetry stream, too
            await self._publish_safely(self.telemetry_topic, metrics, METRIC_TYPE)

    async def _publish_safely(self, topic: str, data: Any, type_: str) -> None:
        try:
            await self.node.publish(topic, data, type=type_, source=self.uri)
        except PhoenixError as exc:
            log.warning("pipeline %s could not publish on %s: %s", self.id, topic, exc)

    def statistics(self) -> PipelineStatistics:
        now = trio.current_time()
        stages = []
        for index, stage in enumerate(self._stages):
            elapsed = now - stage.mark_time
            latencies = sorted(stage.latencies)
            waiting = len(stage.queue)
            stages.append(
                StageStatistics(
                    index,
                    stage.target,
                    stage.error_strategy,
                    stage.sent,
                    stage.completed,
                    stage.errors,
                    stage.retries,
                    stage.skipped,
                    stage.dead_lettered,
                    waiting,
                    stage.active,
                    waiting + stage.active,
                    (stage.completed - stage.mark_completed) / elapsed if elapsed > 0 else 0.0,
                    sum(latencies) / len(latencies) * 1e3 if latencies else None,
                    latencies[len(latencies) // 2] * 1e3 if latencies else None,
                    latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3 if latencies else None,
                )
            )
        return PipelineStatistics(
            self.id,
            self.state,
            tuple(stages),
            self.accepted,
            self.completed,
            self.dropped,
            self.rejected,
            self.skipped,
            self.dead_lettered,
            self.abandoned,
            len(self._input),
            self._inside,
            len(self._done),
            len(self._output),
            self.window,
        )

    # -- closing ---------------------------------------------------------------------------------

    async def aclose(self, *, timeout: float = 30.0) -> None:
        """Stop accepting messages, wait (up to ``timeout``) until every accepted message
        has left the last stage, then stop. Results not yet taken can still be read;
        iteration then ends. Messages still inside after the timeout are abandoned."""
        if self.state == "running":
            self.state = "closing"
            self.stop_reason = "closed"
            with trio.move_on_after(timeout):
                while (self._records or self._input) and self._cancel_scope is not None and not self._finished.is_set():
                    self._wake()
                    await self._idle.park()
            self.abandoned += len(self._records) + len(self._input)
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await self._finished.wait()

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _stage(spec: str | Stage) -> Stage:
    if isinstance(spec, Stage):
        return spec
    if isinstance(spec, str):
        return Stage(spec)
    raise ConfigurationError(f"a stage is an agent id, a group name or a Stage, not {type(spec).__name__}")


def _error_text(data: Any) -> str:
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    return str(data)


def _metrics(stats: PipelineStatistics) -> dict[str, Any]:
    return {
        "metric": "pipeline",
        "pipeline": stats.id,
        "state": stats.state,
        "accepted": stats.accepted,
        "completed": stats.completed,
        "dropped": stats.dropped,
        "rejected": stats.rejected,
        "skipped": stats.skipped,
        "dead_lettered": stats.dead_lettered,
        "input_queued": stats.input_queued,
        "inside": stats.inside,
        "reorder_buffered": stats.reorder_buffered,
        "output_queued": stats.output_queued,
        "stages": [
            {
                "index": s.index,
                "target": s.target,
                "throughput_per_s": round(s.throughput_per_s, 1),
                "latency_mean_ms": s.latency_mean_ms,
                "latency_p50_ms": s.latency_p50_ms,
                "latency_p99_ms": s.latency_p99_ms,
                "queue_depth": s.queue_depth,
                "in_flight": s.in_flight,
                "completed": s.completed,
                "errors": s.errors,
                "retries": s.retries,
                "skipped": s.skipped,
                "dead_lettered": s.dead_lettered,
            }
            for s in stats.stages
        ],
    }


# -- the node's entry points ----------------------------------------------------------------------


async def create_pipeline(
    node: Node,
    stages: Sequence[str | Stage],
    *,
    error_strategy: str = "retry",
    backpressure: str = "buffer",
    monitoring: bool = True,
    max_retries: int = 3,
    retry_backoff: float = 0.05,
    retry_backoff_max: float = 2.0,
    stage_timeout: float = 30.0,
    window: int = 1024,
    buffer_size: int = 10_000,
    output: str | None = None,
    dead_letter_topic: str | None = None,
    monitoring_interval: float = 1.0,
    pipeline_id: str | None = None,
    seed: int | None = None,
) -> Pipeline:
    """Start a pipeline through ``stages`` on ``node`` (see the module docstring).

    ``output``: an agent id or group to send results to (type ``phoenix.pipeline.result``,
    in order) instead of iterating the pipeline. ``seed`` seeds the retry jitter.
    """
    if isinstance(stages, str):
        raise ConfigurationError("stages is a list of agent ids, group names or Stage objects")
    if node._nursery is None or node.closed:
        raise ConfigurationError("the node is not running")
    pipeline = Pipeline(
        node,
        list(stages),
        error_strategy=error_strategy,
        backpressure=backpressure,
        monitoring=monitoring,
        max_retries=max_retries,
        retry_backoff=retry_backoff,
        retry_backoff_max=retry_backoff_max,
        stage_timeout=stage_timeout,
        window=window,
        buffer_size=buffer_size,
        output=output,
        dead_letter_topic=dead_letter_topic,
        monitoring_interval=monitoring_interval,
        pipeline_id=pipeline_id,
        seed=seed,
    )
    node._pipelines[pipeline.id] = pipeline
    try:
        await node._nursery.start(pipeline._run)
    except BaseException:
        node._pipelines.pop(pipeline.id, None)
        raise
    return pipeline


async def send_to_pipeline(
    node: Node, pipeline_id: str, message: Any, *, wait: bool = True, delivery: str = "at_most_once"
) -> int | None:
    """Feed ``message`` into pipeline ``pipeline_id``: directly if it runs on ``node``,
    else as a ``phoenix.pipeline.process`` message to its coordinator's agent
    (``pipeline/<id>``) on whichever node runs it (returns None then). ``delivery`` is
    that message's guarantee: ``at_least_once`` survives lost connections but may feed
    a message twice if the pipeline stays full past the delivery timeout."""
    pipeline = node._pipelines.get(pipeline_id)
    if pipeline is not None:
        return await pipeline.send(message, wait=wait)
    if isinstance(message, Message):
        message = message.data
    try:
        await node.send(f"pipeline/{pipeline_id}", message, type=PIPELINE_TYPE, wait=wait, delivery=delivery)
    except AgentNotFound:
        raise PipelineError(f"no pipeline {pipeline_id!r} in the cluster") from None
    return None


async def stage_error(message: Message, reason: Any) -> None:
    """Answer a pipeline message with an error: the pipeline's error strategy takes over."""
    await message.reply({"error": str(reason)}, type=STAGE_ERROR_TYPE)


async def serve_stage(agent: Agent, handler: Callable[[Any], Any] | Callable[[Any], Awaitable[Any]], *, pass_message: bool = False) -> None:
    """Run ``handler`` as a pipeline stage on ``agent`` until the agent closes.

    For each request the agent receives, ``handler(data)`` (or ``handler(message)`` with
    ``pass_message=True``; sync or async) computes the result, which is the reply. An
    exception becomes a stage error (:func:`stage_error`). Messages that are not requests
    are ignored.
    """
    async for message in agent:
        if not message.is_request:
            continue
        try:
            result = handler(message if pass_message else message.data)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            await stage_error(message, f"{type(exc).__name__}: {exc}")
        else:
            await message.reply(result)


__all__ = [
    "DEAD_LETTER_TYPE",
    "METRIC_TYPE",
    "PIPELINE_TYPE",
    "Pipeline",
    "PipelineError",
    "PipelineResult",
    "PipelineStatistics",
    "PipelineStopped",
    "RESULT_TYPE",
    "STAGE_ERROR_TYPE",
    "Stage",
    "StageStatistics",
    "create_pipeline",
    "send_to_pipeline",
    "serve_stage",
    "stage_error",
]
