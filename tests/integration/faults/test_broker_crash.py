"""The broker is SIGKILLed mid-run and restarted on the same port and data: nothing is lost,
nothing is parked twice, the relay rides it out without exiting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dev.kafka_broker import KafkaBroker
from tests.fixtures.relay_harness import sandbox_stats
from tests.integration.faults.scenario import Poison, Scenario

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

# librdkafka's default session timeout, longer than the broker's restart: the relay keeps its
# assignment, commits what it finished once the broker is back and replays nothing. (The
# harness's 6 s, for the relay crash tests, would expire during the restart: the partitions
# are then lost, their uncommitted events replayed, and a poison record parked a second time.)
RIDE_OUT = {"session.timeout.ms": "45000", "heartbeat.interval.ms": "500"}


async def test_broker_sigkill_and_restart_mid_run(
    dedicated_kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    broker = dedicated_kafka_broker
    with Scenario(broker, tmp_path) as scenario:
        # Few keys (one request at a time each) and latency: the relay is still busy with the
        # first events, all fetched already, when the broker dies.
        first = scenario.events(240, keys=8)
        scenario.produce([*first[:100], Poison("key-3"), *first[100:], Poison("key-7")])
        await scenario.start_sandbox("--latency-ms", "30-60")
        scenario.start_relay(KAFKA_EXTRA_CONFIG=json.dumps(RIDE_OUT))

        async def delivered() -> int:
            return int((await sandbox_stats(scenario.base_url))["events"])

        async def delivering() -> bool:
            return await delivered() >= 60

        await scenario.wait(delivering, "the relay to be delivering")
        broker.kill()
        at_kill = await delivered()

        async def delivering_without_broker() -> bool:
            return await delivered() > at_kill

        # The relay works on with the records it holds while the broker is gone.
        await scenario.wait(delivering_without_broker, "delivering during the outage")
        broker.restart()
        second = scenario.events(160, keys=8)
        scenario.produce([*second[:80], Poison("key-11"), *second[80:]])
        await scenario.verdict()
