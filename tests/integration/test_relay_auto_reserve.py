"""Auto mode's fresh-first reserve on the real broker and the sandbox (issue 13): a backlog of
urgent events produced long ago (an outage's, taken from Kafka at the recovery) takes Create
Event only while its windows have room beyond the reserve; a password reset produced after it
still goes realtime.

Before, every urgent event took Create Event whenever it had room, old or fresh: the backlog
spent the burst window and a fresh reset went into a bulk job (its linger and Klaviyo's job
processing on top). The windows here are Klaviyo's shape stretched so that the backlog's places
stay held for the whole test: a long burst window, the steady one twice as long."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import SandboxOptions, running_sandbox
from klaviyo_sandbox.facts import Limit, Window
from tests.conftest import TopicFactory
from tests.fixtures.relay_harness import (
    WAIT,
    Event,
    EventFactory,
    RelayProcess,
    create_event_limited,
    relay_env,
    wait_committed_to_end,
    wait_for,
)

pytestmark = pytest.mark.kafka

RESET = "shop.account.password-reset-requested"  # urgent; one Create Event per record
BACKLOG = 40
# The steady pace fills the burst window (20 per 120 s is 10 per 60 s): the reserve is capped at
# half of each window (consumer.klaviyo.ratelimit.reserve_share), 5 of the burst's 10 places.
BURST, STEADY = (10, 60.0), (20, 120.0)
REALTIME = "create_event"
BULK = "bulk_create_events"
PRODUCED_AGO_S = 600.0  # the backlog's records: produced ten minutes ago, during an outage


def produce_at(bootstrap: str, events: list[Event], timestamp_ms: int) -> None:
    """Produce ``events`` in order with their records' timestamp (CreateTime) set."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    errors: list[object] = []

    def report(err: object, _message: object) -> None:
        if err:
            errors.append(err)

    for event in events:
        producer.produce(
            event.topic,
            key=event.key.encode(),
            value=event.value,
            timestamp=timestamp_ms,
            on_delivery=report,
        )
    assert producer.flush(WAIT) == 0, "records not acknowledged in time"
    assert errors == []


async def test_auto_a_fresh_reset_goes_realtime_after_a_backlog_of_old_urgent_events(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = topic_factory("resets-reserve", partitions=1)
    dlq = topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    factory = EventFactory()
    backlog = [factory.event(topic, RESET, f"cust-{seq}", seq) for seq in range(BACKLOG)]
    first = factory.event(topic, RESET, "cust-first", 0)
    fresh = factory.event(topic, RESET, "cust-fresh", 0)
    limits = {
        REALTIME: Limit(
            burst=Window(requests=BURST[0], seconds=BURST[1]),
            steady=Window(requests=STEADY[0], seconds=STEADY[1]),
        )
    }

    async with running_sandbox(SandboxOptions(rate_limits=limits)) as sandbox:
        env = relay_env(
            bootstrap,
            sandbox.base_url,
            {topic: RESET},
            group,
            dlq,
            RATE_LIMITS=create_event_limited(BURST, STEADY),
            BATCH_LINGER_SECONDS="0.2",
            TOPIC_PRIORITIES=json.dumps({topic: "urgent"}),  # as the resets' contract topic
        )  # no SEND_MODE: the default (auto) is what is tested
        relay = RelayProcess(env, tmp_path / "relay.log")
        try:
            await wait_for(lambda: relay.logged("partitions assigned"), what="partitions")
            # A first reset: its answer ends the limiter's start-up probe (one request alone
            # until Klaviyo's figures come), so the backlog meets the windows as they run.
            produce_at(bootstrap, [first], int(time.time() * 1000))
            await wait_committed_to_end(bootstrap, group, [topic], 1)
            produce_at(bootstrap, backlog, int((time.time() - PRODUCED_AGO_S) * 1000))
            await wait_committed_to_end(bootstrap, group, [topic], 1 + BACKLOG)
            # The backlog's places stay held for a minute after their answers: the reset now
            # finds the burst window as the backlog left it.
            produce_at(bootstrap, [fresh], int(time.time() * 1000))
            await wait_committed_to_end(bootstrap, group, [topic], 1 + BACKLOG + 1)
        finally:
            relay.stop()
        received = list(sandbox.state.events)
        throttled = dict(sandbox.sandbox.throttled)

    assert not relay.logged("event dead-lettered")
    assert throttled.get(REALTIME, 0) == 0
    endpoint = {str(e["unique_id"]): str(e["endpoint"]) for e in received}
    used = [endpoint.get(event.event_id) for event in backlog]
    assert used.count(REALTIME) + used.count(BULK) == BACKLOG
    assert endpoint.get(first.event_id) == REALTIME
    # Before: the backlog took the burst's nine places left and the reset went into a bulk job.
    assert endpoint.get(fresh.event_id) == REALTIME
    # The backlog still used Create Event (its room beyond the reserve), and left the reserve.
    assert 0 < used.count(REALTIME) < BURST[0] - 1
