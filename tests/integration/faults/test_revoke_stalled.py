"""A partition is revoked while the relay's event loop is stalled past the revoke deadline (its
drain had started, events in flight): the partition must still be let go, and consumed again
when it comes back."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from dev.kafka_broker import KafkaBroker
from tests.fixtures.relay_harness import sandbox_stats, set_faults
from tests.integration.faults.scenario import Poison, Scenario
from tests.integration.faults.stalling_relay import STALL_SECONDS

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

DRAIN_SECONDS = 2
# The Kafka thread waits for the loop's drain DRAIN_TIMEOUT_SECONDS + 10 s; stall longer.
STALL = DRAIN_SECONDS + 10 + 5
STALLING_RELAY = [sys.executable, "-m", "tests.integration.faults.stalling_relay"]
KEYS = 12


async def test_revoke_while_the_loop_is_stalled(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    with Scenario(kafka_broker, tmp_path, partitions=2) as scenario:
        scenario.produce([*scenario.events(60, keys=KEYS), Poison("key-1")])
        await scenario.start_sandbox()
        settings = {
            "DRAIN_TIMEOUT_SECONDS": str(DRAIN_SECONDS),
            # Held requests give up soon, so the relay retries them soon after the sandbox heals.
            "KLAVIYO_TIMEOUT_SECONDS": "2",
            "RETRY_MAX_ATTEMPTS": "20",
            # Every key's next event must go to Create Event and be held there. Late by its
            # records' age, the pre-produced backlog would go in a bulk job, the relay's first
            # Create Event would be the held ones, and until a first answer brings Klaviyo's
            # RateLimit headers the limiter lets one request out (its share probe): the other
            # keys' events would go to bulk jobs (`bulk/quota`).
            "AUTO_REALTIME_MAX_WAIT_SECONDS": "3600",
        }
        first = scenario.start_relay(STALLING_RELAY, **settings, **{STALL_SECONDS: str(STALL)})
        await scenario.settled()

        # Events in flight that do not finish: the revoke's drain has to wait for them.
        await set_faults(scenario.base_url, {"timeout_rate": 1.0})
        scenario.produce(scenario.events(40, keys=KEYS))

        async def held() -> bool:
            return int((await sandbox_stats(scenario.base_url))["held"]) >= KEYS

        await scenario.wait(held, "every key's next event in flight, on both partitions")
        first.process.send_signal(signal.SIGUSR1)  # stall the loop in the next drain
        # A second member joins: one partition moves to it, revoked from the stalled relay.
        second = scenario.start_relay(**settings)
        await scenario.wait(
            lambda: first.logged("draining revoked partitions failed"),
            "the revoke to outlive its deadline",
        )
        await set_faults(scenario.base_url, {"timeout_rate": 0.0})
        # The second member leaves: its partition goes back to the first relay, which must
        # consume it again (the old and the new records).
        await scenario.stop_relay(second)
        scenario.produce([*scenario.events(60, keys=KEYS), Poison("key-7")])
        # Events the first relay had in flight when it let the partition go are sent again by
        # the second: Klaviyo keeps them once.
        await scenario.verdict(resends=True)
