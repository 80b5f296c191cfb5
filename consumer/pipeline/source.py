"""The Kafka side: one thread owns the confluent-kafka consumer; the event loop never blocks on it.

The thread loops: run the commands the loop queued (commits), pause or resume for
back-pressure, ``consume`` a batch and hand it to the loop with ``call_soon_threadsafe``.
Every consumer call happens on this thread, so rebalance callbacks (which librdkafka runs
inside ``consume``) and commits never race each other.

Back-pressure is decided here as well: the loop reports finished events with
:meth:`KafkaSource.release`. At ``max_in_flight`` outstanding events the thread first *waits*
for capacity, for at most ``_SOFT_HOLD_SECONDS``, without fetching more: librdkafka's prefetched
records stay where they are (bounded by ``queued.max.messages.kbytes``). Only a longer stall
pauses every assigned partition (the thread keeps calling ``consume``, so
``max.poll.interval.ms`` is never exceeded and rebalances are still served), resumed below
``resume_below × max_in_flight``. Separately, the loop names the *crowded* partitions (too many
offsets waiting behind one unfinished event, see :mod:`consumer.pipeline.offsets`): only those
are paused, the others flow, until the loop says they drained. Why not pause at once: a pause
throws the partition's prefetch queue away and librdkafka's fetcher notices a resume only at
its next fetch decision, about a second later, so a relay that paused on every full window
idled most of its time (measured: batch mode drained ~2,300 events/s that way).

Priority admission (:mod:`consumer.pipeline.admission`): while the window is full and held by
the quota, the partitions of less urgent classes are *deferred* (paused) so that the places that
free go to the most urgent topics; each ``consume`` takes at most the room left in the window,
so a batch never overfills it past what a deferral can hold back.

Offsets: ``enable.auto.offset.store=false`` and no auto-commit. The loop decides what is
committable (the contiguous watermark, see :mod:`consumer.pipeline.offsets`) and asks this
thread to store and commit exactly that, with the map of offsets finished above it as the
commit's metadata (see :mod:`consumer.pipeline.completed`), read back at assignment. On revoke
the thread asks the loop to drain the partitions (waiting, bounded by the drain timeout) and
commits their final watermark before librdkafka hands them to another member; on loss nothing
is committed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumer.accounts.window import fetch_batch
from consumer.coordinator import committed
from consumer.observability.logging import LibrdkafkaLogFilter, RepeatSummary, get_logger
from consumer.observability.metrics import (
    COMMIT_DURATION,
    EVENTS_IN_FLIGHT,
    PARTITIONS_DEFERRED,
    PARTITIONS_PAUSED,
    PARTITIONS_PENDING_PAUSED,
)
from consumer.observability.stats import record_kafka_stats
from consumer.pipeline.admission import Admission
from consumer.pipeline.backlog import Backlog, BacklogMeter
from consumer.pipeline.offsets import Commit, TopicPartitionKey
from consumer.pipeline.records import SourceRecord
from consumer.pipeline.share import PartitionCounts, partition_share
from consumer.priorities import Priorities
from consumer.settings import Settings

log = get_logger(__name__)
LIBRDKAFKA_LOG = logging.getLogger(f"{__name__}.librdkafka")
# Connection failures (FAIL) also reach the error callback, which summarises them.
LIBRDKAFKA_LOG.addFilter(LibrdkafkaLogFilter(drop_facilities=frozenset({"FAIL"})))

T = TypeVar("T")
Positions = dict[TopicPartitionKey, Commit]

_CONSUME_BATCH = 1000
# Far below max.poll.interval.ms (5 min by default); long enough for a full window to drain.
_SOFT_HOLD_SECONDS = 2.0
_CONSUME_TIMEOUT = 0.05
# Several accounts: how long a hand-over waits for the loop to take the records (bounded: the
# loop may be closing, and a busy loop must not stall rebalances).
_IN_STEP_SECONDS = 5.0
_STATS_INTERVAL_MS = 5000
# A revoke waits this long for the loop to apply the smaller quota share (see pipeline.share).
_SHARE_APPLY_SECONDS = 2.0
# Until every subscribed topic's partitions were counted, ask again this often (share is 0).
_SHARE_RETRY_SECONDS = 5.0
# Shutdown budget after the drain (the chart's terminationGracePeriodSeconds adds these up, see
# docs/operations.md): the final commit, leaving the group and closing the consumer.
FINAL_COMMIT_SECONDS = 5.0
CLOSE_SECONDS = 10.0
# Reading the group's commits (with their maps of finished offsets) at an assignment.
COMMITTED_READ_SECONDS = 10.0


class SourceListener(Protocol):
    """The loop-side receiver; every method runs on the event loop."""

    def on_records(self, records: list[SourceRecord]) -> None: ...

    def on_assigned(self, partitions: list[TopicPartitionKey], commits: Positions) -> None:
        """``commits``: the group's commits of these partitions, as far as they could be read."""
        ...

    async def on_revoked(self, partitions: list[TopicPartitionKey]) -> Positions:
        """Drain the partitions; return the positions to commit before they go."""
        ...

    def on_lost(self, partitions: list[TopicPartitionKey]) -> None: ...

    def on_share(self, share: float) -> None:
        """This member's share of the quota moved (see :mod:`consumer.pipeline.share`)."""
        ...

    def on_fatal_error(self, message: str) -> None: ...


def consumer_config(settings: Settings) -> dict[str, Any]:
    return {
        **settings.kafka_client_config(),
        "group.id": settings.kafka_group_id,
        "partition.assignment.strategy": "cooperative-sticky",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": "false",
        "enable.auto.offset.store": "false",
        "statistics.interval.ms": str(_STATS_INTERVAL_MS),
        # librdkafka prefetches up to 100,000 records per partition and 64 MB by default; the
        # relay holds max_in_flight events itself, so a few seconds' worth ahead is enough. The
        # queue limits are checked only before a fetch, and one fetch response overshoots them
        # by up to 1 MB per partition by default (compressed; lz4 batches grew ~5x here): a 1M
        # backlog held 340,000 records. Capping the response keeps memory flat however large
        # the backlog (bench/README.md, "Memory").
        "queued.min.messages": "2000",
        "queued.max.messages.kbytes": "16384",
        "max.partition.fetch.bytes": "131072",
        "fetch.max.bytes": "1048576",
        # The operator's own properties win (kafka_client_config applied them first).
        **settings.kafka_extra_config,
    }


class KafkaSource:
    def __init__(
        self,
        settings: Settings,
        topics: list[str],
        listener: SourceListener,
        loop: asyncio.AbstractEventLoop,
        *,
        on_client_error: Callable[[str], None] = lambda _error: None,
    ) -> None:
        self._topics = topics
        self._servers = settings.kafka_bootstrap_servers
        self._on_client_error = on_client_error
        self._errors = RepeatSummary()
        self._listener = listener
        self._loop = loop
        self._max = settings.max_in_flight
        self._batch = fetch_batch(settings, _CONSUME_BATCH)  # several accounts: see there
        self._in_step = bool(settings.klaviyo_accounts)  # see _hand_over_in_step
        self._resume_mark = max(1, int(settings.max_in_flight * settings.resume_below))
        self._revoke_timeout = settings.drain_timeout_seconds + 10.0
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._outstanding = 0
        self._assigned: set[TopicPartitionKey] = set()
        self._crowded: set[TopicPartitionKey] = set()  # paused on their own (see crowd)
        self._admission = Admission(
            Priorities(settings.topic_priorities),
            window=self._max,
            resume_mark=self._resume_mark,
        )
        self._deferred: set[TopicPartitionKey] = set()  # less urgent, paused (see admission)
        self._finished = 0  # events released so far: the window's turnover
        self._paused = False
        # Paused since the last statistics document: its end offsets may be stale (librdkafka
        # does not fetch a paused partition's high watermark), so no arrival rate from it.
        self._paused_lately = False
        self._hold = False  # stopping or halted: keep everything paused, hand nothing over
        self._discard = False  # stopping: records still fetched are dropped
        self._closing = threading.Event()
        # Set when capacity comes back or a command is queued: ends a soft hold early.
        self._wakeup = threading.Event()
        self._closed: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._consumer = Consumer(
            {
                **consumer_config(settings),
                "stats_cb": self._on_stats,
                "error_cb": self._on_error,
                # librdkafka's own log lines through our logging, not raw to stderr.
                "logger": LIBRDKAFKA_LOG,
            }
        )
        self._thread = threading.Thread(target=self._run, name="kafka-source", daemon=True)
        self._counts = PartitionCounts(topics)
        self._backlog = BacklogMeter()  # fed on the loop
        self._share_due = False  # an assignment came: count the partitions and apply the share
        self._share_retry_at = 0.0

    # --- loop side -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def release(self, count: int) -> None:
        """``count`` events handed over earlier are finished (or dropped)."""
        if count:
            with self._lock:
                self._outstanding -= count
                self._finished += count
            if self._outstanding < self._max:
                self._wakeup.set()

    @property
    def outstanding(self) -> int:
        return self._outstanding

    @property
    def backlog(self) -> Backlog:
        """What waits for this relay (see :mod:`consumer.pipeline.backlog`). Read from the loop."""
        return self._backlog.backlog(self._outstanding)

    @property
    def saturated(self) -> bool:
        """Whether no more records come until events finish: paused (back-pressure, halt,
        stop) or holding at the in-flight bound. Read from the loop; a stale answer only
        delays a bulk job."""
        return self._paused or self._outstanding >= self._max

    async def commit(self, positions: Positions) -> Positions:
        """Store and commit ``positions`` (those still assigned); returns what was committed."""
        return await self._call(lambda: self._commit(positions))

    def crowd(self, partitions: frozenset[TopicPartitionKey]) -> None:
        """Hold exactly these partitions paused (and resume those no longer named). Idempotent,
        so the loop repeats it now and then: a stale call only lasts until the next one."""
        self._commands.put(lambda: self._set_crowded(partitions))
        self._wakeup.set()

    def hold(self, *, discard: bool) -> None:
        """Pause every partition for good (halt, or shutdown when ``discard``: drop new records)."""
        self._discard = self._discard or discard
        self._hold = True

    async def close(self) -> None:
        """Leave the group (librdkafka revokes, so the listener drains and we commit) and stop."""
        self._closing.set()
        # Bounded: past it the process exits anyway and the group times this member out.
        # (asyncio.wait, not wait_for: the thread must still be able to resolve the future.)
        await asyncio.wait([asyncio.wrap_future(self._closed)], timeout=CLOSE_SECONDS)

    async def _call(self, fn: Callable[[], T]) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)

        self._commands.put(run)
        self._wakeup.set()
        if self._closed.done():
            raise RuntimeError("kafka source is closed")
        return await asyncio.wrap_future(future)

    # --- source thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._consumer.subscribe(
                self._topics,
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            while not self._closing.is_set():
                self._run_commands()
                # Before the soft hold: the window is seen full here, right after it filled.
                self._prefer_urgent()
                self._soft_hold()
                self._adjust_flow()
                messages = self._consumer.consume(self._room(), _CONSUME_TIMEOUT)
                # Before the records: those of new partitions go out under the new share.
                self._refresh_share()
                if messages:
                    self._hand_over(messages)
            self._run_commands()
        except Exception as exc:  # librdkafka gave up: the relay must stop and restart
            log.exception("kafka source failed")
            self._to_loop(self._listener.on_fatal_error, f"kafka source failed: {exc}")
        finally:
            try:
                self._consumer.close()
            except Exception:
                log.exception("closing the kafka consumer failed")
            self._assigned.clear()
            self._closed.set_result(None)
            # Commands queued after the end must not wait forever.
            self._run_commands()

    def _run_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            command()

    def _hand_over(self, messages: list[Any]) -> None:
        records = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka consume error", error=str(error))
                continue
            records.append(SourceRecord.from_message(message))
        if not records or self._discard:
            return
        with self._lock:
            self._outstanding += len(records)
        if self._in_step:
            self._hand_over_in_step(records)
        else:
            self._to_loop(self._listener.on_records, records)

    def _hand_over_in_step(self, records: list[SourceRecord]) -> None:
        """Several accounts: fetch no more until the loop took these records, and with them
        named the partitions of an account at its window (consumer.accounts.window): the next
        turn applies that pause before it fetches, instead of fetching past the window."""
        taken = threading.Event()

        def take() -> None:
            try:
                self._listener.on_records(records)
            finally:
                taken.set()

        self._to_loop(take)
        taken.wait(_IN_STEP_SECONDS)

    def _soft_hold(self) -> None:
        """At the in-flight bound, wait a little for capacity before pausing (see module doc)."""
        if self._paused:
            return
        deadline = time.monotonic() + _SOFT_HOLD_SECONDS
        # A command may set _hold (halt, stop): then _adjust_flow pauses for good at once.
        while self._holding_softly() and (remaining := deadline - time.monotonic()) > 0:
            self._wakeup.wait(remaining)
            self._wakeup.clear()
            self._run_commands()

    def _holding_softly(self) -> bool:
        full = self._outstanding >= self._max
        return full and not self._hold and not self._closing.is_set()

    def _adjust_flow(self) -> None:
        outstanding = self._outstanding
        EVENTS_IN_FLIGHT.set(outstanding)
        if self._hold:
            want = True
        elif self._paused:
            want = outstanding >= self._resume_mark
        else:
            want = outstanding >= self._max
        if want == self._paused:
            return
        # Crowded and deferred partitions stay paused through a resume.
        keys = self._assigned if want else self._assigned - self._crowded - self._deferred
        partitions = [TopicPartition(t, p) for t, p in keys]
        if partitions:
            if want:
                self._consumer.pause(partitions)
            else:
                self._consumer.resume(partitions)
        self._paused = want
        self._paused_lately = self._paused_lately or want
        PARTITIONS_PAUSED.set(len(partitions) if want else 0)
        log.debug("partitions paused" if want else "partitions resumed", outstanding=outstanding)

    def _set_crowded(self, partitions: frozenset[TopicPartitionKey]) -> None:
        wanted = partitions & self._assigned
        newly = [TopicPartition(t, p) for t, p in wanted - self._crowded]
        freed = [TopicPartition(t, p) for t, p in self._crowded - wanted - self._deferred]
        self._crowded = set(wanted)
        PARTITIONS_PENDING_PAUSED.set(len(wanted))
        if self._pause_apart(newly, freed):
            log.info("partition paused: too many events wait behind an unfinished one")

    def _pause_apart(self, newly: list[TopicPartition], freed: list[TopicPartition]) -> bool:
        """Pause ``newly`` and resume ``freed`` (partitions paused on their own: crowded or
        deferred); whether any was paused. Nothing while everything is paused already:
        _adjust_flow's resume leaves the crowded and deferred ones paused."""
        if self._paused:
            return False
        if newly:
            self._consumer.pause(newly)
        if freed:
            self._consumer.resume(freed)
        return bool(newly)

    def _room(self) -> int:
        """Records the next ``consume`` may take: what fits in the window, so that a deferral
        is never undone by a batch that already overfilled it (at least one: ``consume`` keeps
        serving rebalances, and a paused or held source gets nothing anyway)."""
        return max(1, min(self._batch, self._max - self._outstanding))

    def _prefer_urgent(self) -> None:
        """Pause the partitions admission defers now, and resume those it no longer does."""
        wanted = self._admission.deferred(
            self._assigned, self._outstanding, self._finished, time.monotonic()
        )
        if wanted == self._deferred:
            return
        newly = [TopicPartition(t, p) for t, p in wanted - self._deferred - self._crowded]
        freed = [TopicPartition(t, p) for t, p in self._deferred - wanted - self._crowded]
        self._deferred = wanted
        PARTITIONS_DEFERRED.set(len(wanted))
        if self._pause_apart(newly, freed):
            log.debug("less urgent partitions deferred: the in-flight window is held")

    def _commit(self, positions: Positions) -> Positions:
        owned = {key: pos for key, pos in positions.items() if key in self._assigned}
        if not owned:
            return {}
        offsets = [TopicPartition(t, p, c.position, c.metadata) for (t, p), c in owned.items()]
        started = time.perf_counter()
        try:
            self._consumer.store_offsets(offsets=offsets)
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Rebalance in progress, coordinator moved...: the next commit carries the same
            # (or a higher) watermark, so nothing is lost by waiting for it.
            log.warning("offset commit failed", error=str(exc.args[0]))
            return {}
        COMMIT_DURATION.observe(time.perf_counter() - started)
        committed: Positions = {}
        for tp in result or ():
            if tp.error is None:
                committed[(tp.topic, tp.partition)] = owned[(tp.topic, tp.partition)]
            else:
                log.warning(
                    "offset commit failed",
                    topic=tp.topic,
                    partition=tp.partition,
                    error=str(tp.error),
                )
        return committed

    # librdkafka callbacks (on this thread, inside consume/close) -----------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        consumer.incremental_assign(partitions)
        self._assigned.update(keys)
        if self._paused and partitions:
            consumer.pause(partitions)
            PARTITIONS_PAUSED.set(len(self._assigned))
        self._to_loop(self._listener.on_assigned, keys, self._read_commits(consumer, partitions))
        self._share_due = True

    def _read_commits(self, consumer: Consumer, partitions: list[TopicPartition]) -> Positions:
        """The group's commits of ``partitions`` with their metadata (librdkafka reads only the
        offsets itself). Unreadable: none, and the records past the commits are all sent."""
        if not partitions:
            return {}
        try:
            found = committed(consumer, partitions, COMMITTED_READ_SECONDS)
        except KafkaException as exc:
            log.warning("reading the committed offsets failed", error=str(exc.args[0]))
            return {}
        return {
            (tp.topic, tp.partition): Commit(tp.offset, tp.metadata or "")
            for tp in found
            if tp.error is None and tp.offset >= 0
        }

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        positions: Positions = {}
        try:
            positions = self._wait_for_loop(self._listener.on_revoked(keys))
        except Exception as exc:
            # The drain was cancelled (a stalled loop, past its deadline), maybe before it even
            # started: the partitions go uncommitted, exactly like a loss. Queued before any
            # later assignment of them, so the loop detaches the old state first.
            log.warning("draining revoked partitions failed", error=str(exc))
            self._to_loop(self._listener.on_lost, keys)
        if positions:
            self._commit(positions)
        self._forget(keys)

    def _forget(self, keys: list[TopicPartitionKey]) -> None:
        self._assigned.difference_update(keys)
        self._crowded.difference_update(keys)
        self._deferred.difference_update(keys)
        PARTITIONS_PENDING_PAUSED.set(len(self._crowded))
        PARTITIONS_DEFERRED.set(len(self._deferred))
        if self._paused:
            PARTITIONS_PAUSED.set(len(self._assigned))
        self._apply_share()

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._forget(keys)
        log.warning("partitions lost", partitions=len(keys))
        self._to_loop(self._listener.on_lost, keys)

    def _refresh_share(self) -> None:
        """After an assignment, count the subscribed partitions and apply the (grown) share.
        Here, not in the assign callback: a metadata call made inside a librdkafka callback
        clears confluent-kafka's per-call state, and the next callback of that poll aborts the
        process. Growing a little later is safe; shrinking (at revoke) needs no metadata."""
        retry = self._counts.stale and time.monotonic() >= self._share_retry_at
        if not (self._share_due or (retry and self._assigned)):
            return
        self._share_due = False
        self._counts.refresh(self._consumer)
        self._share_retry_at = time.monotonic() + _SHARE_RETRY_SECONDS
        self._apply_share()

    def _apply_share(self) -> None:
        """Hand this member's share to the loop; in force when this returns (bounded), so a
        revoke gives its partitions up only after the quota they used went with them."""
        share = partition_share(self._assigned, self._counts.known)
        applied = threading.Event()

        def apply() -> None:
            try:
                self._listener.on_share(share)
            finally:
                applied.set()

        self._to_loop(apply)
        applied.wait(_SHARE_APPLY_SECONDS)

    def _on_stats(self, stats_json: str) -> None:  # on this thread, inside consume
        fetched = not self._paused_lately
        self._paused_lately = self._paused
        self._to_loop(self._took_stats, stats_json, fetched)

    def _took_stats(self, stats_json: str, fetched: bool) -> None:  # on the loop
        stats = record_kafka_stats(stats_json)
        if stats is not None:
            self._backlog.update(stats, time.monotonic(), arrivals=fetched)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._to_loop(self._listener.on_fatal_error, f"kafka fatal error: {error}")
        else:
            held = self._errors.admit(error.name())
            if held is not None:
                log.warning(
                    "kafka client error",
                    error=error.str(),
                    servers=self._servers,
                    held_back=held,
                )
            self._to_loop(self._on_client_error, error.str())

    def _wait_for_loop(self, coroutine: Coroutine[Any, Any, Positions]) -> Positions:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(self._revoke_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("the event loop did not drain in time") from None

    def _to_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        # A closed loop means the process is exiting.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)
