"""The group-derived quota share: assigned partitions over all subscribed partitions."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given
from hypothesis import strategies as st

from consumer.pipeline.share import PartitionCounts, partition_share

COUNTS = {"password-resets": 3, "orders": 12, "leads": 1}


def test_a_single_member_holding_everything_gets_the_whole_quota() -> None:
    everything = [(t, p) for t, n in COUNTS.items() for p in range(n)]
    assert partition_share(everything, COUNTS) == 1.0


def test_every_partition_weighs_the_same_whatever_its_topic() -> None:
    assert partition_share([("leads", 0)], COUNTS) == pytest.approx(1 / 16)
    assert partition_share([("orders", 0), ("orders", 1)], COUNTS) == pytest.approx(2 / 16)


def test_nothing_assigned_or_nothing_known_is_share_zero() -> None:
    assert partition_share([], COUNTS) == 0.0
    assert partition_share([("orders", 0)], None) == 0.0
    assert partition_share([], {"orders": 0}) == 0.0


def test_partitions_of_topics_not_subscribed_do_not_count() -> None:
    assert partition_share([("orders", 0), ("elsewhere", 0)], COUNTS) == pytest.approx(1 / 16)


@given(
    counts=st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]), st.integers(min_value=0, max_value=20), min_size=1
    ),
    members=st.integers(min_value=1, max_value=8),
    seed=st.randoms(),
)
def test_disjoint_assignments_never_add_up_past_one(
    counts: dict[str, int], members: int, seed: Any
) -> None:
    partitions = [(t, p) for t, n in counts.items() for p in range(n)]
    owners: list[list[tuple[str, int]]] = [[] for _ in range(members)]
    for partition in partitions:
        seed.choice(owners).append(partition)
    shares = [partition_share(owned, counts) for owned in owners]
    assert all(0.0 <= s <= 1.0 for s in shares)
    assert sum(shares) <= 1.0 + 1e-9
    if partitions:
        assert sum(shares) == pytest.approx(1.0)


def test_a_rebalance_in_revoke_then_assign_order_never_sums_past_one() -> None:
    everything = [(t, p) for t, n in COUNTS.items() for p in range(n)]
    moving = set(everything[1::2])
    a, b = set(everything), set[tuple[str, int]]()
    sums, middle = [], (0.0, 0.0)
    # 1 → 2 members: A gives up half at revoke, then B is assigned it; 2 → 1: B leaves.
    for giver, taker in ((a, b), (b, a)):
        giver.difference_update(moving)
        sums.append(partition_share(a, COUNTS) + partition_share(b, COUNTS))
        taker.update(moving)
        sums.append(partition_share(a, COUNTS) + partition_share(b, COUNTS))
        middle = middle if middle[1] else (partition_share(a, COUNTS), partition_share(b, COUNTS))
    assert all(s <= 1.0 + 1e-9 for s in sums)
    assert middle[0] > 0 and middle[1] > 0
    assert partition_share(a, COUNTS) == 1.0


# --- partition counts from metadata ---------------------------------------------------------


@dataclass
class TopicMeta:
    partitions: dict[int, object]
    error: KafkaError | None = None


@dataclass
class Metadata:
    topics: dict[str, TopicMeta]


@dataclass
class FakeConsumer:
    """``list_topics`` answers from ``topics``; a name in ``failing`` raises, as on a timeout."""

    topics: dict[str, TopicMeta]
    failing: set[str] = field(default_factory=set)
    asked: list[str] = field(default_factory=list)

    def list_topics(self, topic: str, timeout: float) -> Metadata:
        self.asked.append(topic)
        assert timeout > 0
        if topic in self.failing:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        return Metadata({topic: self.topics[topic]})


def meta(count: int) -> TopicMeta:
    return TopicMeta(dict(zip(range(count), itertools.repeat(object()), strict=False)))


def test_counts_come_from_each_subscribed_topic_metadata() -> None:
    consumer = FakeConsumer({"orders": meta(12), "leads": meta(1)})
    counts = PartitionCounts(["orders", "leads"])
    assert counts.stale
    counts.refresh(consumer)
    assert counts.known == {"orders": 12, "leads": 1}
    assert not counts.stale


def test_a_missing_topic_weighs_nothing_until_it_appears() -> None:
    absent = TopicMeta({}, KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
    counts = PartitionCounts(["orders", "later"])
    counts.refresh(FakeConsumer({"orders": meta(4), "later": absent}))
    assert counts.known == {"orders": 4, "later": 0}
    counts.refresh(FakeConsumer({"orders": meta(4), "later": meta(4)}))
    assert counts.known == {"orders": 4, "later": 4}


def test_a_failed_refresh_keeps_the_last_counts_and_a_first_failure_leaves_them_unknown() -> None:
    counts = PartitionCounts(["orders", "leads"])
    counts.refresh(FakeConsumer({"orders": meta(2), "leads": meta(2)}, failing={"leads"}))
    assert counts.stale and partition_share([("orders", 0)], counts.known) == 0.0  # until retried
    counts.refresh(FakeConsumer({"orders": meta(2), "leads": meta(2)}))
    down = FakeConsumer({"orders": meta(9), "leads": meta(9)}, failing={"orders"})
    counts.refresh(down)
    assert counts.known == {"orders": 2, "leads": 2}
    assert down.asked == ["orders"]  # no timeout per topic while the broker is away


def test_a_transient_topic_error_is_asked_again() -> None:
    moving = TopicMeta({}, KafkaError(KafkaError.LEADER_NOT_AVAILABLE))
    counts = PartitionCounts(["orders"])
    counts.refresh(FakeConsumer({"orders": moving}))
    assert counts.stale
