"""The dead-letter topic does not exist: the relay refuses to start, saying DLQ_TOPIC, before it
takes a record (no crash loop on a poison record, nothing half done); once the topic exists, a
new relay does everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from dev.kafka_broker import KafkaBroker
from tests.fixtures.relay_harness import sandbox_stats
from tests.integration.faults.scenario import Poison, Scenario

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

NOTHING_COMMITTED = -1001


async def test_a_dead_letter_topic_that_does_not_exist(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    with Scenario(kafka_broker, tmp_path, create_dlq=False) as scenario:
        events = scenario.events(100)
        scenario.produce([*events[:50], Poison("key-3"), *events[50:]])
        await scenario.start_sandbox()
        relay = scenario.start_relay()
        assert await scenario.exited(relay) != 0
        assert "DLQ_TOPIC" in relay.tail(), relay.tail()
        # It stopped before taking anything: nothing sent, nothing committed.
        assert (await sandbox_stats(scenario.base_url))["events"] == 0
        assert set(scenario.committed().values()) == {NOTHING_COMMITTED}

        kafka_broker.create_topics([scenario.dlq])
        scenario.start_relay()
        await scenario.verdict()
