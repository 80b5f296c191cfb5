"""The source's listener: records into the book of work in flight and the key lanes,
rebalances answered, watermarks committed.

A revoke drains the partition's started events (bounded by the drain timeout; a batch job is
sent at once rather than after its linger) and returns its watermark for the source to commit
before the partition goes; while stopping, the shutdown has drained already. A loss (or a
revoke the loop could not answer in time) drops the partition's work uncommitted. While the
relay is halted nothing is committed, not even on revoke. Every method runs on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from consumer.observability.health import RelayState
from consumer.observability.logging import get_logger
from consumer.pipeline.delivery import Delivery
from consumer.pipeline.dispatch import Dispatcher
from consumer.pipeline.inflight import InFlight, Work
from consumer.pipeline.offsets import TopicPartitionKey
from consumer.pipeline.ports import Source
from consumer.pipeline.records import SourceRecord
from consumer.pipeline.sending import Halt
from consumer.pipeline.source import Positions
from consumer.settings import Settings

log = get_logger(__name__)

_MIN_COMMIT_SPACING = 0.1
# After many events finished at once (a bulk job's 202): a crash until the commit resends them
# all, so it goes sooner. Still at most 50 commits a second, and only at thousands of events/s.
_AT_ONCE_COMMIT_SPACING = 0.02


class Listener:
    def __init__(
        self,
        settings: Settings,
        state: RelayState,
        *,
        book: InFlight,
        dispatcher: Dispatcher[Work],
        delivery: Delivery,
        halt: Halt,
        on_fatal: Callable[[str], None],
        on_share: Callable[[float], None] = lambda _share: None,
    ) -> None:
        self._settings = settings
        self._state = state
        self._book = book
        self._dispatcher = dispatcher
        self._delivery = delivery
        self._halt = halt
        self._on_fatal = on_fatal
        self._on_share = on_share

    def on_records(self, records: list[SourceRecord]) -> None:
        for work in self._book.take(records):
            self._dispatcher.submit(work.record.key, work)
            self._delivery.submitted()

    def on_assigned(self, partitions: list[TopicPartitionKey], commits: Positions) -> None:
        self._book.assign(partitions, commits)
        self._state.kafka_problem = None
        self._state.joined = True  # even with nothing assigned: an idle member is a member
        self._state.partitions = self._book.partitions
        if partitions:
            log.info("partitions assigned", partitions=_names(partitions))

    async def on_revoked(self, partitions: list[TopicPartitionKey]) -> Positions:
        drained = self._book.revoking(partitions)
        if not self._state.stopping:
            self._delivery.hurry()
            deadline = asyncio.get_running_loop().time() + self._settings.drain_timeout_seconds
            try:
                done = await self._book.wait_until(drained, deadline, lambda: self._halt.halted)
            finally:  # also when the source gave up on us (it then reports them lost)
                self._delivery.relax()
            if not done:
                log.warning("revoke drain timeout", partitions=_names(partitions))
        positions = {} if self._halt.halted else self._book.committable(partitions)
        self._detach(partitions)
        if partitions:
            log.info("partitions revoked", partitions=_names(partitions))
        return positions

    def on_lost(self, partitions: list[TopicPartitionKey]) -> None:
        self._detach(partitions)

    def on_share(self, share: float) -> None:
        self._on_share(share)

    def on_fatal_error(self, message: str) -> None:
        self._on_fatal(message)

    def on_client_error(self, error: str) -> None:
        # Shown by /readyz while nothing is assigned: why the relay is not consuming.
        self._state.kafka_problem = f"{self._settings.kafka_bootstrap_servers}: {error}"

    def _detach(self, partitions: list[TopicPartitionKey]) -> None:
        self._book.detach(partitions)
        self._state.partitions = self._book.partitions

    # --- committing --------------------------------------------------------------------------

    async def commit_loop(self, source: Source) -> None:
        """Commit the watermarks every ``commit_interval_seconds``, or sooner once events
        finished (see :meth:`InFlight.wait_commit_due`), and report stuck ones."""
        loop = asyncio.get_running_loop()
        interval = self._settings.commit_interval_seconds
        last = loop.time()
        while True:
            many = await self._book.wait_commit_due(interval)
            # Never more often than ten times a second (fifty after a bulk job's worth), counted
            # from the last commit's start: a slow commit (a busy broker) does not add its own
            # time to the spacing, which is what a crash resends finished events within.
            spacing = _AT_ONCE_COMMIT_SPACING if many else _MIN_COMMIT_SPACING
            await asyncio.sleep(last + min(interval, spacing) - loop.time())
            last = loop.time()
            await self.commit_now(source)
            self._book.watch()

    async def commit_now(self, source: Source) -> None:
        if self._halt.halted:
            return
        number = self._book.commit_began()
        try:
            positions = self._book.committable()
            if positions:
                self._book.mark_committed(await source.commit(positions))
        finally:
            self._book.commit_ended(number)


def _names(partitions: list[TopicPartitionKey]) -> str:
    return ",".join(f"{topic}/{partition}" for topic, partition in sorted(partitions))
