"""Backfill end to end: a dead-lettered old event, replayed with ``dlq replay``, reaches Klaviyo
(the sandbox) with ``backfill: true`` exactly once, in realtime and in batch mode; a recent one
replayed with it does not carry the flag.

Real broker, the relay in this process, ``dlq replay`` as the operator runs it (a subprocess).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Producer

from consumer.codec import Encoder
from consumer.klaviyo.requests import Endpoint
from consumer.plain_json import from_plain_json
from consumer.settings import SendMode
from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import running_sandbox
from tests.conftest import TopicFactory
from tests.fixtures.dlq import (
    Scenario,
    drained,
    make_scenario,
    relaying,
    sample_of,
    sandbox_options,
    set_faults,
)

pytestmark = pytest.mark.kafka

PLACED = "shop.order.placed"
RECORD = "shop.events.OrderPlaced"


def publish_at(scenario: Scenario, records: list[tuple[dict[str, Any], datetime]]) -> None:
    """Produce plain-JSON OrderPlaced events with the given CreateTime each."""
    encoder = Encoder.from_settings(scenario.settings)
    producer = Producer(scenario.settings.kafka_client_config())
    for event, created in records:
        value = encoder.encode(RECORD, from_plain_json(RECORD, event))
        producer.produce(
            scenario.topics[PLACED],
            value,
            event["customer"]["customer_id"].encode(),
            timestamp=int(created.timestamp() * 1000),
        )
    assert producer.flush(30) == 0


def unique_ids(event: dict[str, Any]) -> set[str]:
    """Placed Order and one Ordered Product per line item."""
    items = len(event["order"]["items"])
    return {event["event_id"], *(f"{event['event_id']}:{n}" for n in range(items))}


@pytest.mark.parametrize("mode", [SendMode.REALTIME, SendMode.BATCH])
async def test_replayed_old_event_reaches_klaviyo_with_backfill_exactly_once(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, mode: SendMode
) -> None:
    async with running_sandbox(sandbox_options()) as sandbox:
        scenario = make_scenario(
            kafka_broker, topic_factory, [PLACED], sandbox.base_url, backfill_after=3600
        )
        scenario.settings = scenario.settings.model_copy(
            update={"send_mode": mode, "batch_linger_seconds": 0.05}
        )
        old, recent = (r.event for r in sample_of(PLACED, count=2))
        assert old is not None and recent is not None
        now = datetime.now(UTC)
        publish_at(scenario, [(old, now - timedelta(hours=5)), (recent, now)])

        await set_faults(sandbox, {"error_rates": {"400": 1.0}})  # both are dead-lettered
        async with relaying(scenario):
            await drained(scenario)
            assert sandbox.state.events == []
            await set_faults(sandbox, {"error_rates": {}})

            replay = await scenario.acli("dlq", "replay")
            assert replay.returncode == 0, replay.stderr
            assert "replayed 2 (1 with backfill)" in replay.stdout
            await drained(scenario)

        received = sandbox.state.events
        assert sorted(e["unique_id"] for e in received) == sorted(
            unique_ids(old) | unique_ids(recent)
        )
        assert sandbox.state.duplicates == 0
        # Batch mode really went through Bulk Create Events (the flag rides on each bulk event).
        expected = Endpoint.BULK_CREATE_EVENTS if mode is SendMode.BATCH else Endpoint.CREATE_EVENT
        assert {e["endpoint"] for e in received} == {expected}
        flagged = {e["unique_id"] for e in received if e["backfill"]}
        assert flagged == unique_ids(old)
