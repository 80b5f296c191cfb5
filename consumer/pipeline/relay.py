"""The relay: wires source → codec → handlers → Klaviyo → offsets, and owns the lifecycle.

Threads: the event loop (everything below), the Kafka source thread (the consumer), the
dead-letter producer's poll thread. Tasks: one per busy key lane, one per sealed bulk job, one
per dead-letter write, the commit loop, the reachability probe.

An event is *finished* when every Klaviyo request of it was accepted, or when its record was
written to the dead-letter topic and the broker acknowledged it; only then does its offset count
towards the partition's contiguous watermark, which the commit loop commits every
``commit_interval_seconds``. A revoke drains the partition's started events (bounded by the
drain timeout) and commits its watermark; a loss (or a revoke the loop could not answer in
time) drops its work uncommitted; a fatal Klaviyo
answer halts dispatching and committing; SIGTERM/SIGINT drains everything, commits and leaves
the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import signal
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Histogram

from consumer.codec import DecodedEvent, DecodeError, Decoder, RegistryUnavailable
from consumer.handlers.errors import EventRejected
from consumer.handlers.registry import HandlerRegistry
from consumer.klaviyo.bulk import MAX_BYTES
from consumer.klaviyo.client import PING_REQUEST, KlaviyoClient
from consumer.klaviyo.outcomes import Accepted, Fatal, KlaviyoError, Permanent, Retryable
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest, Plan
from consumer.klaviyo.retry import RetryPolicy
from consumer.observability.health import RelayState, start_http_server
from consumer.observability.logging import get_logger
from consumer.observability.metrics import (
    BULK_DUPLICATES,
    END_TO_END_DELAY,
    EVENTS_CONSUMED,
    EVENTS_DEAD_LETTERED,
    EVENTS_DELIVERED,
    OLDEST_UNFINISHED_AGE,
    PLAN_WARNINGS,
)
from consumer.pipeline.batching import BulkBatcher
from consumer.pipeline.deadletter import (
    STAGE_DECODE,
    STAGE_HANDLE,
    STAGE_SEND,
    DeadLetterProducer,
    Failure,
    class_name,
)
from consumer.pipeline.deadletter_topic import DeadLetterTopicUnusable
from consumer.pipeline.dispatch import Dispatcher, Lane
from consumer.pipeline.offsets import OffsetTracker, PartitionOffsets, TopicPartitionKey
from consumer.pipeline.records import SourceRecord
from consumer.pipeline.sending import (
    Halt,
    PlanRunner,
    Sender,
    StepFailure,
    UnboundStep,
    metric_name,
)
from consumer.pipeline.source import FINAL_COMMIT_SECONDS, KafkaSource, Positions
from consumer.settings import SendMode, Settings

log = get_logger(__name__)

_PROBE_INTERVAL = 5.0
_DRAIN_LINGER = 0.005
DLQ_FLUSH_SECONDS = 5.0  # part of the shutdown budget, like the source's (see source.py)
EXIT_OK = 0
EXIT_FAILED = 1


class Work:
    """One Kafka record on its way through the relay."""

    __slots__ = (
        "dead",
        "done",
        "occurred_at",
        "offsets",
        "parked",
        "record",
        "remaining",
        "started",
    )

    def __init__(self, record: SourceRecord, offsets: PartitionOffsets) -> None:
        self.record = record
        self.offsets = offsets
        self.started = False
        self.done = False
        self.dead = False  # handed to the dead-letter topic: Klaviyo verdicts no longer count
        self.parked = False  # the broker acknowledged its dead letter
        self.remaining = 0  # batch mode: Create Event items not yet settled (sent or dropped)
        self.occurred_at: datetime | None = None


class Relay:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: HandlerRegistry | None = None,
        decoder: Decoder | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry or HandlerRegistry.from_settings(settings)
        self._decoder = decoder or Decoder.from_settings(settings)
        self.state = RelayState()
        self._offsets = OffsetTracker(settings.pending_bound)
        self._running: dict[PartitionOffsets, int] = {}
        self._unplaced = 0  # batch mode: events handed to lanes and not yet in their bulk jobs
        self._revoking: set[TopicPartitionKey] = set()
        self._dispatcher: Dispatcher[Work] = Dispatcher(self._process, self._on_crash)
        self._halt = Halt(self._on_halt)
        self._policy = RetryPolicy.from_settings(settings)
        self._tasks: set[asyncio.Task[None]] = set()
        self._exit_code = EXIT_OK
        self._stopping = False
        # Created in run(), on the loop.
        self._stop: asyncio.Event
        self._progress: asyncio.Event
        self._sender: Sender
        self._runner: PlanRunner
        self._batcher: BulkBatcher[Work] | None = None
        self._source: KafkaSource
        self._dlq: DeadLetterProducer

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        """Relay until SIGTERM/SIGINT (exit 0) or a fatal Kafka error or bug (exit 1)."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._progress = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        http = await start_http_server(self._settings.metrics_port, self.state)
        try:
            async with KlaviyoClient(self._settings) as client:
                self._sender = Sender(
                    client.send, self._policy, self._halt, on_reachable=self._set_reachable
                )
                self._runner = PlanRunner(self._sender)
                if self._settings.send_mode is SendMode.BATCH:
                    self._batcher = BulkBatcher(
                        self._sender,
                        self,
                        self._spawn,
                        max_events=self._settings.batch_max_events,
                        max_bytes=MAX_BYTES,
                        linger=self._settings.batch_linger_seconds,
                    )
                try:
                    self._dlq = await DeadLetterProducer.open(self._settings, loop)
                except DeadLetterTopicUnusable as exc:
                    log.error("relay not started: dead-letter topic unusable", error=str(exc))
                    return EXIT_FAILED
                topics = self._registry.topics()
                # Logged before the first probe, so a refused key reads "started" then "halted".
                log.info(
                    "relay started",
                    topics=len(topics),
                    group=self._settings.kafka_group_id,
                    mode=self._settings.send_mode.value,
                    metrics_port=_port_of(http),
                )
                await self._probe(client)
                self._source = KafkaSource(
                    self._settings, topics, self, loop, on_client_error=self._on_kafka_error
                )
                if self._halt.halted:
                    self._source.hold(discard=False)
                self._source.start()
                background = [
                    asyncio.create_task(self._commit_loop(), name="commit"),
                    asyncio.create_task(self._probe_loop(client), name="probe"),
                ]
                await self._stop.wait()
                await self._shutdown(background)
        finally:
            await http.cleanup()
        log.info("relay stopped", exit_code=self._exit_code)
        return self._exit_code

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stop requested", drain_timeout=self._settings.drain_timeout_seconds)
        self._stop.set()

    async def _shutdown(self, background: list[asyncio.Task[None]]) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = self.state.stopping = True
        self._source.hold(discard=True)
        if self._batcher is not None:
            self._batcher.set_linger(_DRAIN_LINGER)
        deadline = loop.time() + self._settings.drain_timeout_seconds
        drained = await self._wait_until(lambda: self._source.outstanding <= 0, deadline)
        if not drained:
            log.warning(
                "drain timeout: unfinished events are left for redelivery",
                unfinished=self._source.outstanding,
            )
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        final_commit = asyncio.ensure_future(self._commit_now())
        await asyncio.wait([final_commit], timeout=FINAL_COMMIT_SECONDS)
        await self._source.close()
        await self._dispatcher.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        left = await self._dlq.close(DLQ_FLUSH_SECONDS)
        if left:
            log.warning("dead-letter writes unconfirmed at exit", count=left)

    async def _wait_until(self, condition: Any, deadline: float) -> bool:
        """Wait for ``condition()`` (re-checked whenever an event finishes) until ``deadline``."""
        loop = asyncio.get_running_loop()
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0 or self._halt.halted:
                return bool(condition())
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        return True

    def _on_crash(self, exc: BaseException) -> None:
        log.error("relay bug: stopping", error=class_name(exc), exc_info=exc)
        self._exit_code = EXIT_FAILED
        self.request_stop()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._on_crash(task.exception())  # type: ignore[arg-type]

    # --- Klaviyo reachability and halt -------------------------------------------------------

    async def _probe(self, client: KlaviyoClient) -> None:
        outcome = await client.ping()
        if isinstance(outcome, Fatal):
            self._set_reachable(True)  # Klaviyo answered; it refused the key
            self._halt.trigger(outcome, PING_REQUEST)
        else:
            self._set_reachable(not (isinstance(outcome, Retryable) and outcome.status is None))

    async def _probe_loop(self, client: KlaviyoClient) -> None:
        """While Klaviyo looks unreachable and nothing is being sent, ask it again now and then."""
        while True:
            await asyncio.sleep(_PROBE_INTERVAL)
            if not self.state.klaviyo_reachable and not self._halt.halted:
                await self._probe(client)

    def _set_reachable(self, reachable: bool) -> None:
        if reachable != self.state.klaviyo_reachable:
            self.state.klaviyo_reachable = reachable
            log.info("klaviyo reachable" if reachable else "klaviyo unreachable")

    def _on_halt(self, outcome: Fatal, request: KlaviyoRequest) -> None:
        self.state.halted = True
        if hasattr(self, "_source"):
            self._source.hold(discard=False)
        error = outcome.errors[0] if outcome.errors else None
        log.error(
            "klaviyo refused the API key: relay halted, nothing more is sent or committed "
            "until it is restarted with a valid key",
            status=outcome.status,
            code=error.code if error is not None else None,
            endpoint=request.endpoint.value,
        )

    # --- source listener (called on the loop) ------------------------------------------------

    def on_records(self, records: list[SourceRecord]) -> None:
        dropped = 0
        counts: dict[str, int] = {}
        now = time.monotonic()
        crowded = False
        for record in records:
            tracker = self._offsets.get(record.topic, record.partition)
            if tracker is None or (record.topic, record.partition) in self._revoking:
                dropped += 1  # no longer ours: the next owner reads it from the watermark
                continue
            was_crowded = tracker.crowded
            try:
                tracker.track(record.offset, now)
            except ValueError:
                log.warning("record out of order, skipped", where=record.where)
                dropped += 1
                continue
            crowded = crowded or tracker.crowded != was_crowded
            counts[record.topic] = counts.get(record.topic, 0) + 1
            self._dispatcher.submit(record.key, Work(record, tracker))
            if self._batcher is not None:
                self._unplaced += 1
        for topic, count in counts.items():
            EVENTS_CONSUMED.labels(topic).inc(count)
        self._source.release(dropped)
        if crowded:
            self._source.crowd(self._offsets.crowded())

    def _on_kafka_error(self, error: str) -> None:
        # Shown by /readyz while nothing is assigned: why the relay is not consuming.
        self.state.kafka_problem = f"{self._settings.kafka_bootstrap_servers}: {error}"

    def on_assigned(self, partitions: list[TopicPartitionKey]) -> None:
        self._offsets.assign(partitions)
        self.state.kafka_problem = None
        self.state.joined = True  # even with nothing assigned: an idle member is a member
        self.state.partitions = len(self._offsets.partitions())
        if partitions:
            log.info("partitions assigned", partitions=_names(partitions))

    async def on_revoked(self, partitions: list[TopicPartitionKey]) -> Positions:
        trackers = [t for key in partitions if (t := self._offsets.get(*key)) is not None]
        self._revoking.update(partitions)
        if not self._stopping:
            if self._batcher is not None:
                self._batcher.set_linger(_DRAIN_LINGER)
            deadline = asyncio.get_running_loop().time() + self._settings.drain_timeout_seconds
            try:
                drained = await self._wait_until(
                    lambda: all(self._running.get(t, 0) == 0 for t in trackers), deadline
                )
            finally:  # also when the source gave up on us (it then reports them lost)
                if self._batcher is not None:
                    self._batcher.set_linger(self._settings.batch_linger_seconds)
            if not drained:
                log.warning("revoke drain timeout", partitions=_names(partitions))
        positions = {} if self._halt.halted else self._offsets.committable(partitions)
        self._detach(partitions)
        if partitions:
            log.info("partitions revoked", partitions=_names(partitions))
        return positions

    def on_lost(self, partitions: list[TopicPartitionKey]) -> None:
        self._detach(partitions)

    def on_fatal_error(self, message: str) -> None:
        log.error("kafka failed: stopping", error=message)
        self._exit_code = EXIT_FAILED
        self.request_stop()

    def _detach(self, partitions: list[TopicPartitionKey]) -> None:
        self._revoking.difference_update(partitions)
        for tracker in self._offsets.detach(partitions):
            # Their unfinished events stop counting; work still running for them is ignored.
            self._source.release(tracker.unfinished)
            self._running.pop(tracker, None)
            with contextlib.suppress(KeyError):
                OLDEST_UNFINISHED_AGE.remove(tracker.topic, str(tracker.partition))
        self.state.partitions = len(self._offsets.partitions())
        self._progress.set()

    # --- offsets -----------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.commit_interval_seconds)
            await self._commit_now()
            self._watch_partitions()

    def _watch_partitions(self) -> None:
        """Report how long each partition's watermark has been held, and repeat which ones are
        crowded (the source applies the set; a repeat corrects a call lost in a rebalance)."""
        now = time.monotonic()
        for tracker in self._offsets.partitions():
            age = tracker.oldest_unfinished_age(now)
            OLDEST_UNFINISHED_AGE.labels(tracker.topic, str(tracker.partition)).set(age)
        self._source.crowd(self._offsets.crowded())

    async def _commit_now(self) -> None:
        if self._halt.halted:
            return
        positions = self._offsets.committable()
        if positions:
            self._offsets.mark_committed(await self._source.commit(positions))

    def _finish(self, work: Work) -> None:
        if work.done:
            return
        work.done = True
        tracker = work.offsets
        if work.started and tracker in self._running:
            self._running[tracker] -= 1
        if not tracker.detached:
            was_crowded = tracker.crowded
            tracker.finish(work.record.offset)
            self._source.release(1)
            if was_crowded and not tracker.crowded:
                self._source.crowd(self._offsets.crowded())
        self._progress.set()

    # --- one event ---------------------------------------------------------------------------

    async def _process(self, lane: Lane[Work], work: Work) -> None:
        try:
            await self._process_one(lane, work)
        finally:
            if self._batcher is not None:
                self._placed(self._batcher)

    def _placed(self, batcher: BulkBatcher[Work]) -> None:
        """Batch mode: one more event is in its bulk jobs (or needs none). With none left to
        place while the source is saturated, the open job cannot grow until jobs are answered:
        it is sent now rather than after the linger. Without this, a full in-flight window
        (the normal state while catching up) idled for a whole linger on every cycle."""
        self._unplaced -= 1
        if self._unplaced == 0 and self._source.saturated:
            batcher.flush()

    async def _process_one(self, lane: Lane[Work], work: Work) -> None:
        tracker = work.offsets
        record = work.record
        if tracker.detached or (record.topic, record.partition) in self._revoking:
            return  # revoked before it started: the next owner sends it
        if self._halt.halted:
            await self._halt.hold()
        work.started = True
        self._running[tracker] = self._running.get(tracker, 0) + 1
        now = datetime.now(UTC)
        plan = await self._plan(work, now)
        if plan is None:
            return
        try:
            if self._batcher is None:
                failure = await self._runner.run(plan, self._send_now(work), self._accepted(work))
            else:
                failure = await self._run_batched(lane, work, plan)
        except UnboundStep as exc:
            self._dead_letter(work, Failure.from_exception(STAGE_SEND, exc.reason, exc, now))
            return
        if failure is not None:
            self._dead_letter(
                work,
                Failure.from_klaviyo(
                    failure.outcome, failure.request.endpoint.value, datetime.now(UTC)
                ),
            )
        elif self._batcher is None:
            self._finish(work)

    async def _plan(self, work: Work, now: datetime) -> Plan | None:
        """Decode and handle; a permanent failure is dead-lettered and gives None."""
        record = work.record
        try:
            event = await self._decode(record)
        except DecodeError as exc:
            self._dead_letter(work, Failure.from_exception(STAGE_DECODE, exc.reason, exc, now))
            return None
        try:
            plan = self._registry.plan(record.topic, event, now, backfill=record.backfill)
        except EventRejected as exc:
            self._dead_letter(work, Failure.from_exception(STAGE_HANDLE, exc.reason, exc, now))
            return None
        except Exception as exc:
            # A handler bug on one record must not stop the pipeline: park it for a fix and
            # replay. The message may quote data: it is logged and parked masked.
            failure = Failure.unexpected(STAGE_HANDLE, "invalid_event", exc, now)
            log.error(
                "handler failed", where=record.where, error=class_name(exc), detail=failure.message
            )
            self._dead_letter(work, failure)
            return None
        occurred = event.datum.get("occurred_at")
        work.occurred_at = occurred if isinstance(occurred, datetime) else None
        for warning in plan.warnings:
            PLAN_WARNINGS.labels(record.topic, warning.code).inc()
        return plan

    async def _decode(self, record: SourceRecord) -> DecodedEvent:
        if record.value is None:
            raise EmptyRecord("record has no value (tombstone)")
        retry = 0
        while True:
            try:
                return await self._decoder.decode_async(record.value)
            except RegistryUnavailable as exc:
                # Not the record's fault: hold it, like a Klaviyo outage.
                outcome = Retryable(None, "registry_unavailable")
                delay = self._policy.delay(retry, outcome, _RNG)
                log.warning("schema registry unavailable", retry_in=round(delay, 2), error=str(exc))
                await asyncio.sleep(delay)
                retry += 1

    def _send_now(self, work: Work) -> Any:
        async def create_event(request: KlaviyoRequest) -> StepFailure | None:
            outcome = await self._sender.settle(request)
            if isinstance(outcome, Permanent):
                return StepFailure(request, outcome)
            self._delivered(work, request)
            return None

        return create_event

    def _accepted(self, work: Work) -> Any:
        def on_accepted(request: KlaviyoRequest, _outcome: Accepted) -> None:
            if request.endpoint is Endpoint.CREATE_EVENT:
                self._delivered(work, request)

        return on_accepted

    async def _run_batched(self, lane: Lane[Work], work: Work, plan: Plan) -> StepFailure | None:
        batcher = self._batcher
        assert batcher is not None
        # Profile steps go alone, and only after this key's earlier events were accepted.
        direct = any(r.endpoint is not Endpoint.CREATE_EVENT for r in plan.requests)
        if direct and lane.last_ticket is not None:
            batcher.expedite(lane.last_ticket)
            await asyncio.shield(lane.last_ticket)

        async def into_job(request: KlaviyoRequest) -> StepFailure | None:
            while await lane.wait_for_ticket_unless(batcher.open_ticket()):
                pass  # the open job changed while we waited: look again
            work.remaining += 1
            # The record key orders a customer's events within the job; no key, no order.
            order = work if work.record.key is None else work.record.key
            lane.last_ticket = batcher.add(request, work, order)
            return None

        work.remaining += 1  # held until every step is placed, so an early verdict cannot finish it
        try:
            failure = await self._runner.run(plan, into_job, self._accepted(work))
        finally:
            work.remaining -= 1
        if failure is None:  # else the caller dead-letters it
            self._settle(work)
        return failure

    # batch mode: verdicts on the items of a bulk job (ItemSink)
    def item_accepted(self, token: Work, request: KlaviyoRequest) -> None:
        self._delivered(token, request)
        self._item_settled(token)

    def item_duplicate(self, token: Work, _request: KlaviyoRequest) -> None:
        BULK_DUPLICATES.labels(token.record.topic).inc()
        self._item_settled(token)

    def withdrawn(self, token: Work) -> bool:
        return token.dead

    def item_dropped(self, token: Work, _request: KlaviyoRequest) -> None:
        self._item_settled(token)

    def _item_settled(self, token: Work) -> None:
        token.remaining -= 1
        self._settle(token)

    def _settle(self, work: Work) -> None:
        """Finish an event once none of its items is in a bulk job any more (batch mode) and,
        when dead-lettered, its dead letter is acknowledged: a committed offset must not leave
        a bulk request of it in flight, to land after (or beside) its replay."""
        if work.remaining == 0 and (work.parked or not work.dead):
            self._finish(work)

    def item_rejected(
        self,
        token: Work,
        request: KlaviyoRequest,
        outcome: Permanent,
        error: KlaviyoError | None,
        endpoint: Endpoint,
    ) -> None:
        token.remaining -= 1
        if not token.dead:
            failure = Failure.from_klaviyo(outcome, endpoint.value, datetime.now(UTC), error)
            self._dead_letter(token, failure)
        self._settle(token)

    def _delivered(self, work: Work, request: KlaviyoRequest) -> None:
        topic = work.record.topic
        _delivered_counter(topic, metric_name(request)).inc()
        if work.occurred_at is not None:
            delay = (datetime.now(UTC) - work.occurred_at).total_seconds()
            _delay_histogram(topic).observe(max(delay, 0.0))

    # --- dead letters ------------------------------------------------------------------------

    def _dead_letter(self, work: Work, failure: Failure) -> None:
        if work.dead:  # a batched event may fail twice (an item, then a later step)
            self._settle(work)  # its steps are all placed now: this may be its last word
            return
        work.dead = True
        record = work.record
        log.warning(
            "event dead-lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            stage=failure.stage,
            reason=failure.reason,
            error=failure.class_name,
            detail=failure.message,
        )
        self._spawn(self._write_dead_letter(work, failure))

    async def _write_dead_letter(self, work: Work, failure: Failure) -> None:
        reason = await self._dlq.send(work.record, failure)  # too_large if it did not fit
        EVENTS_DEAD_LETTERED.labels(work.record.topic, failure.stage, reason).inc()
        work.parked = True
        self._settle(work)


class EmptyRecord(DecodeError):
    reason = "invalid_body"


_RNG = random.Random()


# ``.labels()`` looks its child up under a lock on every call; these run once per delivered
# event, so the children are kept (label values are bounded: topics x metric names).
@functools.cache
def _delivered_counter(topic: str, metric: str) -> Counter:
    return EVENTS_DELIVERED.labels(topic, metric)


@functools.cache
def _delay_histogram(topic: str) -> Histogram:
    return END_TO_END_DELAY.labels(topic)


def _names(partitions: list[TopicPartitionKey]) -> str:
    return ",".join(f"{topic}/{partition}" for topic, partition in sorted(partitions))


def _port_of(runner: Any) -> int | None:
    addresses = runner.addresses
    return addresses[0][1] if addresses else None
