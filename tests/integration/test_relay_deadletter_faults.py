"""Dead letters under faults, end to end on the real broker: a ~1 MB poison record is parked
once as a too_large marker and the relay goes on; a dead-letter topic that does not exist stops
the start-up with a clear error; one deleted mid-run holds its records (writes retried and
counted) until it is back, and nothing is lost; a handler bug is parked and logged masked."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from datetime import datetime
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from consumer.handlers.registry import HandlerRegistry
from consumer.observability.logging import configure_logging
from consumer.pipeline.relay import Relay
from consumer.settings import load_settings
from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.conftest import TopicFactory
from tests.fixtures.relay_harness import (
    UNLIMITED_RATE_LIMITS,
    WAIT,
    EventFactory,
    RelayCase,
    base_ids,
    committed_offsets,
    end_offsets,
    headers_dict,
    produce,
    produce_events,
    read_all,
    wait_for,
)

pytestmark = pytest.mark.kafka

CREATED = "shop.account.created"


def produce_big(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    """One record over librdkafka's default 1,000,000 bytes, under the broker's 1,048,588."""
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 1_048_588})
    producer.produce(topic, value, key)
    assert producer.flush(WAIT) == 0


async def test_a_1mb_poison_record_is_parked_once_as_a_marker_and_the_relay_goes_on(
    relay_case: RelayCase,
) -> None:
    bootstrap, factory = relay_case.bootstrap, relay_case.factory
    topic = relay_case.topic("big", CREATED)
    before = [factory.event(topic, CREATED, "cust-big", n) for n in range(3)]
    after = [factory.event(topic, CREATED, "cust-big", n) for n in range(3, 6)]
    poison = b"not avro " * 115_556  # 1,040,004 bytes: bad_magic, and too large to park as is
    produce_events(bootstrap, before)
    produce_big(bootstrap, topic, b"cust-big", poison)
    produce_events(bootstrap, after)
    ends = relay_case.ends()

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        relay = relay_case.start(relay_case.env(sandbox.base_url))
        await wait_for(
            lambda: relay_case.committed() == ends, what="committed offsets past the poison record"
        )
        assert relay.process.poll() is None  # still running: no exit, no crash loop
        relay.terminate()
        assert await relay.wait_exit() == 0
        delivered = base_ids(sandbox.state.events)
    assert delivered == {e.event_id for e in before + after}
    letters = read_all(bootstrap, relay_case.dlq, expected=1)
    assert len(letters) == 1  # parked exactly once
    headers = headers_dict(letters[0])
    assert headers["klaviyo-relay.reason"] == "too_large"
    assert headers["klaviyo-relay.original-reason"] == "bad_magic"
    assert headers["klaviyo-relay.original-size"] == str(len(poison))
    assert headers["klaviyo-relay.value-truncated"] == "prefix"
    assert headers["__connect.errors.offset"] == "3"
    assert poison.startswith(letters[0].value() or b"x")
    # The JSON log keeps both the reason and the failure's text.
    (line,) = [e for e in relay.log_lines() if e.get("message") == "event dead-lettered"]
    assert line["reason"] == "bad_magic" and line["detail"].startswith("bad_magic")
    assert not any("Traceback" in str(e) for e in relay.log_lines())


async def test_a_missing_dead_letter_topic_stops_the_start_up_naming_it(
    relay_case: RelayCase,
) -> None:
    relay_case.topic("src", CREATED)
    missing = f"no-such-dlq-{uuid.uuid4().hex[:8]}"
    # The case's own dead-letter topic exists: this relay is told another one.
    env = relay_case.env("http://127.0.0.1:9", DLQ_TOPIC=missing)  # never reached: refused
    relay = relay_case.start(env)
    assert await relay.wait_exit() == 1
    lines = relay.log_lines()
    (error,) = [e for e in lines if e.get("level") == "error"]
    assert error["message"] == "relay not started: dead-letter topic unusable"
    assert error["error"].startswith(f"DLQ_TOPIC={missing}: the topic does not exist; create it")
    assert not any("Traceback" in str(e) for e in lines)
    assert not relay.logged("relay started")


async def test_a_dead_letter_topic_deleted_mid_run_holds_its_records_until_it_is_back(
    kafka_broker: KafkaBroker, relay_case: RelayCase
) -> None:
    bootstrap, factory, dlq = relay_case.bootstrap, relay_case.factory, relay_case.dlq
    topic = relay_case.topic("src", CREATED)
    first = [factory.event(topic, CREATED, "k", n) for n in range(3)]
    later = [factory.event(topic, CREATED, "k", n) for n in range(3, 6)]
    produce_events(bootstrap, first)
    first_ends = relay_case.ends()
    admin = AdminClient({"bootstrap.servers": bootstrap})

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        relay = relay_case.start(relay_case.env(sandbox.base_url))
        await wait_for(lambda: relay_case.committed() == first_ends, what="first events committed")
        assert relay.metrics_port() is not None
        admin.delete_topics([dlq])[dlq].result(timeout=WAIT)
        produce(bootstrap, [(topic, b"k", b"garbage, not Avro")])
        produce_events(bootstrap, later)

        async def failures_counted() -> bool:
            return await relay.metric("klaviyo_relay_dead_letter_write_failures_total") > 0

        await wait_for(failures_counted, what="failed dead-letter writes counted")
        # Held: nothing committed past the record whose dead letter is not written.
        assert relay_case.committed() == first_ends
        assert relay.process.poll() is None
        kafka_broker.create_topics([dlq])
        ends = relay_case.ends()
        await wait_for(
            lambda: relay_case.committed() == ends,
            what="everything committed once the topic is back",
        )
        relay.terminate()
        assert await relay.wait_exit() == 0
        delivered = base_ids(sandbox.state.events)
    assert delivered == {e.event_id for e in first + later}
    letters = read_all(bootstrap, dlq, expected=1)
    assert [m.value() for m in letters] == [b"garbage, not Avro"]
    assert relay.logged("dead-letter write failed, retrying")


async def test_a_handler_bug_is_logged_and_parked_masked(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = topic_factory("bug")
    dlq = topic_factory("dlq")
    factory = EventFactory()
    events = [factory.event(topic, CREATED, "cust-bug", n) for n in range(2)]
    produce_events(bootstrap, events)
    ends = end_offsets(bootstrap, [topic])
    stream = io.StringIO()

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        settings = load_settings(
            kafka_bootstrap_servers=bootstrap,
            kafka_group_id=f"relay-{uuid.uuid4().hex[:8]}",
            topics=[topic],
            topic_handlers={topic: CREATED},
            dlq_topic=dlq,
            klaviyo_base_url=sandbox.base_url,
            klaviyo_api_key="pk_sandbox",
            rate_limits=UNLIMITED_RATE_LIMITS,
            metrics_port=0,
            commit_interval_seconds=0.2,
            log_format="json",
        )
        configure_logging(settings, stream=stream)
        registry = HandlerRegistry.from_settings(settings)
        planned = registry.plan

        def buggy(topic_: str, event: Any, now: datetime, *, backfill: bool = False) -> Any:
            if event.datum["event_id"] == events[0].event_id:
                raise ValueError("no zip for John Smith, 12 Baker Street: 'jane@shopmail.io'")
            return planned(topic_, event, now, backfill=backfill)

        monkeypatch.setattr(registry, "plan", buggy)
        relay = Relay(settings, registry=registry)
        task = asyncio.create_task(relay.run())
        try:
            await wait_for(
                lambda: committed_offsets(bootstrap, settings.kafka_group_id, [topic]) == ends,
                what="both records committed",
            )
        finally:
            await wait_for(lambda: hasattr(relay, "_stop"), what="the relay can be stopped")
            relay.request_stop()
            assert await asyncio.wait_for(task, WAIT) == 0
            logging.getLogger().handlers.clear()
        assert base_ids(sandbox.state.events) == {events[1].event_id}

    (letter,) = read_all(bootstrap, dlq, expected=1)
    headers = headers_dict(letter)
    assert headers["__connect.errors.class.name"] == "builtins.ValueError"
    message = headers["__connect.errors.exception.message"]
    assert message.startswith("invalid_event: ValueError: no zip for J*** S***")
    logged = [json.loads(line) for line in stream.getvalue().splitlines()]
    (parked,) = [e for e in logged if e["message"] == "event dead-lettered"]
    assert parked["reason"] == "invalid_event" and parked["detail"] == message
    everything = stream.getvalue() + message
    for secret in ("John", "Smith", "Baker", "12 ", "jane", "shopmail"):
        assert secret not in everything
