"""Which offset of each partition may be committed: the contiguous watermark.

Events of one partition finish out of order (different keys run concurrently), so a finished
offset is only committable once every offset taken before it on that partition has finished
too. Committing the highest finished offset instead is how peers lose data: a crash after such
a commit skips the unfinished events below it for good.

Offsets are tracked in the order they were taken, not assumed to be consecutive: compacted
topics and transaction markers leave holes that no record will ever fill.

One event that never finishes (retried for ever, or a dead letter the broker keeps refusing)
holds its partition's watermark while the events behind it finish: every one of them stays
tracked until it passes. So a partition whose pending count reaches ``bound`` is *crowded*: the
source pauses it (only it) until the watermark moves and the count falls to half the bound.
Memory stays bounded by ``bound`` per partition (plus one fetched batch) whatever is stuck.

Pure bookkeeping, no I/O and no asyncio (times are passed in), so it is tested on its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

TopicPartitionKey = tuple[str, int]


class PartitionOffsets:
    """The offsets of one partition taken in the current assignment and not yet committable.

    An instance lives as long as one assignment of its partition: on revoke or loss it is
    ``detached``, and work still running for it can no longer move its watermark, even if the
    partition comes back (that assignment gets a fresh instance).
    """

    __slots__ = (
        "_bound",
        "_pending",
        "_taken_at",
        "_unfinished",
        "committed",
        "crowded",
        "detached",
        "next_position",
        "partition",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        committed: int | None = None,
        *,
        bound: int | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self._bound = bound
        self._pending: deque[int] = deque()  # taken, not yet below the watermark, in order
        self._taken_at: deque[float] = deque()  # when each of them was taken
        self._unfinished: set[int] = set()
        self.crowded = False  # too many pending: the source holds the partition paused
        # Kafka's position: the offset of the next record to read, i.e. what a commit stores.
        self.next_position: int | None = None
        self.committed = committed
        self.detached = False

    def track(self, offset: int, now: float = 0.0) -> None:
        """Record that ``offset`` was taken at ``now``; offsets of a partition arrive in
        increasing order. May turn the partition crowded."""
        if self._pending and offset <= self._pending[-1]:
            raise ValueError(f"offset {offset} taken out of order on {self.topic}/{self.partition}")
        if not self._pending and self.next_position is not None and offset < self.next_position:
            raise ValueError(f"offset {offset} already passed on {self.topic}/{self.partition}")
        self._pending.append(offset)
        self._taken_at.append(now)
        self._unfinished.add(offset)
        if self._bound is not None and len(self._pending) >= self._bound:
            self.crowded = True

    def finish(self, offset: int) -> int:
        """Mark ``offset`` finished; returns how many offsets became committable (0 or more).
        May end the crowding (hysteresis: at half the bound, so it does not flap)."""
        if offset not in self._unfinished:
            return 0  # finished twice, or never taken in this assignment: nothing to do
        self._unfinished.remove(offset)
        released = 0
        while self._pending and self._pending[0] not in self._unfinished:
            self.next_position = self._pending.popleft() + 1
            self._taken_at.popleft()
            released += 1
        if self.crowded and self._bound is not None and len(self._pending) <= self._bound // 2:
            self.crowded = False
        return released

    def oldest_unfinished_age(self, now: float) -> float:
        """Seconds since the oldest unfinished offset was taken (the head of the pending
        offsets is always unfinished); 0 when nothing is pending."""
        return now - self._taken_at[0] if self._taken_at else 0.0

    @property
    def pending(self) -> int:
        """Offsets taken and not yet below the watermark (finished or not)."""
        return len(self._pending)

    @property
    def unfinished(self) -> int:
        return len(self._unfinished)

    def committable(self) -> int | None:
        """The position to commit now, or None when nothing new is committable."""
        if self.next_position is None:
            return None
        if self.committed is not None and self.next_position <= self.committed:
            return None
        return self.next_position


class OffsetTracker:
    """The live :class:`PartitionOffsets` of every assigned partition."""

    def __init__(self, bound: int | None = None) -> None:
        self._bound = bound
        self._partitions: dict[TopicPartitionKey, PartitionOffsets] = {}

    def assign(self, partitions: Iterable[TopicPartitionKey]) -> None:
        for topic, partition in partitions:
            old = self._partitions.get((topic, partition))
            if old is not None:
                old.detached = True
            tracker = PartitionOffsets(topic, partition, bound=self._bound)
            self._partitions[(topic, partition)] = tracker

    def crowded(self) -> frozenset[TopicPartitionKey]:
        """The partitions to hold paused: too many offsets wait behind an unfinished one."""
        return frozenset(key for key, t in self._partitions.items() if t.crowded)

    def get(self, topic: str, partition: int) -> PartitionOffsets | None:
        return self._partitions.get((topic, partition))

    def detach(self, partitions: Iterable[TopicPartitionKey]) -> list[PartitionOffsets]:
        """Forget these partitions; returns their trackers (now detached)."""
        gone = []
        for key in partitions:
            tracker = self._partitions.pop(key, None)
            if tracker is not None:
                tracker.detached = True
                gone.append(tracker)
        return gone

    def partitions(self) -> list[PartitionOffsets]:
        return list(self._partitions.values())

    def committable(
        self, only: Iterable[TopicPartitionKey] | None = None
    ) -> dict[TopicPartitionKey, int]:
        """Positions to commit for all (or ``only`` these) partitions that moved since the last
        successful commit."""
        keys = self._partitions.keys() if only is None else only
        out: dict[TopicPartitionKey, int] = {}
        for key in keys:
            tracker = self._partitions.get(key)
            position = tracker.committable() if tracker is not None else None
            if position is not None:
                out[key] = position
        return out

    def mark_committed(self, positions: dict[TopicPartitionKey, int]) -> None:
        for key, position in positions.items():
            tracker = self._partitions.get(key)
            if tracker is not None and (tracker.committed is None or position > tracker.committed):
                tracker.committed = position
