"""``run --until-caught-up``: relay what the topics hold at start, then exit (Klaviyo's hourly
script, as a job).

At start the targets are taken: the end offset of every partition of the subscribed topics
(all of them, not only those this member will be assigned). The run is caught up when the
*group's* committed offset of every partition reached its target, whoever committed it: a
partition revoked to another member, or assigned later, still counts, so a rebalance with
another running instance can never end the run with 0 while that instance is behind. Records
produced after the start are not waited for. Dead-lettered events count as done: the relay
commits past them once the broker acknowledged their dead letter.
A partition whose commit stopped short of
its target only because transaction markers (or aborted records) are left there is done too.

The run ends early, with a reason, when the relay halted (Klaviyo refused the API key) or
``max_seconds`` passed (Klaviyo unreachable, dead letters unwritable, another member stuck);
after the relay's normal shutdown (drain, final commit) the offsets are read once more, so a
stop that finished the work still counts as caught up.

The end offsets are read through Kafka's admin API (ListOffsets) and the group's commits
through a consumer of the run's own that never joins the group (OffsetFetch; see
:class:`AdminOffsets`), not through the relay's consumer, which stays on its own thread
untouched. Those calls block (each has a timeout), so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaException,
    TopicPartition,
)

# Documented as confluent_kafka.admin's API, imported there without an explicit re-export.
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from consumer.coordinator import coordinator_moving
from consumer.observability.health import RelayState
from consumer.observability.logging import get_logger
from consumer.pipeline.offsets import TopicPartitionKey
from consumer.pipeline.source import consumer_config
from consumer.settings import Settings

log = get_logger(__name__)

Offsets = dict[TopicPartitionKey, int]

# Long enough for a broker that is still electing a group coordinator (it answers
# NOT_COORDINATOR for a moment after a start).
_BEGIN_SECONDS = 30.0
_REQUEST_SECONDS = 10.0

# librdkafka reports every refused connection; the run's own lines say what matters.
_QUIET = logging.getLogger("consumer.pipeline.catchup.kafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


class TopicsMissing(Exception):
    """Subscribed topics Kafka does not list: a run would report nothing to do for them."""


class GroupOffsets(Protocol):
    """What the run reads from Kafka (blocking; :class:`AdminOffsets` in production)."""

    def bounds(self, topics: list[str]) -> dict[TopicPartitionKey, tuple[int, int]]:
        """Every partition's (earliest, end) offset; raises :class:`TopicsMissing`."""
        ...

    def committed(self, partitions: Iterable[TopicPartitionKey]) -> Offsets:
        """The group's committed offset per partition (negative: nothing committed)."""
        ...

    def records_between(self, key: TopicPartitionKey, start: int, end: int) -> bool:
        """Whether a record a consumer would read lies in ``[start, end)``: False when only
        transaction markers (or aborted records) are left there."""
        ...


@dataclass(frozen=True, slots=True)
class Targets:
    """Per partition with records to relay: its earliest and end offset at start."""

    bounds: dict[TopicPartitionKey, tuple[int, int]]

    @classmethod
    def at_start(
        cls, bounds: dict[TopicPartitionKey, tuple[int, int]], committed: Offsets
    ) -> Targets:
        """Only the partitions behind: an empty one, or one committed up to its end, is done."""
        return cls({key: b for key, b in bounds.items() if _left(b, committed.get(key, -1)) > 0})

    def behind(self, committed: Offsets) -> Offsets:
        """The records still to relay per partition that has any (empty: caught up)."""
        left = {key: _left(b, committed.get(key, -1)) for key, b in self.bounds.items()}
        return {key: n for key, n in left.items() if n > 0}

    def position(self, key: TopicPartitionKey, committed: Offsets) -> int:
        """Where the group reads ``key`` next."""
        return _position(self.bounds[key], committed.get(key, -1))

    def ending_at(self, key: TopicPartitionKey, end: int) -> Targets:
        """The same targets with ``key`` ending at ``end`` (nothing to read beyond it)."""
        return Targets({**self.bounds, key: (self.bounds[key][0], end)})


def _halted_because(state: RelayState) -> str:
    """Why the relay halted, for the run's one line. With OAuth the halt has its own reason (the
    app uninstalled, the client refused): the line must say that, not blame an API key the run
    does not use (the operator's fix is a reinstall, not a new key)."""
    if state.halt_reason != RelayState.halt_reason:  # set by the relay: an OAuth refusal
        return state.halt_reason
    return "klaviyo refused the API key (401/403)"


def _position(bounds: tuple[int, int], committed: int) -> int:
    # Nothing committed (or committed below what retention kept): the group starts at earliest.
    return max(committed, bounds[0])


def _left(bounds: tuple[int, int], committed: int) -> int:
    return max(0, bounds[1] - _position(bounds, committed))


class AdminOffsets:
    """:class:`GroupOffsets` through one admin client (blocking calls, each with a timeout)."""

    def __init__(self, settings: Settings) -> None:
        config = consumer_config(settings)
        self._group = settings.kafka_group_id
        # The end a consumer of this isolation level reaches: read_committed (librdkafka's
        # default) stops at the last stable offset, before transactions still open.
        uncommitted = config.get("isolation.level") == "read_uncommitted"
        self._isolation = (
            IsolationLevel.READ_UNCOMMITTED if uncommitted else IsolationLevel.READ_COMMITTED
        )
        self._admin = AdminClient({**settings.kafka_client_config()}, logger=_QUIET)
        self._reader = {
            **settings.kafka_client_config(),
            "group.id": self._group,  # assigned, never subscribed nor committed
            "enable.auto.commit": "false",
            "isolation.level": "read_uncommitted" if uncommitted else "read_committed",
        }
        # The group's commits are read through a consumer of the group (never subscribed, so
        # never a member), not the admin API: librdkafka's ListConsumerGroupOffsets crashes the
        # process (SIGSEGV in rd_kafka_cgrp_op, librdkafka#5040) when the coordinator answers
        # NOT_COORDINATOR, as it does for a group it has not loaded yet: a CronJob's first run,
        # or any run right after a broker restart. A consumer's OffsetFetch retries that.
        self._commits = Consumer(self._reader, logger=_QUIET)

    def bounds(self, topics: list[str]) -> dict[TopicPartitionKey, tuple[int, int]]:
        listed = self._admin.list_topics(timeout=_REQUEST_SECONDS).topics
        missing = [t for t in topics if t not in listed or listed[t].error is not None]
        if missing:
            # A typo in TOPICS must not pass for an empty topic: the run would exit 0 for ever.
            raise TopicsMissing(f"topics missing or not readable: {', '.join(sorted(missing))}")
        partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in sorted(listed[topic].partitions)
        ]
        # (OffsetSpec's constructors lack annotations in confluent-kafka.)
        earliest = self._offsets(partitions, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
        end = self._offsets(partitions, OffsetSpec.latest())  # type: ignore[no-untyped-call]
        return {key: (earliest[key], end[key]) for key in end}

    def committed(self, partitions: Iterable[TopicPartitionKey]) -> Offsets:
        wanted = [TopicPartition(t, p) for t, p in partitions]
        if not wanted:
            return {}
        answer = self._commits.committed(wanted, timeout=_REQUEST_SECONDS)
        return {(tp.topic, tp.partition): tp.offset for tp in answer if tp.error is None}

    def records_between(self, key: TopicPartitionKey, start: int, end: int) -> bool:
        # A consumer skips transaction markers and aborted records, and its position moves past
        # them: reading from start shows whether anything else is left before end.
        consumer = Consumer(self._reader, logger=_QUIET)
        try:
            consumer.assign([TopicPartition(*key, start)])
            deadline = time.monotonic() + _REQUEST_SECONDS
            while time.monotonic() < deadline:
                message = consumer.poll(0.2)
                if message is not None and message.error() is None:
                    offset = message.offset()
                    return offset is not None and offset < end
                (position,) = consumer.position([TopicPartition(*key)])
                if position.offset >= end:
                    return False
            return True  # no answer in time: assume there is
        finally:
            consumer.close()

    def _offsets(self, partitions: list[TopicPartition], spec: OffsetSpec) -> Offsets:
        if not partitions:
            return {}
        futures = self._admin.list_offsets(
            dict.fromkeys(partitions, spec),
            isolation_level=self._isolation,
            request_timeout=_REQUEST_SECONDS,
        )
        return {
            (tp.topic, tp.partition): future.result(timeout=_REQUEST_SECONDS + 5).offset
            for tp, future in futures.items()
        }


class CatchUp:
    """Takes the targets, watches the group's commits, and says why a run fell short."""

    def __init__(
        self,
        max_seconds: float,
        offsets: GroupOffsets,
        *,
        interval: float = 1.0,
    ) -> None:
        self._max_seconds = max_seconds
        self._offsets = offsets
        self._interval = interval
        self._targets = Targets({})
        self._behind: Offsets = {}
        self._events = 0  # behind at start
        self._started = 0.0
        self._why: str | None = None  # why the watch gave up, when it did
        self._seen: Offsets = {}  # each behind partition's position at the last check
        self._probed: Offsets = {}  # the position each was last probed from (see _settle)
        self._unanswered = False  # the last read of the group's offsets failed
        self.reason: str | None = None  # set by finish() when the run fell short

    async def begin(self, topics: list[str]) -> bool:
        """Take the targets of ``topics``; False (and :attr:`reason`) when a topic is missing
        or Kafka does not answer in time."""
        self._started = time.monotonic()
        deadline = self._started + _BEGIN_SECONDS
        while True:
            try:
                bounds = await asyncio.to_thread(self._offsets.bounds, topics)
                committed = await asyncio.to_thread(self._offsets.committed, bounds)
                break
            except (KafkaException, TimeoutError, TopicsMissing) as exc:
                retriable = isinstance(exc, TimeoutError) or (
                    isinstance(exc, KafkaException) and coordinator_moving(exc.args[0])
                )
                if retriable and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)  # the coordinator is still loading: ask again
                    continue
                self.reason = f"cannot read the topics' end offsets: {exc}"
                log.error("run not started", reason=self.reason)
                return False
        self._targets = Targets.at_start(bounds, committed)
        self._behind = self._targets.behind(committed)
        self._events = sum(self._behind.values())
        log.info(
            "catching up",
            partitions=len(self._behind),
            events=self._events,
            max_duration=self._max_seconds,
        )
        return True

    async def watch(self, state: RelayState, stop: Callable[[], None]) -> None:
        """Poll until caught up, halted or out of time; then ask the relay to stop."""
        deadline = self._started + self._max_seconds
        while True:
            if state.halted:
                self._why = _halted_because(state)
                break
            if await self._check() and not self._behind:
                break
            if time.monotonic() >= deadline:
                reachable = "" if state.klaviyo_reachable else " (klaviyo unreachable)"
                self._why = f"not caught up within {self._max_seconds:g}s{reachable}"
                break
            await asyncio.sleep(self._interval)
        stop()

    async def finish(self) -> bool:
        """After the relay stopped: whether it caught up. Logs the totals, or the reason (also
        kept in :attr:`reason`) when something was left undelivered."""
        await self._check()
        if not self._behind:
            log.info(
                "caught up",
                partitions=len(self._targets.bounds),
                events=self._events,
                seconds=round(time.monotonic() - self._started, 1),
            )
            return True
        why = self._why or "stopped before catching up"
        left = sum(self._behind.values())
        self.reason = (
            f"{why}: {left} events left undelivered ({len(self._behind)} partitions behind)"
        )
        log.error("run ended before catching up", reason=self.reason)
        return False

    async def _check(self) -> bool:
        """Refresh what is behind; False when Kafka did not answer (the last answer stands)."""
        if not self._targets.bounds:
            return True
        try:
            committed = await asyncio.to_thread(self._offsets.committed, self._targets.bounds)
        except (KafkaException, TimeoutError) as exc:
            if not self._unanswered:  # once per outage, not at every check
                log.warning("reading the group's offsets failed", error=str(exc))
            self._unanswered = True
            return False
        self._unanswered = False
        await self._settle(committed)
        self._behind = self._targets.behind(committed)
        return True

    async def _settle(self, committed: Offsets) -> None:
        """A partition that stopped short of its target may have nothing left to read: a
        transaction's commit marker is the last entry of a transactionally written partition,
        and the group's commit (last record + 1) stays one short of the end for ever. Probed
        once per position, only where the position did not move since the last check (so a
        busy run never probes)."""
        seen, self._seen = self._seen, {}
        for key in self._targets.behind(committed):
            position = self._targets.position(key, committed)
            self._seen[key] = position
            if seen.get(key) != position or self._probed.get(key) == position:
                continue
            self._probed[key] = position
            end = self._targets.bounds[key][1]
            try:
                left = await asyncio.to_thread(self._offsets.records_between, key, position, end)
            except KafkaException as exc:
                log.warning("reading a stalled partition failed", error=str(exc))
                continue
            if not left:
                self._targets = self._targets.ending_at(key, position)
