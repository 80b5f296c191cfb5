"""The share at the source's rebalance callbacks, in process with librdkafka faked: the real
:class:`KafkaSource` (driven from a worker thread, as librdkafka's callbacks run on the source
thread) and the real relay listener, down to the Klaviyo client's ``set_share``.

The order is the point: a smaller share is in force before the revoke callback returns (so
before the partition can reach another member), a larger one only after the assignment.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from consumer.pipeline import source as source_module
from consumer.pipeline.relay import Relay
from consumer.pipeline.source import KafkaSource
from consumer.settings import Settings
from tests.fixtures.fakes import FakeKlaviyo

PARTITIONS = {"orders": 3, "resets": 1}


class FakeConsumer:
    """Just enough of ``confluent_kafka.Consumer`` for the rebalance callbacks and metadata."""

    def __init__(self, _config: dict[str, Any]) -> None:
        self.metadata_calls = 0

    def incremental_assign(self, _partitions: list[TopicPartition]) -> None: ...

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return partitions  # offset -1001: the group never committed them

    def pause(self, _partitions: list[TopicPartition]) -> None: ...

    def resume(self, _partitions: list[TopicPartition]) -> None: ...

    def list_topics(self, topic: str, timeout: float) -> Any:
        self.metadata_calls += 1
        partitions = dict.fromkeys(range(PARTITIONS[topic]))
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions=partitions, error=None)})


def tps(*keys: tuple[str, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for topic, partition in keys]


@pytest.fixture
def build(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(source_module, "Consumer", FakeConsumer)

    async def make(**overrides: Any) -> tuple[KafkaSource, FakeKlaviyo]:
        settings = Settings(**overrides)
        klaviyo = FakeKlaviyo()
        relay = Relay(settings, klaviyo=klaviyo)
        source = KafkaSource(
            settings, sorted(PARTITIONS), relay._listener, asyncio.get_running_loop()
        )
        relay._book.attach(source)
        return source, klaviyo

    return make


async def test_shares_move_with_assignments_shrinking_before_the_revoke_returns(
    build: Any,
) -> None:
    source, klaviyo = await build()
    consumer = source._consumer
    await asyncio.to_thread(source._on_assign, consumer, tps(("orders", 0), ("resets", 0)))
    # Grown only once the source thread counted the partitions, after the callback.
    assert klaviyo.shares == []
    await asyncio.to_thread(source._refresh_share)
    assert klaviyo.shares == [0.5]
    assert consumer.metadata_calls == len(PARTITIONS)

    await asyncio.to_thread(source._on_revoke, consumer, tps(("resets", 0)))
    assert klaviyo.shares[-1] == 0.25  # in force when the callback returned
    await asyncio.to_thread(source._refresh_share)
    assert len(klaviyo.shares) == 2  # nothing assigned since: no new count, no new share

    await asyncio.to_thread(source._on_lost, consumer, tps(("orders", 0)))
    assert klaviyo.shares[-1] == 0.0


async def test_an_explicit_rate_limit_share_ignores_the_group(build: Any) -> None:
    source, klaviyo = await build(rate_limit_share=0.3)
    await asyncio.to_thread(source._on_assign, source._consumer, tps(("orders", 0)))
    await asyncio.to_thread(source._refresh_share)
    await asyncio.to_thread(source._on_revoke, source._consumer, tps(("orders", 0)))
    assert klaviyo.shares == []
