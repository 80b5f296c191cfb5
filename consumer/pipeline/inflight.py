"""The book of work in flight: where an event's offset becomes committable.

The invariant: a record's offset counts towards its partition's contiguous watermark (see
:mod:`consumer.pipeline.offsets`) only when :meth:`InFlight.finish` is called for it, and that
happens exactly when the event is *finished*: every Klaviyo request of it was accepted (in batch
mode: every Create Event item of it was accepted or found to be a duplicate in its bulk job), or
its record was written to the dead-letter topic and the broker acknowledged the write (in batch
mode: and none of its items is left in a bulk job, see :meth:`InFlight.settle`), or, read
again after a crash or a rebalance, the group's last commit maps it as finished by an earlier
owner (:mod:`consumer.pipeline.completed`): it is then skipped at once. Nothing else moves a
watermark; the commit loop commits only what :meth:`InFlight.committable` gives.

The book also answers, for a revoke, whether the partition's *started* events are done
(``running``), keeps records of a partition being revoked from starting (``revoking``), and
forgets a revoked or lost partition at once (``detach``): work still running for it can no
longer move any watermark, even if the partition comes back (see ``PartitionOffsets``).

Every method runs on the event loop. The book tells the source (its :class:`Flow`) how many
taken records are done, so the source's in-flight bound holds, and which partitions are crowded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Protocol

from consumer.observability.logging import get_logger
from consumer.observability.metrics import (
    EVENTS_CONSUMED,
    OLDEST_UNFINISHED_AGE,
    REPLAY_RESENT,
    REPLAY_SKIPPED,
)
from consumer.pipeline.completed import CompletedMap, MalformedMap, decode
from consumer.pipeline.offsets import (
    Commit,
    Earlier,
    OffsetTracker,
    PartitionOffsets,
    TopicPartitionKey,
)
from consumer.pipeline.records import SourceRecord
from consumer.pulse import Pulse

log = get_logger(__name__)

Positions = dict[TopicPartitionKey, Commit]
# A commit is due as soon as an event finished since the last one: what a kill -9 resends
# because it finished after the last commit is then what finished within the commits' spacing
# (a tenth of a second, so at most ten commits a second: a trifle for the broker), not a batch
# of finishes (waiting for 20 or 100 here before left ~20-100 resends per kill).
# Once this many finished since the last commit (a bulk job's 202 finishes up to 1,000 events at
# once), the shorter spacing applies: the job is mapped tens of milliseconds after its answer,
# and a crash just after a job was accepted resends none of it (bench scenario 6).
COMMIT_AT_ONCE = 100


class Flow(Protocol):
    """What the book tells the source (a subset of :class:`consumer.pipeline.ports.Source`)."""

    def release(self, count: int) -> None: ...

    def crowd(self, partitions: frozenset[TopicPartitionKey]) -> None: ...


class Work:
    """One Kafka record on its way through the relay."""

    __slots__ = (
        "account",
        "dead",
        "done",
        "occurred_at",
        "offsets",
        "parked",
        "record",
        "remaining",
        "skip",
        "started",
        "taken",
    )

    def __init__(self, record: SourceRecord, offsets: PartitionOffsets, taken: float) -> None:
        self.record = record
        self.offsets = offsets
        self.taken = taken  # time.monotonic() when the source handed it over
        self.started = False
        self.done = False
        self.dead = False  # handed to the dead-letter topic: Klaviyo verdicts no longer count
        self.parked = False  # the broker acknowledged its dead letter
        self.remaining = 0  # batch mode: Create Event items not yet settled (sent or dropped)
        self.occurred_at: datetime | None = None
        self.account = "default"  # the Klaviyo account it goes to (consumer.accounts.routing)
        # Its first Create Event steps an earlier owner got accepted (read again after a crash
        # or a rebalance): not sent again.
        self.skip = 0


class InFlight:
    def __init__(self, bound: int | None) -> None:
        self._offsets = OffsetTracker(bound)
        self._running: dict[PartitionOffsets, int] = {}  # started and unfinished, per partition
        self._revoking: set[TopicPartitionKey] = set()
        # Set whenever an event finishes or partitions go: drains re-check their condition.
        self._progress = asyncio.Event()
        self._finished_since_commit = 0
        self._commit_due = asyncio.Event()
        # Commits of the commit loop: begun so far, and the latest begun one that completed.
        self._commits_begun = 0
        self._commits_done = 0
        self._commit_done = Pulse()  # fired when one completes
        self._commit_waiters = 0  # in commit_after: the next commit should not wait long
        # The source exists once the relay runs; before that no record is in flight.
        self._flow: Flow | None = None

    def attach(self, flow: Flow) -> None:
        self._flow = flow

    # --- taking records ----------------------------------------------------------------------

    def assign(self, partitions: Iterable[TopicPartitionKey], commits: Positions) -> None:
        """Track these partitions; ``commits``: what the group had committed for them (their
        maps of finished offsets are skipped when read again)."""
        inherited: dict[TopicPartitionKey, CompletedMap] = {}
        for (topic, partition), commit in commits.items():
            try:
                completed = decode(commit.position, commit.metadata)
            except MalformedMap as exc:
                # Written by another version or tool: every record past the position is sent.
                log.warning(
                    "commit metadata ignored", topic=topic, partition=partition, error=str(exc)
                )
                continue
            if completed is not None:
                inherited[(topic, partition)] = completed
        self._offsets.assign(partitions, inherited)

    def take(self, records: list[SourceRecord]) -> list[Work]:
        """Track the records the source handed over; returns the work to dispatch. Records of
        partitions no longer ours (or out of order) are dropped and released at once."""
        taken: list[Work] = []
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
            earlier = tracker.earlier(record.offset)
            try:
                tracker.track(record.offset, now)
            except ValueError:
                log.warning("record out of order, skipped", where=record.where)
                dropped += 1
                continue
            counts[record.topic] = counts.get(record.topic, 0) + 1
            if earlier is Earlier.FINISHED:
                # Finished by an earlier owner after its watermark: Klaviyo has it (or its
                # dead letter is parked). Not decoded nor sent; it only moves the watermark.
                tracker.finish(record.offset)
                dropped += 1
                REPLAY_SKIPPED.labels(record.topic).inc()
            else:
                work = Work(record, tracker, now)
                if earlier is Earlier.STARTED:
                    REPLAY_RESENT.labels(record.topic).inc()
                    # Still started as far as a commit goes, with the steps accepted so far:
                    # another crash before it finishes must not lose them.
                    work.skip = tracker.accepted_earlier(record.offset)
                    tracker.start(record.offset, work.skip)
                taken.append(work)
            crowded = crowded or tracker.crowded != was_crowded
        for topic, count in counts.items():
            EVENTS_CONSUMED.labels(topic).inc(count)
        self._release(dropped)
        if crowded:
            self._crowd()
        return taken

    # --- one event ---------------------------------------------------------------------------

    def current(self, work: Work) -> bool:
        """Whether ``work`` may still start: False once its partition is revoked or lost (the
        next owner sends it)."""
        record = work.record
        revoking = (record.topic, record.partition) in self._revoking
        return not work.offsets.detached and not revoking

    def start(self, work: Work) -> None:
        """``work`` is being processed: a revoke of its partition now waits for it."""
        work.started = True
        self._running[work.offsets] = self._running.get(work.offsets, 0) + 1
        work.offsets.start(work.record.offset, work.skip)

    def finish(self, work: Work) -> None:
        """``work`` is finished (see the module's invariant); idempotent."""
        if work.done:
            return
        work.done = True
        tracker = work.offsets
        if work.started and tracker in self._running:
            self._running[tracker] -= 1
        if not tracker.detached:
            was_crowded = tracker.crowded
            tracker.finish(work.record.offset)
            self._release(1)
            if was_crowded and not tracker.crowded:
                self._crowd()
        self._progress.set()
        self._finished_since_commit += 1
        self._commit_due.set()

    async def wait_commit_due(self, interval: float) -> bool:
        """Return after ``interval`` seconds, or as soon as an event finished since the last
        return; whether :data:`COMMIT_AT_ONCE` events finished
        meanwhile (the commit should not wait for the usual spacing)."""
        # Not asyncio.wait_for: on Python 3.11 it drops a cancellation that comes as the event
        # is set (bpo-42130), and the event is set at every finish: the shutdown then waited
        # for a commit loop that never ended.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await self._commit_due.wait()
        self._commit_due.clear()
        many = self._finished_since_commit >= COMMIT_AT_ONCE or self._commit_waiters > 0
        self._finished_since_commit = 0
        return many

    def commit_began(self) -> int:
        """The commit loop begins a commit; returns its number (for :meth:`commit_ended`)."""
        self._commits_begun += 1
        return self._commits_begun

    def commit_ended(self, number: int) -> None:
        """Commit ``number`` completed (or failed: the next one carries the same)."""
        self._commits_done = max(self._commits_done, number)
        self._commit_done.fire()

    def commit_after(self) -> Awaitable[None]:
        """Completes once a commit begun after this call completed: what finished before the
        call is then in Kafka (auto mode's bulk window waits for it, see bulkwindow)."""
        self._commit_waiters += 1  # now: the commit loop may be deciding its spacing already
        self._commit_due.set()  # also for accepted steps of unfinished events (in the map too)
        return self._wait_commit(self._commits_begun)

    async def _wait_commit(self, begun: int) -> None:
        try:
            while self._commits_done <= begun:
                await self._commit_done.wait()
        finally:
            self._commit_waiters -= 1

    def settle(self, work: Work) -> None:
        """Finish ``work`` once none of its items is in a bulk job any more and, when it was
        dead-lettered, its dead letter is acknowledged: a committed offset must not leave a
        bulk request of it in flight, to land after (or beside) its replay."""
        if work.remaining == 0 and (work.parked or not work.dead):
            self.finish(work)

    # --- revokes and losses ------------------------------------------------------------------

    def revoking(self, partitions: list[TopicPartitionKey]) -> Callable[[], bool]:
        """Keep these partitions' waiting records from starting; returns a condition that holds
        once their started events are finished."""
        trackers = [t for key in partitions if (t := self._offsets.get(*key)) is not None]
        self._revoking.update(partitions)
        return lambda: all(self._running.get(t, 0) == 0 for t in trackers)

    def detach(self, partitions: list[TopicPartitionKey]) -> None:
        """Forget these partitions: their unfinished events stop counting, and work still
        running for them is ignored."""
        self._revoking.difference_update(partitions)
        for tracker in self._offsets.detach(partitions):
            self._release(tracker.unfinished)
            self._running.pop(tracker, None)
            with contextlib.suppress(KeyError):
                OLDEST_UNFINISHED_AGE.remove(tracker.topic, str(tracker.partition))
        self._progress.set()

    async def wait_until(
        self, condition: Callable[[], bool], deadline: float, give_up: Callable[[], bool]
    ) -> bool:
        """Wait for ``condition()`` (re-checked whenever an event finishes) until ``deadline``
        (loop time) or ``give_up()``; returns whether it holds."""
        loop = asyncio.get_running_loop()
        while not condition():
            remaining = deadline - loop.time()
            if remaining <= 0 or give_up():
                return condition()
            self._progress.clear()
            with contextlib.suppress(TimeoutError):  # (not wait_for: see wait_commit_due)
                async with asyncio.timeout(remaining):
                    await self._progress.wait()
        return True

    # --- committing --------------------------------------------------------------------------

    def committable(self, only: list[TopicPartitionKey] | None = None) -> Positions:
        return self._offsets.committable(only)

    def mark_committed(self, positions: Positions) -> None:
        self._offsets.mark_committed(positions)

    @property
    def partitions(self) -> int:
        return len(self._offsets.partitions())

    def get(self, topic: str, partition: int) -> PartitionOffsets | None:
        return self._offsets.get(topic, partition)

    def crowded(self) -> frozenset[TopicPartitionKey]:
        return self._offsets.crowded()

    def watch(self) -> None:
        """Report how long each partition's watermark has been held, and repeat which ones are
        crowded (the source applies the set; a repeat corrects a call lost in a rebalance)."""
        now = time.monotonic()
        for tracker in self._offsets.partitions():
            age = tracker.oldest_unfinished_age(now)
            OLDEST_UNFINISHED_AGE.labels(tracker.topic, str(tracker.partition)).set(age)
        self._crowd()

    def _release(self, count: int) -> None:
        if self._flow is not None and count:
            self._flow.release(count)

    def _crowd(self) -> None:
        if self._flow is not None:
            self._flow.crowd(self._offsets.crowded())
