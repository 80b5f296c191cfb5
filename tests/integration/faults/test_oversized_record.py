"""A record near Kafka's size limit: the broker takes 1,040,000 bytes (its default maximum is
1,048,588), but the record plus its dead-letter headers exceeds what the relay's producer may
write. It is parked once (as a marker that fits), and the relay never exits because of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dev.kafka_broker import KafkaBroker
from tests.fixtures.relay_harness import headers_dict, read_all
from tests.integration.faults.scenario import Poison, Scenario

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

SIZE = 1_040_000
# The producing application allows records up to the broker's limit (librdkafka: 1,000,000).
BIG_PRODUCER = {"message.max.bytes": "1048588"}


async def test_a_one_megabyte_poison_record(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    with Scenario(kafka_broker, tmp_path) as scenario:
        events = scenario.events(150)
        big = Poison("key-5", b"\xc3\x01" + bytes(SIZE - 2))  # an unknown writer: not decodable
        scenario.produce(
            [*events[:75], big, Poison("key-6"), *events[75:]],
            headers=[("trace-id", b"t-oversized")],
            config=BIG_PRODUCER,
        )
        await scenario.start_sandbox()
        scenario.start_relay()
        await scenario.verdict()
        letters = read_all(scenario.bootstrap, scenario.dlq, len(scenario.poison))
        sizes = {len(m.value() or b"") for m in letters}
        assert max(sizes) < SIZE  # the big one went as a marker, not as it was
        assert all(headers_dict(m)["trace-id"] == "t-oversized" for m in letters)
