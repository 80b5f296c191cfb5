"""One event's stages, run in its key's lane: decode → plan → deliver → (dead-letter).

A decode error, a handler's rejection, a handler bug and a step Klaviyo refuses are permanent:
the event is handed to ``reject`` (the dead-letter writer), which finishes it once the broker
acknowledged the write. A schema registry that does not answer is not the record's fault: the
event is held and retried, like a Klaviyo outage. Nothing starts while the relay is halted, and
a record whose partition was revoked before its turn is left for the next owner.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import UTC, datetime

from consumer.codec import DecodedEvent, Decoder
from consumer.errors import DecodeError, EmptyRecord, EventRejected, Reason, RegistryUnavailable
from consumer.handlers.registry import HandlerRegistry
from consumer.klaviyo.outcomes import Retryable
from consumer.klaviyo.requests import Plan
from consumer.klaviyo.retry import RetryPolicy
from consumer.observability.logging import get_logger
from consumer.observability.metrics import EVENTS_DEAD_LETTERED, PLAN_WARNINGS
from consumer.pipeline.delivery import Delivery
from consumer.pipeline.delivery.base import Reject, Spawn
from consumer.pipeline.dispatch import Lane
from consumer.pipeline.failure import STAGE_DECODE, STAGE_HANDLE, STAGE_SEND, Failure, class_name
from consumer.pipeline.inflight import InFlight, Work
from consumer.pipeline.ports import DeadLetterWriter
from consumer.pipeline.records import SourceRecord
from consumer.pipeline.sending import Halt, UnboundStep
from consumer.priorities import Priorities

log = get_logger(__name__)

_RNG = random.Random()


class Stages:
    def __init__(
        self,
        registry: HandlerRegistry,
        decoder: Decoder,
        *,
        policy: RetryPolicy,
        halt: Halt,
        book: InFlight,
        delivery: Delivery,
        reject: Reject,
        priorities: Priorities,
    ) -> None:
        self._registry = registry
        self._priorities = priorities
        self._decoder = decoder
        self._policy = policy
        self._halt = halt
        self._book = book
        self._delivery = delivery
        self._reject = reject
        self._started = itertools.count(1)  # the order events start in (KlaviyoRequest.order)

    async def process(self, lane: Lane[Work], work: Work) -> None:
        """The dispatcher's callback: one event, in its key's order."""
        try:
            await self._process(lane, work)
        finally:
            self._delivery.processed()

    async def _process(self, lane: Lane[Work], work: Work) -> None:
        if not self._book.current(work):
            return  # revoked before it started: the next owner sends it
        if self._halt.halted:
            await self._halt.hold()
        self._book.start(work)
        now = datetime.now(UTC)
        plan = await self.plan(work, now)
        if plan is None:
            return
        # Read again after a crash: what the last owner got accepted is not sent twice.
        plan = plan.without_events(work.skip)
        try:
            failure = await self._delivery.deliver(lane, work, plan)
        except UnboundStep as exc:
            self._reject(work, Failure.from_exception(STAGE_SEND, exc.reason, exc, now))
            return
        if failure is not None:
            endpoint = failure.request.endpoint.value
            self._reject(work, Failure.from_klaviyo(failure.outcome, endpoint, datetime.now(UTC)))

    async def plan(self, work: Work, now: datetime) -> Plan | None:
        """Decode and handle; a permanent failure is dead-lettered and gives None."""
        record = work.record
        try:
            event = await self._decode(record)
        except DecodeError as exc:
            self._reject(work, Failure.from_exception(STAGE_DECODE, exc.reason, exc, now))
            return None
        try:
            plan = self._registry.plan(record.topic, event, now, backfill=record.backfill)
        except EventRejected as exc:
            self._reject(work, Failure.from_exception(STAGE_HANDLE, exc.reason, exc, now))
            return None
        except Exception as exc:
            # A handler bug on one record must not stop the pipeline: park it for a fix and
            # replay. The message may quote data: it is logged and parked masked.
            failure = Failure.unexpected(STAGE_HANDLE, Reason.INVALID_EVENT, exc, now)
            log.error(
                "handler failed", where=record.where, error=class_name(exc), detail=failure.message
            )
            self._reject(work, failure)
            return None
        occurred = event.datum.get("occurred_at")
        work.occurred_at = occurred if isinstance(occurred, datetime) else None
        for warning in plan.warnings:
            PLAN_WARNINGS.labels(record.topic, warning.code).inc()
        # Every request of the event (and a bulk job holding it) waits for the quota at its
        # topic's class, and within it behind the events that started before it; the handlers
        # decide what to send, not how urgently.
        return plan.at_priority(self._priorities.rank(record.topic), next(self._started))

    async def _decode(self, record: SourceRecord) -> DecodedEvent:
        if record.value is None:
            raise EmptyRecord("record has no value (tombstone)")
        retry = 0
        while True:
            try:
                return await self._decoder.decode_async(record.value)
            except RegistryUnavailable as exc:
                # Not the record's fault: hold it, like a Klaviyo outage.
                outcome = Retryable(None, Reason.REGISTRY_UNAVAILABLE)
                delay = self._policy.delay(retry, outcome, _RNG)
                log.warning("schema registry unavailable", retry_in=round(delay, 2), error=str(exc))
                await asyncio.sleep(delay)
                retry += 1


class DeadLettering:
    """Hands a failed event to the dead-letter writer (the ``reject`` of the stages and of the
    delivery); the event is finished once the broker acknowledged the write."""

    def __init__(self, book: InFlight, spawn: Spawn) -> None:
        self._book = book
        self._spawn = spawn
        # Opened by the relay before the source: no record can fail before it exists.
        self._writer: DeadLetterWriter | None = None

    def open(self, writer: DeadLetterWriter) -> None:
        self._writer = writer

    def __call__(self, work: Work, failure: Failure) -> None:
        if work.dead:  # a batched event may fail twice (an item, then a later step)
            self._book.settle(work)  # its steps are all placed now: this may be its last word
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
        self._spawn(self._write(work, failure))

    async def _write(self, work: Work, failure: Failure) -> None:
        if self._writer is None:
            raise RuntimeError("dead letter before the writer was opened")
        reason = await self._writer.send(work.record, failure)  # too_large if it did not fit
        EVENTS_DEAD_LETTERED.labels(work.record.topic, failure.stage, reason).inc()
        work.parked = True
        self._book.settle(work)
