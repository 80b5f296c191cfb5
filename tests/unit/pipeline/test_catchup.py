"""The caught-up rule of ``run --until-caught-up`` against a fake of the group's offsets: the
targets are the end offsets at start, the group's commits (whoever made them) decide, and a run
that falls short says why."""

from __future__ import annotations

from collections.abc import Iterable

from consumer.observability.health import RelayState
from consumer.pipeline.catchup import CatchUp, Offsets, Targets, TopicsMissing
from consumer.pipeline.offsets import TopicPartitionKey

A0, A1 = ("a", 0), ("a", 1)


class FakeOffsets:
    def __init__(self, bounds: dict[TopicPartitionKey, tuple[int, int]]) -> None:
        self.ends = bounds
        self.group: Offsets = {}
        self.bounds_asked = 0
        # The offsets holding records (not transaction markers): all of them unless a test says.
        self.records = {key: range(*b) for key, b in bounds.items()}
        self.probes: list[tuple[TopicPartitionKey, int, int]] = []

    def bounds(self, topics: list[str]) -> dict[TopicPartitionKey, tuple[int, int]]:
        self.bounds_asked += 1
        if any(topic not in {t for t, _ in self.ends} for topic in topics):
            raise TopicsMissing("topics missing or not readable: typo")
        return {key: b for key, b in self.ends.items() if key[0] in topics}

    def committed(self, partitions: Iterable[TopicPartitionKey]) -> Offsets:
        return {key: self.group.get(key, -1001) for key in partitions}

    def records_between(self, key: TopicPartitionKey, start: int, end: int) -> bool:
        self.probes.append((key, start, end))
        return any(start <= offset < end for offset in self.records.get(key, ()))


def test_targets_leave_out_partitions_with_nothing_to_relay() -> None:
    bounds = {("t", 0): (0, 0), ("t", 1): (0, 5), ("t", 2): (7, 7), ("t", 3): (10, 20)}
    # p0 empty; p1 committed to its end; p2 never committed and retention removed everything;
    # p3 committed below what retention kept: the group restarts at 10.
    targets = Targets.at_start(bounds, {("t", 1): 5, ("t", 3): 4})
    assert targets.behind({("t", 3): 4}) == {("t", 3): 10}
    assert targets.behind({("t", 3): 15}) == {("t", 3): 5}
    assert targets.behind({("t", 3): 20}) == {}


async def test_caught_up_when_the_group_committed_the_start_ends() -> None:
    offsets = FakeOffsets({A0: (0, 10), A1: (0, 4)})
    catch_up = CatchUp(60, offsets, interval=0.01)
    assert await catch_up.begin(["a"])
    stopped: list[bool] = []
    state = RelayState()
    offsets.group = {A0: 10}
    # Produced after the start: not waited for.
    offsets.ends = {A0: (0, 50), A1: (0, 50)}
    # A1 committed by another member of the group (revoked from this one) counts as well.
    offsets.group[A1] = 4
    await catch_up.watch(state, lambda: stopped.append(True))
    assert stopped == [True]
    assert await catch_up.finish()
    assert catch_up.reason is None
    assert offsets.bounds_asked == 1


async def test_a_halt_ends_the_run_with_the_reason() -> None:
    offsets = FakeOffsets({A0: (0, 10)})
    catch_up = CatchUp(60, offsets, interval=0.01)
    assert await catch_up.begin(["a"])
    offsets.group = {A0: 3}
    state = RelayState(halted=True)
    await catch_up.watch(state, lambda: None)
    assert not await catch_up.finish()
    assert catch_up.reason == (
        "klaviyo refused the API key (401/403): 7 events left undelivered (1 partitions behind)"
    )


async def test_a_revoked_oauth_grant_ends_the_run_with_its_own_reason() -> None:
    offsets = FakeOffsets({A0: (0, 10)})
    catch_up = CatchUp(60, offsets, interval=0.01)
    assert await catch_up.begin(["a"])
    why = "Klaviyo refused the OAuth refresh token (invalid_grant): the app was uninstalled"
    await catch_up.watch(RelayState(halted=True, halt_reason=why), lambda: None)
    assert not await catch_up.finish()
    assert catch_up.reason == f"{why}: 10 events left undelivered (1 partitions behind)"


async def test_the_deadline_ends_the_run_with_the_reason() -> None:
    offsets = FakeOffsets({A0: (0, 10), A1: (0, 2)})
    catch_up = CatchUp(0.05, offsets, interval=0.01)
    assert await catch_up.begin(["a"])
    await catch_up.watch(RelayState(klaviyo_reachable=False), lambda: None)
    assert not await catch_up.finish()
    assert catch_up.reason == (
        "not caught up within 0.05s (klaviyo unreachable): 12 events left undelivered"
        " (2 partitions behind)"
    )


async def test_a_stop_that_finished_the_work_still_counts() -> None:
    offsets = FakeOffsets({A0: (0, 10)})
    catch_up = CatchUp(60, offsets, interval=0.01)
    assert await catch_up.begin(["a"])
    # SIGTERM before the watch saw the commit: the final commit of the shutdown made it.
    offsets.group = {A0: 10}
    assert await catch_up.finish()


async def test_a_stop_before_the_work_is_done_says_so() -> None:
    offsets = FakeOffsets({A0: (0, 10)})
    catch_up = CatchUp(60, offsets, interval=0.01)
    assert await catch_up.begin(["a"])
    offsets.group = {A0: 9}
    assert not await catch_up.finish()
    assert catch_up.reason == (
        "stopped before catching up: 1 events left undelivered (1 partitions behind)"
    )


async def test_a_missing_topic_fails_the_start() -> None:
    catch_up = CatchUp(60, FakeOffsets({A0: (0, 10)}), interval=0.01)
    assert not await catch_up.begin(["a", "typo"])
    assert catch_up.reason == (
        "cannot read the topics' end offsets: topics missing or not readable: typo"
    )


async def test_a_partition_short_by_transaction_markers_only_is_done() -> None:
    # Records 0-2 and a commit marker at 3 on A0; records 0-4 on A1, of which 0-2 are relayed.
    offsets = FakeOffsets({A0: (0, 4), A1: (0, 5)})
    offsets.records = {A0: range(3), A1: range(5)}
    catch_up = CatchUp(0.3, offsets, interval=0.01)
    assert await catch_up.begin(["a"])
    offsets.group = {A0: 3, A1: 3}
    await catch_up.watch(RelayState(klaviyo_reachable=True), lambda: None)
    assert not await catch_up.finish()
    assert catch_up.reason == (
        "not caught up within 0.3s: 2 events left undelivered (1 partitions behind)"
    )
    # Each stalled partition is read once from where it stopped, not at every check.
    assert sorted(offsets.probes) == [(A0, 3, 4), (A1, 3, 5)]
