"""Auto mode bounds the events in Bulk Create Events requests by the backlog while no new
events arrive (consumer/pipeline/bulkwindow.py): a small backlog goes in requests of at most 100
events, one out at a time until it is committed, so a kill -9 can cost Klaviyo quota for at
most that many; and a relay SIGKILLed while Klaviyo holds one of its bulk requests loses
nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.pipeline.bulkwindow import FLOOR
from consumer.settings import DEFAULT_RATE_LIMITS, EndpointLimit, WindowLimit
from dev.harness import GroupOffsets, rate_limits_json
from dev.kafka_broker import KafkaBroker
from tests.fixtures.relay_harness import sandbox_events, sandbox_stats, set_faults
from tests.integration.faults.scenario import Scenario
from tests.integration.faults.test_crash_resends import committed_map, finished

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

EVENTS = 400  # a small backlog: well under DIVISOR × FLOOR, so the bound is FLOOR
KEYS = 40  # the held event's key has a few more events, waiting behind its request
# Create Event with room for one request a second: nearly every event goes into a bulk job.
ONE_CREATE_EVENT_A_SECOND = rate_limits_json(
    {
        **DEFAULT_RATE_LIMITS,
        "create_event": EndpointLimit(
            burst=WindowLimit(requests=1, seconds=1.0),
            steady=WindowLimit(requests=60, seconds=60.0),
        ),
    }
)
# Without the bound, a job would gather the whole backlog within this linger (one request).
AUTO = {
    "SEND_MODE": "auto",
    "RATE_LIMITS": ONE_CREATE_EVENT_A_SECOND,
    "BATCH_LINGER_SECONDS": "5",
    # The backlog is produced before the relay starts and must not count as late by its
    # records' age: late events of a key all join the open job at once (consumer/pipeline/
    # delivery/auto.py), so one request would carry every key's events, and the kill test
    # needs the held request to hold its own keys only.
    "AUTO_REALTIME_MAX_WAIT_SECONDS": "3600",
}
RETRY_FOR_LONG = {
    "RETRY_MAX_ATTEMPTS": "10000",
    "RETRY_MAX_ELAPSED_SECONDS": "3600",
    "RETRY_BASE_SECONDS": "0.1",
    "RETRY_CAP_SECONDS": "0.5",
}
SIZE = "klaviyo_relay_bulk_request_events"


async def test_a_small_backlog_goes_in_bulk_requests_of_the_bound(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    with Scenario(
        kafka_broker, tmp_path, partitions=3, record_types=("shop.account.created",)
    ) as scenario:
        scenario.produce(scenario.events(EVENTS, keys=KEYS))
        await scenario.start_sandbox("--latency-ms", "20-60")
        relay = scenario.start_relay(**AUTO)
        await scenario.settled()
        count = await relay.metric(f"{SIZE}_count")
        total = await relay.metric(f"{SIZE}_sum")
        within = await relay.metric(f"{SIZE}_bucket", {"le": f"{float(FLOOR)}"})
        assert within == count, f"{count - within} of {count} bulk requests over {FLOOR} events"
        # The bulk events are the backlog less the few that found room on Create Event.
        requests = (await sandbox_stats(scenario.base_url))["requests"]["bulk_create_events"]
        assert requests.get("202") == count >= total / FLOOR > 1
        await scenario.verdict()  # nothing lost, each event sent once, per-key order


async def test_kill_9_while_klaviyo_holds_a_bulk_request_loses_nothing(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    # One event's bulk request is answered 503 all along (retried, never accepted) and the
    # relay is SIGKILLed with it out. Only that request's events (at most the bound) and its
    # key's later events were held with it: the other requests went between its attempts,
    # were accepted and committed.
    with Scenario(
        kafka_broker, tmp_path, partitions=1, record_types=("shop.account.created",)
    ) as scenario:
        events = scenario.events(EVENTS, keys=KEYS)
        held = events[EVENTS // 2]
        scenario.produce(events)
        offset_of = {e.event_id: offset for offset, e in enumerate(events)}
        await scenario.start_sandbox("--latency-ms", "20-60")
        await set_faults(scenario.base_url, {"fail_matching": {held.event_id: 503}})
        first = scenario.start_relay(**AUTO, **RETRY_FOR_LONG)
        offsets = GroupOffsets(scenario.bootstrap, scenario.group)
        try:

            async def held_out_and_the_rest_in_and_mapped() -> bool:
                requests = (await sandbox_stats(scenario.base_url))["requests"]
                if requests.get("bulk_create_events", {}).get("503", 0) < 2:
                    return False
                stored = {
                    offset_of[e["unique_id"]] for e in await sandbox_events(scenario.base_url)
                }
                completed = await committed_map(offsets, scenario.topic)
                # Without the bound the held request carries the whole backlog: none gets in.
                if completed is None or len(stored) < EVENTS - FLOOR - EVENTS // KEYS:
                    return False
                # Committed: below the committed offset, or finished in the commit's map.
                return {o for o in stored if o >= completed.position} == finished(completed)

            await scenario.wait(
                held_out_and_the_rest_in_and_mapped, "all but the held request accepted, mapped"
            )
        finally:
            offsets.close()
        assert held.event_id not in {
            e["unique_id"] for e in await sandbox_events(scenario.base_url)
        }
        first.kill()
        scenario.relays.remove(first)

        await set_faults(scenario.base_url, {"fail_matching": {}})
        scenario.start_relay(**AUTO)
        # Every event stored once and sent once: what was accepted was committed before the
        # kill, the held request never accepted.
        await scenario.verdict()
