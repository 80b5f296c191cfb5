"""A revocation the event loop cannot drain in time (issue 11, defect 5).

In process, with librdkafka faked: the real :class:`KafkaSource` revoke path runs on its own
thread against the real :class:`Relay` listener while the loop is stalled, exactly as when a
handler or a registry lookup blocks the loop past the revoke deadline.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from consumer.pipeline import source as source_module
from consumer.pipeline.inflight import Work
from consumer.pipeline.records import SourceRecord
from consumer.pipeline.relay import Relay
from consumer.pipeline.source import KafkaSource
from consumer.pipeline.stages import Stages
from consumer.settings import Settings
from tests.fixtures.fakes import FakeKlaviyo

TOPIC = "orders"
KEY = (TOPIC, 0)


class FakeConsumer:
    """Just enough of ``confluent_kafka.Consumer`` for the rebalance callbacks."""

    def __init__(self, _config: dict[str, Any]) -> None:
        self.assigned: list[TopicPartition] = []

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned.extend(partitions)

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return partitions  # offset -1001: the group never committed them

    def pause(self, _partitions: list[TopicPartition]) -> None: ...

    def resume(self, _partitions: list[TopicPartition]) -> None: ...


def record(offset: int) -> SourceRecord:
    return SourceRecord(TOPIC, 0, offset, f"customer-{offset}".encode(), b"{}", None)


async def until(condition: Any) -> None:
    deadline = asyncio.get_running_loop().time() + 10.0
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
def relay_and_source(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(source_module, "Consumer", FakeConsumer)

    async def build() -> tuple[Relay, KafkaSource, list[Work]]:
        settings = Settings(drain_timeout_seconds=60.0, max_in_flight=10)
        relay = Relay(settings, klaviyo=FakeKlaviyo())
        loop = asyncio.get_running_loop()
        source = KafkaSource(settings, [TOPIC], relay._listener, loop)
        source._revoke_timeout = 0.2  # the loop will be stalled far longer
        relay._book.attach(source)  # what run() does; the source thread is driven by hand here
        stuck: list[Work] = []

        async def plan_forever(_stages: Stages, work: Work, _now: Any) -> None:
            stuck.append(work)  # an event that never finishes: the drain cannot end
            await asyncio.Event().wait()

        monkeypatch.setattr(Stages, "plan", plan_forever)
        return relay, source, stuck

    return build


async def test_revoke_past_its_deadline_detaches_and_a_reassigned_partition_flows(
    relay_and_source: Any,
) -> None:
    relay, source, stuck = await relay_and_source()
    consumer = source._consumer
    source._on_assign(consumer, [TopicPartition(*KEY)])
    await until(lambda: relay._book.get(*KEY) is not None)
    source._outstanding = 2  # what _hand_over counts for the two records below
    relay._listener.on_records([record(0), record(1)])
    await until(lambda: len(stuck) == 2)

    revoke = threading.Thread(target=source._on_revoke, args=(consumer, [TopicPartition(*KEY)]))
    revoke.start()
    await until(lambda: KEY in relay._book._revoking)  # the drain is waiting on the stuck event
    # Stall the loop until the source thread has given up on the drain.
    revoke.join()
    # Then the partition comes back to this member.
    source._on_assign(consumer, [TopicPartition(*KEY)])
    await until(lambda: relay._book.get(*KEY) is not None and KEY not in relay._book._revoking)

    assert source.outstanding == 0, "the revoked partition's in-flight places were not released"
    source._outstanding = 1
    relay._listener.on_records([record(2)])
    await until(lambda: len(stuck) == 3)
    assert stuck[2].record.offset == 2
    await relay._dispatcher.cancel()
