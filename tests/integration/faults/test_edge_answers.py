"""Klaviyo's edge misbehaves: 3 % of requests answered 408 or 425 by a proxy, 1 % with
Cloudflare's HTML 403 bot challenge. All temporary: the relay retries them, never halts and
never dead-letters a good event."""

from __future__ import annotations

from pathlib import Path

import pytest

from dev.kafka_broker import KafkaBroker
from tests.fixtures.relay_harness import sandbox_stats
from tests.integration.faults.scenario import Poison, Scenario

pytestmark = [pytest.mark.kafka, pytest.mark.faults]


async def test_408_425_and_html_403_challenges_are_retried(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    with Scenario(kafka_broker, tmp_path) as scenario:
        events = scenario.events(400)
        scenario.produce([*events[:200], Poison("key-4"), *events[200:]])
        await scenario.start_sandbox(
            "--error-rate", "408=0.015", "--error-rate", "425=0.015", "--challenge-rate", "0.01"
        )
        # Enough attempts that a retried request is never given up on within the run; realtime,
        # one request per event, so that the 1 % challenge rate is met (bulk jobs are fewer).
        scenario.start_relay(RETRY_MAX_ATTEMPTS="20", SEND_MODE="realtime")
        await scenario.verdict()
        stats = await sandbox_stats(scenario.base_url)
        # Every kind of edge answer was met (and survived).
        assert stats["injected"].get("408", 0) > 0
        assert stats["injected"].get("425", 0) > 0
        assert stats["challenged"] > 0
