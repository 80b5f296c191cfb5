"""One event that never finishes (issue 11, defect 6), on the real broker and the sandbox.

The relay runs in process so that one chosen record can be held unfinished (as a Klaviyo
error retried for ever or a dead-letter write the broker keeps refusing would hold it). The
events behind it finish, but the partition's watermark cannot pass it: the relay must stop
taking that partition's records once too many wait (memory stays bounded), keep the other
partitions flowing, report the held event's age, and take the partition up again once the
event finishes.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer

from consumer.observability.metrics import REGISTRY
from consumer.pipeline.inflight import Work
from consumer.pipeline.relay import Relay
from consumer.pipeline.source import _CONSUME_BATCH
from consumer.pipeline.stages import Stages
from consumer.settings import load_settings
from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.conftest import TopicFactory
from tests.fixtures.relay_harness import (
    UNLIMITED_RATE_LIMITS,
    WAIT,
    EventFactory,
    committed_offsets,
    end_offsets,
    wait_for,
)

pytestmark = pytest.mark.kafka

HANDLER = "shop.order.placed"
BEHIND = 3000  # records behind the stuck one on its partition
ELSEWHERE = 300  # records on the other partition
BOUND = 100


def produce_to(bootstrap: str, topic: str, records: list[tuple[int, str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for partition, key, value in records:
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value, partition=partition)
                break
            except BufferError:
                producer.poll(0.5)
    assert producer.flush(WAIT) == 0


def committed(bootstrap: str, group: str, topic: str) -> dict[tuple[str, int], int]:
    try:
        return committed_offsets(bootstrap, group, [topic])
    except KafkaException:  # the coordinator of a fresh broker is still loading
        return {}


async def test_one_stuck_event_pauses_only_its_partition_until_it_finishes(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = topic_factory("orders-stuck", partitions=2)
    factory = EventFactory()
    stuck = factory.event(topic, HANDLER, "stuck-customer", 0)
    records = [(0, stuck.key, stuck.value)]
    records += [
        (0, e.key, e.value)
        for e in (factory.event(topic, HANDLER, f"c-{i % 200}", i) for i in range(BEHIND))
    ]
    records += [
        (1, e.key, e.value)
        for e in (factory.event(topic, HANDLER, f"d-{i % 50}", i) for i in range(ELSEWHERE))
    ]
    produce_to(bootstrap, topic, records)
    ends = end_offsets(bootstrap, [topic])
    group = f"relay-{uuid.uuid4().hex[:8]}"

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        settings = load_settings(
            kafka_bootstrap_servers=bootstrap,
            kafka_group_id=group,
            topics=[topic],
            topic_handlers={topic: HANDLER},
            dlq_topic=topic_factory("dlq"),
            klaviyo_base_url=sandbox.base_url,
            klaviyo_api_key="pk_sandbox",
            rate_limits=UNLIMITED_RATE_LIMITS,
            send_mode="batch",
            batch_linger_seconds=0.05,
            max_in_flight=50,
            max_pending_per_partition=BOUND,
            commit_interval_seconds=0.2,
            metrics_port=0,
        )
        relay = Relay(settings)
        release = asyncio.Event()
        plan = Stages.plan

        async def held_plan(stages: Stages, work: Work, now: Any) -> Any:
            if work.record.partition == 0 and work.record.offset == 0:
                await release.wait()  # the event that does not finish
            return await plan(stages, work, now)

        monkeypatch.setattr(Stages, "plan", held_plan)
        task = asyncio.create_task(relay.run())
        try:
            # The other partition flows to its end while partition 0 is held.
            await wait_for(
                lambda: committed(bootstrap, group, topic).get((topic, 1)) == ends[(topic, 1)],
                what="partition 1 committed to its end",
                interval=0.3,
            )
            await wait_for(
                lambda: relay._book.crowded() == {(topic, 0)}, what="partition 0 crowded"
            )
            held = relay._book.get(topic, 0)
            assert held is not None
            taken_before = held.pending
            # Paused: no more records of partition 0 come in, however long it stays stuck.
            await wait_for(
                lambda: (
                    (REGISTRY.get_sample_value("klaviyo_relay_partitions_paused_pending") or 0) == 1
                ),
                what="the source paused partition 0",
            )
            await wait_for(
                lambda: (
                    (
                        REGISTRY.get_sample_value(
                            "klaviyo_relay_oldest_unfinished_event_age_seconds",
                            {"topic": topic, "partition": "0"},
                        )
                        or 0
                    )
                    > 0
                ),
                what="the held event's age reported",
            )
            assert held.pending <= BOUND + 2 * _CONSUME_BATCH < BEHIND
            assert held.pending - taken_before <= _CONSUME_BATCH  # at most what was fetched
            assert committed(bootstrap, group, topic).get((topic, 0), -1) <= 0

            release.set()
            await wait_for(
                lambda: committed(bootstrap, group, topic) == ends,
                what="every partition committed to its end",
                interval=0.3,
            )
            assert relay._book.crowded() == frozenset()
        finally:
            release.set()
            if not task.done():
                relay.request_stop()
            assert await asyncio.wait_for(task, WAIT) == 0
    accepted = {e["unique_id"] for e in sandbox.state.events if e["metric"] == "Placed Order"}
    assert len(accepted) == 1 + BEHIND + ELSEWHERE
