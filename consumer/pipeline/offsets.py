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

A commit also carries the offsets finished above its position (:mod:`consumer.pipeline.completed`),
so a later owner skips them instead of sending them again; the map an earlier owner committed is
*inherited* at assignment, and carried on in this assignment's commits until passed.

Pure bookkeeping, no I/O and no asyncio (times are passed in), so it is tested on its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from enum import Enum
from typing import NamedTuple

from consumer.pipeline.completed import MAX_SPAN, CompletedMap, encode

TopicPartitionKey = tuple[str, int]


class Commit(NamedTuple):
    """A partition's commit: Kafka's position (the next offset to read) and its metadata."""

    position: int
    metadata: str = ""


class Earlier(Enum):
    """What an earlier owner's commit says of an offset read again."""

    UNSEEN = "unseen"  # not started by it (as far as its last commit says): nothing sent yet
    FINISHED = "finished"  # finished by it: skip
    STARTED = "started"  # started by it, unfinished at its last commit: maybe at Klaviyo already


class PartitionOffsets:
    """The offsets of one partition taken in the current assignment and not yet committable.

    An instance lives as long as one assignment of its partition: on revoke or loss it is
    ``detached``, and work still running for it can no longer move its watermark, even if the
    partition comes back (that assignment gets a fresh instance).
    """

    __slots__ = (
        "_bound",
        "_committed_version",
        "_inherited",
        "_offered",
        "_pending",
        "_start",
        "_started",
        "_taken_at",
        "_unfinished",
        "_version",
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
        *,
        bound: int | None = None,
        inherited: CompletedMap | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self._bound = bound
        self._pending: deque[int] = deque()  # taken, not yet below the watermark, in order
        self._taken_at: deque[float] = deque()  # when each of them was taken
        self._unfinished: set[int] = set()
        # Unfinished offsets whose event is being processed → how many of its Create Event
        # steps Klaviyo accepted so far (the first ones in plan order).
        self._started: dict[int, int] = {}
        self.crowded = False  # too many pending: the source holds the partition paused
        # Kafka's position: the offset of the next record to read, i.e. what a commit stores.
        self.next_position: int | None = None
        self._start: int | None = None  # the first offset taken in this assignment
        self._inherited = inherited
        self._version = 0  # counts finishes: a commit is due when it moved since the last one
        self._committed_version = 0
        self._offered: tuple[int, Commit] | None = None  # the last commit built, and its version
        self.detached = False

    def earlier(self, offset: int) -> Earlier:
        """What the inherited map says of ``offset`` (about to be taken)."""
        inherited = self._inherited
        if inherited is None:
            return Earlier.UNSEEN
        if inherited.finished(offset):
            return Earlier.FINISHED
        return Earlier.STARTED if inherited.started(offset) else Earlier.UNSEEN

    def accepted_earlier(self, offset: int) -> int:
        """How many of ``offset``'s first Create Event steps the inherited map says Klaviyo
        accepted (0 unless it was started by an earlier owner)."""
        inherited = self._inherited
        return 0 if inherited is None else inherited.accepted(offset)

    def start(self, offset: int, steps: int = 0) -> None:
        """The event of ``offset`` is being processed (``steps``: its first Create Event steps
        accepted already, by an earlier owner): requests of it may reach Klaviyo."""
        if offset in self._unfinished:
            self._started[offset] = max(steps, self._started.get(offset, 0))

    def step_accepted(self, offset: int) -> None:
        """One more Create Event step of ``offset``'s event was accepted (they are accepted in
        plan order: the count is how many of its first steps need not be sent again)."""
        if offset in self._started:
            self._started[offset] += 1
            self._version += 1

    def track(self, offset: int, now: float = 0.0) -> None:
        """Record that ``offset`` was taken at ``now``; offsets of a partition arrive in
        increasing order. May turn the partition crowded."""
        if self._pending and offset <= self._pending[-1]:
            raise ValueError(f"offset {offset} taken out of order on {self.topic}/{self.partition}")
        if not self._pending and self.next_position is not None and offset < self.next_position:
            raise ValueError(f"offset {offset} already passed on {self.topic}/{self.partition}")
        if self._start is None:
            self._start = offset
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
        self._started.pop(offset, None)
        self._version += 1
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

    def committable(self) -> Commit | None:
        """The commit to make now, or None when nothing finished since the last commit.

        Its position is the watermark (the first offset taken, while the first one is still
        unfinished: nothing below it is ours to send); its metadata maps the finished offsets
        above, this assignment's and those inherited past what it has taken so far."""
        if self._version == self._committed_version or self._start is None:
            return None
        if self._offered is not None and self._offered[0] == self._version:
            return self._offered[1]
        position = self._start if self.next_position is None else self.next_position
        last = self._pending[-1] if self._pending else position - 1
        # Holes in a compacted topic can spread few offsets far apart: the map stops at MAX_SPAN.
        limit = position + MAX_SPAN
        end = min(last + 1, limit)
        done = (o for o in self._pending if o not in self._unfinished)
        finished = _bitmap(done, position, end)
        started = _bitmap(self._started, position, end)
        steps = {o - position: n for o, n in self._started.items() if n and position <= o < end}
        inherited = self._inherited
        if inherited is not None and inherited.end > end and inherited.position < limit:
            shift = inherited.position - position
            tail_done, tail_begun, tail_steps = inherited.above(last)
            tails = [t << shift if shift >= 0 else t >> -shift for t in (tail_done, tail_begun)]
            finished |= tails[0]
            started |= tails[1]
            steps.update((i + shift, n) for i, n in tail_steps.items() if i + shift >= 0)
            end = inherited.end
        commit = Commit(position, encode(end - position, finished, started, steps))
        self._offered = (self._version, commit)
        return commit

    def mark_committed(self, commit: Commit) -> None:
        """``commit`` (as :meth:`committable` gave it) is stored in Kafka."""
        if self._offered is not None and self._offered[1] == commit:
            self._committed_version = max(self._committed_version, self._offered[0])


def _bitmap(offsets: Iterable[int], position: int, end: int) -> int:
    """Bit i set for each of ``offsets`` equal to ``position + i`` and below ``end``."""
    raw = bytearray((end - position + 7) // 8)
    for offset in offsets:
        if position <= offset < end:
            i = offset - position
            raw[i >> 3] |= 1 << (i & 7)
    return int.from_bytes(raw, "little")


class OffsetTracker:
    """The live :class:`PartitionOffsets` of every assigned partition."""

    def __init__(self, bound: int | None = None) -> None:
        self._bound = bound
        self._partitions: dict[TopicPartitionKey, PartitionOffsets] = {}

    def assign(
        self,
        partitions: Iterable[TopicPartitionKey],
        inherited: dict[TopicPartitionKey, CompletedMap] | None = None,
    ) -> None:
        """Start tracking these partitions; ``inherited``: the maps their last commits hold."""
        inherited = inherited or {}
        for topic, partition in partitions:
            old = self._partitions.get((topic, partition))
            if old is not None:
                old.detached = True
            tracker = PartitionOffsets(
                topic, partition, bound=self._bound, inherited=inherited.get((topic, partition))
            )
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
    ) -> dict[TopicPartitionKey, Commit]:
        """Commits to make for all (or ``only`` these) partitions where events finished since
        the last successful commit."""
        keys = self._partitions.keys() if only is None else only
        out: dict[TopicPartitionKey, Commit] = {}
        for key in keys:
            tracker = self._partitions.get(key)
            commit = tracker.committable() if tracker is not None else None
            if commit is not None:
                out[key] = commit
        return out

    def mark_committed(self, commits: dict[TopicPartitionKey, Commit]) -> None:
        for key, commit in commits.items():
            tracker = self._partitions.get(key)
            if tracker is not None:
                tracker.mark_committed(commit)
