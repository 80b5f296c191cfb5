"""Which dead letters a replay sends, and the progress it commits once they are published.

Pure: given the records read from the dead-letter topic, the replay group's progress and the
operator's selection, :func:`plan_replays` decides; :func:`progress_after` says what to commit
for the replays the broker acknowledged. The Kafka side is in ``consumer.tools.dlq_kafka``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from consumer.tools.deadletters import (
    NotReplayable,
    ParkedRecord,
    Replay,
    Selection,
    plan_replay,
)
from consumer.tools.progress import PartitionProgress


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    replays: list[Replay] = field(default_factory=list)
    already_replayed: int = 0
    not_selected: int = 0
    unreplayable: list[tuple[ParkedRecord, str]] = field(default_factory=list)


def plan_replays(
    letters: Iterable[ParkedRecord],
    progress: Mapping[int, PartitionProgress],
    selection: Selection,
    *,
    now: datetime,
    backfill_after: timedelta,
    partitions: Mapping[str, int],
) -> ReplayPlan:
    """Sort the dead letters into: to replay, replayed before, not selected, cannot be replayed.

    ``partitions`` is the partition count of each existing topic: a letter whose source topic is
    gone cannot be replayed, and one whose source partition is gone is sent by key instead.
    """
    replays: list[Replay] = []
    unreplayable: list[tuple[ParkedRecord, str]] = []
    already = not_selected = 0
    for letter in letters:
        done = progress.get(letter.partition)
        if done is not None and done.replayed(letter.offset):
            already += 1
            continue
        if not selection.matches(letter):
            not_selected += 1
            continue
        try:
            replay = plan_replay(letter, now, backfill_after)
        except NotReplayable as exc:
            unreplayable.append((letter, str(exc)))
            continue
        count = partitions.get(replay.topic)
        if count is None:
            unreplayable.append((letter, f"source topic {replay.topic} does not exist"))
            continue
        if replay.partition is not None and not 0 <= replay.partition < count:
            replay = Replay(replay.letter, replay.topic, None, replay.headers, replay.backfill)
        replays.append(replay)
    return ReplayPlan(replays, already, not_selected, unreplayable)


def progress_after(
    progress: Mapping[int, PartitionProgress],
    sent: Sequence[Replay],
    low: Mapping[int, int],
) -> dict[int, PartitionProgress]:
    """The progress to commit once ``sent`` are acknowledged (per dead-letter partition)."""
    offsets: dict[int, list[int]] = {}
    for replay in sent:
        offsets.setdefault(replay.letter.partition, []).append(replay.letter.offset)
    return {
        partition: progress.get(partition, PartitionProgress(low.get(partition, 0))).advance(
            offsets.get(partition, ()), low.get(partition, 0)
        )
        for partition in set(progress) | set(offsets)
    }
