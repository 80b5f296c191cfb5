"""One event that cannot finish, with 20,000 records behind it on its partition: its dead letter
is refused (the dead-letter topic was deleted under the running relay), so the partition's
watermark stays put. The relay must stop taking that partition's records at its pending bound
(memory bounded, no OOM kill and replay), and finish everything once the topic is back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from dev.kafka_broker import KafkaBroker
from tests.fixtures.relay_harness import sandbox_stats
from tests.integration.faults.scenario import Poison, Scenario, rss_bytes

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

BEHIND = 20_000
MAX_IN_FLIGHT = 400  # the pending bound defaults to 5 × MAX_IN_FLIGHT: 2,000, two bulk jobs
# Far above the bound, far below what an unbounded relay takes (everything).
TAKEN_AT_MOST = 5_000
RSS_AT_MOST = 400 * 1024 * 1024


async def test_one_stuck_event_with_20000_records_behind_it(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    with Scenario(
        kafka_broker, tmp_path, partitions=1, record_types=("shop.account.created",)
    ) as scenario:
        await scenario.start_sandbox()
        kafka_config = {
            "session.timeout.ms": "6000",
            "heartbeat.interval.ms": "500",
            # A write to a missing topic fails after 2 s instead of librdkafka's 30 s.
            "topic.metadata.propagation.max.ms": "2000",
        }
        relay = scenario.start_relay(
            SEND_MODE="batch",
            MAX_IN_FLIGHT=str(MAX_IN_FLIGHT),
            KAFKA_EXTRA_CONFIG=json.dumps(kafka_config),
        )
        await scenario.wait(lambda: relay.logged("partitions assigned"), "the relay to start")
        assert relay.metrics_port() is not None
        # The dead-letter topic existed at start-up; now it is gone.
        admin = AdminClient({"bootstrap.servers": scenario.bootstrap})
        admin.delete_topics([scenario.dlq])[scenario.dlq].result(timeout=60)
        scenario.produce(
            [*scenario.events(10), Poison("key-0"), *scenario.events(BEHIND)],
        )

        async def failed_writes() -> float:
            return await relay.metric("klaviyo_relay_dead_letter_write_failures_total")

        async def crowded() -> bool:
            paused = await relay.metric("klaviyo_relay_partitions_paused_pending")
            return paused >= 1 and await failed_writes() >= 1

        await scenario.wait(crowded, "the partition paused behind its unfinished event")
        seen = await failed_writes()

        async def retried() -> bool:
            return await failed_writes() >= seen + 2

        # Still stuck a while later (the write retried, refused again): still bounded.
        await scenario.wait(retried, "the dead-letter write retried")
        assert await relay.metric("klaviyo_relay_events_consumed_total") <= TAKEN_AT_MOST
        assert (await sandbox_stats(scenario.base_url))["events"] <= TAKEN_AT_MOST
        assert rss_bytes(relay.process.pid) <= RSS_AT_MOST

        kafka_broker.create_topics([scenario.dlq])
        await scenario.verdict()
