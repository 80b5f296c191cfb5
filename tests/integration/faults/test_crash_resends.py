"""A relay is SIGKILLed while one event is held back (the sandbox answers 503 to it) and the
events after it on its partition were accepted: the restarted relay must not send those again.
The committed offset stays at the held event (the watermark cannot pass it); the commit's map of
finished offsets is what lets the next relay skip the accepted ones, Klaviyo quota unspent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from consumer.pipeline.completed import CompletedMap, decode
from dev.harness import GroupOffsets
from dev.kafka_broker import KafkaBroker
from tests.fixtures.relay_harness import sandbox_events, set_faults
from tests.integration.faults.scenario import Scenario, base_id

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

EVENTS = 40
KEYS = 8  # the held event's key has 4 more events, waiting behind it (per-key order)
# The held event is retried all along (never dead-lettered while the test holds it).
RETRY_FOR_LONG = {
    "RETRY_MAX_ATTEMPTS": "10000",
    "RETRY_MAX_ELAPSED_SECONDS": "3600",
    "RETRY_BASE_SECONDS": "0.1",
    "RETRY_CAP_SECONDS": "0.5",
}
# Batch mode: one event per job, so the held job holds the held event alone. Auto mode (the
# default) sends what finds room on Create Event and puts the rest into bulk jobs: both paths
# must land in the commit's map, so its jobs hold one event each too.
ONE_PER_JOB = {"BATCH_MAX_EVENTS": "1", "BATCH_LINGER_SECONDS": "0.05"}
MODES = {
    "realtime": {"SEND_MODE": "realtime"},
    "batch": {"SEND_MODE": "batch", **ONE_PER_JOB},
    "auto": {"SEND_MODE": "auto", **ONE_PER_JOB},
}


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_kill_9_with_a_held_event_resends_nothing_klaviyo_accepted(
    kafka_broker: KafkaBroker, tmp_path: Path, mode: str
) -> None:
    with Scenario(
        kafka_broker, tmp_path, partitions=1, record_types=("shop.account.created",)
    ) as scenario:
        events = scenario.events(EVENTS, keys=KEYS)
        held = events[0]
        waiting = [e for e in events if e.key == held.key]
        scenario.produce(events)
        offset_of = {e.event_id: offset for offset, e in enumerate(events)}
        await scenario.start_sandbox()
        await set_faults(scenario.base_url, {"fail_matching": {held.event_id: 503}})
        first = scenario.start_relay(**MODES[mode], **RETRY_FOR_LONG)
        offsets = GroupOffsets(scenario.bootstrap, scenario.group)
        try:

            async def accepted_and_mapped() -> bool:
                delivered = await sandbox_events(scenario.base_url)
                stored = {offset_of[base_id(e["unique_id"])] for e in delivered}
                completed = await committed_map(offsets, scenario.topic)
                if completed is None:
                    return False
                return len(stored) == EVENTS - len(waiting) and finished(completed) == stored

            await scenario.wait(accepted_and_mapped, "the accepted events mapped in the commit")
            assert offsets.committed([scenario.topic]) == {(scenario.topic, 0): 0}
        finally:
            offsets.close()
        first.kill()
        scenario.relays.remove(first)

        await set_faults(scenario.base_url, {"fail_matching": {}})
        second = scenario.start_relay(**MODES[mode])
        await scenario.settled()
        assert second.metrics_port() is not None
        skipped = await second.metric("klaviyo_relay_replay_skipped_total")
        resent = await second.metric("klaviyo_relay_replay_resent_total")
        assert skipped == EVENTS - len(waiting)
        # The held event: started by the first relay, never finished. In realtime mode those
        # behind it in its key's lane never started; in batch mode the next may have been
        # placed in a job waiting on it (started, not sent): counted, an upper bound. In auto
        # mode the held event may have gone either way, so the same bound as batch.
        most = 1 if mode == "realtime" else len(waiting)
        assert 1 <= resent <= most
        assert not second.logged("commit metadata ignored")
        # Every event stored once and sent once: no resend, not even one Klaviyo dedups.
        await scenario.verdict()


ORDERS = 10
ORDER_KEYS = 5


@pytest.mark.parametrize("mode", ["realtime", "auto"])
async def test_kill_9_in_the_middle_of_an_order_resends_none_of_its_accepted_events(
    kafka_broker: KafkaBroker, tmp_path: Path, mode: str
) -> None:
    # An order is Placed Order, then one Ordered Product per item: the sandbox takes the first
    # and answers 503 to the second. The commit maps the order as started with one accepted
    # step; after the kill the next relay sends its Ordered Products, not its Placed Order again.
    with Scenario(
        kafka_broker, tmp_path, partitions=1, record_types=("shop.order.placed",)
    ) as scenario:
        events = scenario.events(ORDERS, keys=ORDER_KEYS)
        held = events[0]
        scenario.produce(events)
        others = {offset for offset, e in enumerate(events) if e.key != held.key}
        await scenario.start_sandbox()
        await set_faults(scenario.base_url, {"fail_matching": {f"{held.event_id}:0": 503}})
        first = scenario.start_relay(**MODES[mode], **RETRY_FOR_LONG)
        offsets = GroupOffsets(scenario.bootstrap, scenario.group)
        try:

            async def half_sent_and_mapped() -> bool:
                delivered = await sandbox_events(scenario.base_url)
                if held.event_id not in {e["unique_id"] for e in delivered}:
                    return False
                completed = await committed_map(offsets, scenario.topic)
                if completed is None:
                    return False
                return completed.accepted(0) == 1 and finished(completed) == others

            await scenario.wait(half_sent_and_mapped, "the held order's first step mapped")
        finally:
            offsets.close()
        first.kill()
        scenario.relays.remove(first)

        await set_faults(scenario.base_url, {"fail_matching": {}})
        scenario.start_relay(**MODES[mode])
        # Every Klaviyo event stored once and sent once: the Placed Order is not sent again.
        await scenario.verdict()


async def committed_map(offsets: GroupOffsets, topic: str) -> CompletedMap | None:
    """The map of finished offsets in the group's commit of ``topic``'s one partition."""
    commits = await asyncio.to_thread(offsets.commits, [topic])
    [(position, metadata)] = commits.values()
    return decode(position, metadata) if position >= 0 else None


def finished(completed: CompletedMap) -> set[int]:
    return {o for o in range(completed.position, completed.end) if completed.finished(o)}
