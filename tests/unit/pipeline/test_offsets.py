"""The contiguous watermark: a commit never passes an unfinished offset."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.pipeline.completed import CompletedMap, decode, encode
from consumer.pipeline.offsets import Commit, Earlier, OffsetTracker, PartitionOffsets


def position(offsets: PartitionOffsets) -> int | None:
    commit = offsets.committable()
    return commit.position if commit is not None else None


def finished_above(commit: Commit) -> set[int]:
    """The offsets the commit's map says are finished (above its position)."""
    completed = decode(commit.position, commit.metadata)
    if completed is None:
        return set()
    return {o for o in range(commit.position, completed.end) if completed.finished(o)}


def test_nothing_passes_the_first_unfinished_offset_but_later_ones_are_mapped() -> None:
    offsets = PartitionOffsets("t", 0)
    for offset in (5, 6, 7):
        offsets.track(offset)
    assert offsets.committable() is None  # nothing finished: nothing to commit
    assert offsets.finish(7) == 0
    assert offsets.finish(6) == 0
    held = offsets.committable()
    assert held is not None and held.position == 5 and finished_above(held) == {6, 7}
    assert offsets.finish(5) == 3
    assert offsets.committable() == Commit(8)  # Kafka's position: the next offset to read


def test_holes_left_by_compaction_do_not_block_the_watermark() -> None:
    offsets = PartitionOffsets("t", 0)
    for offset in (10, 14, 20):
        offsets.track(offset)
    offsets.finish(10)
    offsets.finish(14)
    assert position(offsets) == 15
    offsets.finish(20)
    assert position(offsets) == 21


def test_finishing_twice_or_an_untracked_offset_changes_nothing() -> None:
    offsets = PartitionOffsets("t", 0)
    offsets.track(1)
    offsets.track(2)
    assert offsets.finish(1) == 1
    assert offsets.finish(1) == 0
    assert offsets.finish(99) == 0
    assert offsets.unfinished == 1
    assert position(offsets) == 2


def test_offsets_must_arrive_in_order() -> None:
    offsets = PartitionOffsets("t", 0)
    offsets.track(3)
    with pytest.raises(ValueError, match="out of order"):
        offsets.track(3)
    offsets.finish(3)
    with pytest.raises(ValueError, match="already passed"):
        offsets.track(2)


def test_committed_position_is_not_offered_again() -> None:
    tracker = OffsetTracker()
    tracker.assign([("a", 0), ("a", 1)])
    part = tracker.get("a", 0)
    assert part is not None
    part.track(0)
    part.finish(0)
    assert tracker.committable() == {("a", 0): Commit(1)}
    tracker.mark_committed({("a", 0): Commit(1)})
    assert tracker.committable() == {}
    part.track(1)
    part.finish(1)
    assert tracker.committable(only=[("a", 1)]) == {}
    assert tracker.committable(only=[("a", 0)]) == {("a", 0): Commit(2)}


def test_detached_partition_is_forgotten_and_a_new_assignment_starts_fresh() -> None:
    tracker = OffsetTracker()
    tracker.assign([("a", 0)])
    old = tracker.get("a", 0)
    assert old is not None
    old.track(0)
    old.track(1)
    (gone,) = tracker.detach([("a", 0)])
    assert gone is old and old.detached and old.unfinished == 2
    assert tracker.get("a", 0) is None
    tracker.assign([("a", 0)])
    fresh = tracker.get("a", 0)
    assert fresh is not None and fresh is not old and not fresh.detached
    assert tracker.committable() == {}


@given(
    st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=60),
    st.data(),
)
def test_watermark_is_the_first_unfinished_offset(gaps: list[int], data: st.DataObject) -> None:
    # Offsets with holes, finished in a random order; after every step the committable
    # position must be exactly "one past the longest finished prefix".
    taken = []
    offset = 0
    for gap in gaps:
        offset += gap
        taken.append(offset)
    offsets = PartitionOffsets("t", 0)
    for o in taken:
        offsets.track(o)
    order = data.draw(st.permutations(taken))
    finished: set[int] = set()
    for o in order:
        offsets.finish(o)
        finished.add(o)
        prefix = 0
        while prefix < len(taken) and taken[prefix] in finished:
            prefix += 1
        commit = offsets.committable()
        assert commit is not None
        assert commit.position == (taken[prefix - 1] + 1 if prefix else taken[0])
        assert finished_above(commit) == finished - set(taken[:prefix])
        assert offsets.pending == len(taken) - prefix
        assert offsets.unfinished == len(taken) - len(finished)


def test_one_stuck_offset_crowds_its_partition_until_it_finishes() -> None:
    tracker = OffsetTracker(bound=100)
    tracker.assign([("t", 0), ("t", 1)])
    stuck = tracker.get("t", 0)
    flowing = tracker.get("t", 1)
    assert stuck is not None and flowing is not None
    for offset in range(100):
        stuck.track(offset, now=float(offset))
        flowing.track(offset, now=float(offset))
        flowing.finish(offset)
        if offset:  # everything behind offset 0 finishes; offset 0 never does
            stuck.finish(offset)
    assert stuck.pending == 100 and stuck.unfinished == 1
    assert (stuck.crowded, flowing.crowded) == (True, False)
    assert tracker.crowded() == {("t", 0)}
    assert stuck.oldest_unfinished_age(now=130.0) == 130.0
    assert flowing.oldest_unfinished_age(now=130.0) == 0.0

    stuck.finish(0)
    assert not stuck.crowded and tracker.crowded() == frozenset()
    assert stuck.committable() == Commit(100)


def test_crowding_ends_at_half_the_bound_not_before() -> None:
    offsets = PartitionOffsets("t", 0, bound=10)
    for offset in range(10):
        offsets.track(offset)
    assert offsets.crowded
    for offset in range(4):
        offsets.finish(offset)
    assert offsets.pending == 6 and offsets.crowded
    offsets.finish(4)
    assert offsets.pending == 5 and not offsets.crowded


def test_a_commit_is_due_again_when_an_offset_above_the_watermark_finishes() -> None:
    tracker = OffsetTracker()
    tracker.assign([("a", 0)])
    part = tracker.get("a", 0)
    assert part is not None
    for offset in range(4):
        part.track(offset)
    part.finish(0)
    first = tracker.committable()
    tracker.mark_committed(first)
    assert tracker.committable() == {}
    part.finish(2)  # the watermark stays at 1 (1 is unfinished): the map alone changed
    [second] = tracker.committable().values()
    assert second.position == 1 and finished_above(second) == {2}


def test_an_inherited_map_is_skipped_and_carried_on_until_passed() -> None:
    # An earlier owner committed 10 with 12, 13 and 16 finished and 10 and 17 started, having
    # taken up to 17.
    earlier = Commit(10, _map(10, span=8, finished={12, 13, 16}, started={10, 17}))
    inherited = decode(earlier.position, earlier.metadata)
    assert inherited is not None
    tracker = OffsetTracker()
    tracker.assign([("a", 0)], {("a", 0): inherited})
    part = tracker.get("a", 0)
    assert part is not None
    assert [part.earlier(o) for o in (9, 10, 11, 12, 17, 18)] == [
        Earlier.UNSEEN,
        Earlier.STARTED,
        Earlier.UNSEEN,
        Earlier.FINISHED,
        Earlier.STARTED,
        Earlier.UNSEEN,
    ]
    part.track(10)
    part.track(11)
    part.finish(11)
    # Only 10 and 11 taken so far: the inherited 12, 13 and 16 are still in the map.
    [commit] = tracker.committable().values()
    assert commit.position == 10 and finished_above(commit) == {11, 12, 13, 16}
    part.finish(10)
    [commit] = tracker.committable().values()
    assert commit.position == 12 and finished_above(commit) == {12, 13, 16}
    completed = decode(commit.position, commit.metadata)
    assert completed is not None and completed.end == 18  # what the earlier owner had taken
    assert completed.started(17)  # carried on too: a second crash still counts its resend
    for offset in (12, 13):  # read again: finished at once, as the book does for a skip
        part.track(offset)
        part.finish(offset)
    [commit] = tracker.committable().values()
    assert commit.position == 14 and finished_above(commit) == {16}


def test_an_inherited_map_below_the_start_is_ignored() -> None:
    inherited = decode(0, _map(0, span=4, finished={1, 2}))
    assert inherited is not None
    offsets = PartitionOffsets("a", 0, inherited=inherited)
    offsets.track(100)  # the log starts past the map (retention deleted those offsets)
    offsets.finish(100)
    assert offsets.committable() == Commit(101)


def _map(position: int, *, span: int, finished: set[int], started: Iterable[int] = ()) -> str:
    done, begun = (sum(1 << (o - position) for o in s) for s in (finished, started))
    return encode(span, done, begun)


def test_started_unfinished_offsets_are_mapped_as_possible_resends() -> None:
    offsets = PartitionOffsets("t", 0)
    for offset in range(5):
        offsets.track(offset)
    offsets.start(0)
    offsets.start(1)
    offsets.start(3)
    offsets.finish(1)
    completed = _committed_map(offsets)
    assert [o for o in range(5) if completed.started(o)] == [0, 3]  # 1 finished: not a resend
    assert [o for o in range(5) if completed.finished(o)] == [1]


def test_accepted_steps_of_started_offsets_are_mapped_until_they_finish() -> None:
    offsets = PartitionOffsets("t", 0)
    for offset in range(3):
        offsets.track(offset)
    offsets.start(0)
    offsets.start(1)
    offsets.step_accepted(0)  # an order's Placed Order, then its first Ordered Product
    offsets.step_accepted(0)
    offsets.step_accepted(2)  # not started: nothing to count (a late verdict)
    completed = _committed_map(offsets)
    assert [completed.accepted(o) for o in range(3)] == [2, 0, 0]
    offsets.step_accepted(1)
    offsets.finish(0)
    completed = _committed_map(offsets)
    assert completed.position == 1 and completed.accepted(1) == 1
    assert not completed.finished(0) and completed.accepted(0) == 0  # below the position


def test_a_step_accepted_makes_a_commit_due() -> None:
    offsets = PartitionOffsets("t", 0)
    offsets.track(0)
    offsets.track(1)
    offsets.start(0)
    offsets.finish(1)
    commit = offsets.committable()
    assert commit is not None
    offsets.mark_committed(commit)
    assert offsets.committable() is None
    offsets.step_accepted(0)
    assert _committed_map(offsets).accepted(0) == 1


def test_inherited_steps_go_on_from_where_the_earlier_owner_stopped() -> None:
    # The earlier owner had 2 steps of 10 and 1 of 13 accepted, and taken up to 13.
    inherited = decode(10, encode(4, 0b0010, 0b1001, {0: 2, 3: 1}))
    assert inherited is not None
    offsets = PartitionOffsets("a", 0, inherited=inherited)
    assert [offsets.accepted_earlier(o) for o in (9, 10, 11, 12, 13)] == [0, 2, 0, 0, 1]
    offsets.track(10)
    offsets.start(10, offsets.accepted_earlier(10))
    offsets.step_accepted(10)  # the third step, sent by this owner
    completed = _committed_map(offsets)
    assert completed.accepted(10) == 3
    assert completed.started(13) and completed.accepted(13) == 1  # carried on, not yet taken
    offsets.track(11)
    offsets.finish(11)
    offsets.finish(10)
    completed = _committed_map(offsets)
    assert completed.position == 12 and completed.accepted(13) == 1


def _committed_map(offsets: PartitionOffsets) -> CompletedMap:
    commit = offsets.committable()
    assert commit is not None
    completed = decode(commit.position, commit.metadata)
    assert completed is not None
    return completed
