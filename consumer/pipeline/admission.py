"""Priority admission: which partitions wait while the in-flight window is held by the quota.

The rate limiter serves waiting requests most urgent first (:mod:`consumer.klaviyo.ratelimit`),
but only among the events already in the relay. When ``MAX_IN_FLIGHT`` events of lead tracking
fill the window and wait for a short quota, a new password reset cannot even get in: it queues
in librdkafka behind the leads prefetched before it, for as long as the window takes to turn
over (at Create Event's ≈58/s, a 2,000-event window takes half a minute).

So when the window is *nearly full* (all but ``URGENT_RESERVE`` of it) and *slow* (at the
finish rate of the last sample it would take longer than ``SLOW_WINDOW_SECONDS`` to drain: a
short quota or an outage holds it), the partitions of every class less urgent than the most
urgent one assigned are *deferred*: the source pauses them until the window falls below the
resume mark (or turns fast again), and every place that frees goes to the urgent topics.
Deferring before the window is full keeps its last tenth for them: deferred only once it was
full, a reset fetched while a backlog drained still waited for places to free (measured: reset
p99 9.4 s in an outage's catch-up). Pausing, not reserving a share of the window for good: a
reserve would sit idle whenever the window is fast, where every class gets in anyway.

A window that turns over fast (batch mode with quota to spare) is never deferred: a pause
throws the partitions' prefetched records away and their fetch resumes only about a second
later (see :mod:`consumer.pipeline.source`), and there every class gets in within a second
anyway. Pure: the source passes in what it counts and the time.
"""

from __future__ import annotations

from collections.abc import Iterable

from consumer.pipeline.offsets import TopicPartitionKey
from consumer.priorities import Priorities

# A full window that would take longer than this to drain is held by the quota (or an outage).
SLOW_WINDOW_SECONDS = 2.0
# The share of the window kept for the most urgent class while it is slow (see ``deferred``).
URGENT_RESERVE = 0.1
# How often the finish rate is measured.
SAMPLE_SECONDS = 1.0


class Admission:
    def __init__(self, priorities: Priorities, *, window: int, resume_mark: int) -> None:
        self._priorities = priorities
        self._window = window
        self._resume_mark = resume_mark
        # Less urgent partitions pause this far before the window is full, so an urgent event
        # fetched meanwhile still gets in without waiting for the window to turn over.
        self._reserve = int(window * URGENT_RESERVE)
        self._sample: tuple[float, int] | None = None  # (when, events finished by then)
        self._slow = False
        self._deferring = False

    def deferred(
        self, assigned: Iterable[TopicPartitionKey], outstanding: int, finished: int, now: float
    ) -> set[TopicPartitionKey]:
        """The partitions to hold paused now: ``outstanding`` events are in the window and
        ``finished`` have finished since the start (a running count)."""
        slow = self._turning_slowly(outstanding, finished, now)
        mark = self._resume_mark if self._deferring else self._window - self._reserve
        self._deferring = slow and outstanding >= mark
        return self._less_urgent(assigned) if self._deferring else set()

    def _turning_slowly(self, outstanding: int, finished: int, now: float) -> bool:
        """Whether the window would take longer than ``SLOW_WINDOW_SECONDS`` to drain at the
        finish rate of the last sample (re-measured every ``SAMPLE_SECONDS``)."""
        if self._sample is None:
            self._sample = (now, finished)
        since, finished_then = self._sample
        if now - since >= SAMPLE_SECONDS:
            rate = (finished - finished_then) / (now - since)
            self._slow = outstanding > rate * SLOW_WINDOW_SECONDS
            self._sample = (now, finished)
        return self._slow

    def _less_urgent(self, assigned: Iterable[TopicPartitionKey]) -> set[TopicPartitionKey]:
        ranks = {key: self._priorities.rank(key[0]) for key in assigned}
        best = min(ranks.values(), default=0)
        return {key for key, rank in ranks.items() if rank > best}
