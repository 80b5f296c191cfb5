"""The source thread's side of the commit map: commits carry their metadata to Kafka, and an
assignment reads the group's commits back with theirs (asking again while the coordinator
moves)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from consumer.pipeline import source as source_module
from consumer.pipeline.offsets import Commit, TopicPartitionKey
from consumer.pipeline.source import KafkaSource, Positions
from consumer.settings import Settings
from tests.fixtures.fakes import until

KEY = ("orders", 0)
MAP = "fin1:8:eJxjYGAAAAAEAAI"  # any text: the source passes it through untouched


class FakeConsumer:
    """``confluent_kafka.Consumer`` as far as commits and assignments go."""

    def __init__(self, _config: dict[str, Any]) -> None:
        self.group: dict[TopicPartitionKey, tuple[int, str]] = {}
        self.refusals: list[KafkaError] = []  # raised by the next committed() calls
        self.stored: list[TopicPartition] = []

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        if self.refusals:
            raise KafkaException(self.refusals.pop(0))
        out = []
        for tp in partitions:
            offset, metadata = self.group.get((tp.topic, tp.partition), (-1001, ""))
            found = TopicPartition(tp.topic, tp.partition, offset)
            out.append(
                TopicPartition(tp.topic, tp.partition, offset, metadata) if metadata else found
            )
        return out

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        self.stored.extend(offsets)

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        for tp in offsets:
            self.group[(tp.topic, tp.partition)] = (tp.offset, tp.metadata or "")
        return offsets

    def incremental_assign(self, _partitions: list[TopicPartition]) -> None: ...


class Listener:
    def __init__(self) -> None:
        self.assigned: list[Positions] = []

    def on_assigned(self, _partitions: list[TopicPartitionKey], commits: Positions) -> None:
        self.assigned.append(commits)


@pytest.fixture
def source(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(source_module, "Consumer", FakeConsumer)

    def build(listener: Listener) -> KafkaSource:
        loop = asyncio.get_running_loop()
        return KafkaSource(Settings(), [KEY[0]], listener, loop)  # type: ignore[arg-type]

    return build


async def test_a_commit_carries_its_map_and_the_next_assignment_reads_it_back(
    source: Any,
) -> None:
    listener = Listener()
    kafka: KafkaSource = source(listener)
    consumer: FakeConsumer = kafka._consumer  # type: ignore[assignment]
    kafka._on_assign(consumer, [TopicPartition(*KEY)])  # type: ignore[arg-type]
    await until(lambda: listener.assigned == [{}])  # never committed: nothing to inherit

    assert kafka._commit({KEY: Commit(5, MAP)}) == {KEY: Commit(5, MAP)}
    assert [(tp.offset, tp.metadata) for tp in consumer.stored] == [(5, MAP)]

    # The coordinator moves while the partition comes back: asked again, not given up.
    consumer.refusals = [KafkaError(KafkaError.NOT_COORDINATOR)]
    kafka._on_assign(consumer, [TopicPartition(*KEY)])  # type: ignore[arg-type]
    await until(lambda: len(listener.assigned) == 2)
    assert listener.assigned[1] == {KEY: Commit(5, MAP)}


async def test_unreadable_commits_give_no_map_and_skip_nothing(source: Any) -> None:
    listener = Listener()
    kafka: KafkaSource = source(listener)
    consumer: FakeConsumer = kafka._consumer  # type: ignore[assignment]
    consumer.group[KEY] = (5, MAP)
    consumer.refusals = [KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED)]
    kafka._on_assign(consumer, [TopicPartition(*KEY)])  # type: ignore[arg-type]
    await until(lambda: listener.assigned == [{}])
