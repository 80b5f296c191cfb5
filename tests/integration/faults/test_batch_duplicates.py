"""Batch mode with producer-side duplicates (a producer retrying without idempotence, a replay)
and customers whose profile changes between their events: each key's events still reach
Klaviyo in order, a unique_id repeated in a bulk request never sinks the request (Klaviyo fails
all of it), every event is kept once."""

from __future__ import annotations

from pathlib import Path

import pytest

from dev.kafka_broker import KafkaBroker
from tests.fixtures.relay_harness import Event, sandbox_stats
from tests.integration.faults.scenario import Poison, Scenario

pytestmark = [pytest.mark.kafka, pytest.mark.faults]


def with_duplicates(events: list[Event]) -> list[Event | Poison]:
    records: list[Event | Poison] = []
    for n, event in enumerate(events):
        records.append(event)
        if n % 10 == 0:
            records.append(event)  # a retried send: right behind the first copy
        if n % 25 == 0 and n >= 50:
            records.append(events[n - 40])  # a replay: long after, behind newer events
    return records


async def test_producer_duplicates_in_batch_mode(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    with Scenario(kafka_broker, tmp_path) as scenario:
        # A, B, A′: the names alternate, so a key's profile changes between its events.
        records = with_duplicates(scenario.events(600, keys=15, first_names=("Ann", "Anna")))
        records.insert(300, Poison("key-4"))
        scenario.produce(records)
        await scenario.start_sandbox()
        scenario.start_relay(SEND_MODE="batch")
        # A copy sent in a later job is sent again: Klaviyo keeps it once.
        await scenario.verdict(resends=True)
        requests = (await sandbox_stats(scenario.base_url))["requests"]["bulk_create_events"]
        assert set(requests) == {"202"}, f"bulk requests refused: {requests}"
