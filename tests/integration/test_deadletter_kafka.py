"""The dead-letter producer against the real broker: an oversized record is parked as a marker
that fits the producer and the topic, letters are stamped when parked, a missing topic is
refused at start-up, and writes to a topic deleted mid-run are retried and counted until it is
back, then land once."""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.observability.metrics import REGISTRY
from consumer.pipeline.deadletter import DeadLetterProducer
from consumer.pipeline.deadletter_topic import DeadLetterTopicUnusable
from consumer.pipeline.failure import Failure
from consumer.pipeline.records import SourceRecord
from consumer.settings import Settings, load_settings
from dev.kafka_broker import KafkaBroker
from tests.conftest import TopicFactory
from tests.fixtures.relay_harness import WAIT, headers_dict, read_all, wait_for

pytestmark = pytest.mark.kafka

CREATED_MS = 1_700_000_000_123
BIG = SourceRecord(
    "shop.order.placed",
    0,
    9,
    b"cust-9",
    b"\xc3" + bytes(1_039_999),  # 1,040,000 bytes: under the broker's 1,048,588
    CREATED_MS,
    (("trace-id", b"t-1"),),
)
BAD_MAGIC = Failure(
    "decode", "bad_magic", "consumer.codec.BadMagic", "bad_magic", datetime.now(UTC)
)


def settings_for(broker: KafkaBroker, topic: str) -> Settings:
    return load_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        dlq_topic=topic,
        retry_base_seconds=0.05,
        retry_cap_seconds=0.5,
    )


async def open_producer(broker: KafkaBroker, topic: str) -> DeadLetterProducer:
    return await DeadLetterProducer.open(settings_for(broker, topic), asyncio.get_running_loop())


def write_failures() -> float:
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "klaviyo_relay_dead_letter_write_failures"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


async def test_an_oversized_record_is_parked_as_a_marker_stamped_when_parked(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("dlq")
    dlq = await open_producer(kafka_broker, topic)
    try:
        before = time.time()
        assert await asyncio.wait_for(dlq.send(BIG, BAD_MAGIC), WAIT) == "too_large"
        after = time.time()
    finally:
        await dlq.close(5.0)
    (letter,) = read_all(kafka_broker.bootstrap_servers, topic, expected=1)
    headers = headers_dict(letter)
    assert headers["klaviyo-relay.reason"] == "too_large"
    assert headers["klaviyo-relay.original-reason"] == "bad_magic"
    assert headers["klaviyo-relay.value-truncated"] == "prefix"
    assert headers["klaviyo-relay.original-size"] == "1040000"
    assert headers["klaviyo-relay.value-sha256"] == hashlib.sha256(BIG.value or b"").hexdigest()
    assert headers["trace-id"] == "t-1" and letter.key() == BIG.key
    value = letter.value() or b""
    assert 990_000 < len(value) < 1_000_000 and (BIG.value or b"").startswith(value)
    # Parked now; the source record's time is kept in a header.
    _, parked_ms = letter.timestamp()
    assert before * 1000 - 1000 <= parked_ms <= after * 1000 + 1000
    assert headers["klaviyo-relay.original-timestamp"] == "2023-11-14T22:13:20.123Z"


async def test_a_topic_with_a_smaller_limit_gets_a_marker_that_fits_it(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    topic = f"dlq-small-{time.monotonic_ns()}"
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers})
    new = NewTopic(topic, 1, 1, config={"max.message.bytes": "200000"})
    admin.create_topics([new])[topic].result(timeout=WAIT)
    await wait_for(lambda: topic in admin.list_topics(timeout=10).topics, what="topic")
    dlq = await open_producer(kafka_broker, topic)
    try:
        assert await asyncio.wait_for(dlq.send(BIG, BAD_MAGIC), WAIT) == "too_large"
    finally:
        await dlq.close(5.0)
    (letter,) = read_all(kafka_broker.bootstrap_servers, topic, expected=1)
    assert 150_000 < len(letter.value() or b"") < 200_000


async def test_a_missing_topic_is_refused_naming_the_setting(kafka_broker: KafkaBroker) -> None:
    settings = settings_for(kafka_broker, "no-such-dead-letter-topic")
    with pytest.raises(DeadLetterTopicUnusable, match=r"DLQ_TOPIC=no-such-dead-letter-topic: the"):
        await DeadLetterProducer.open(settings, asyncio.get_running_loop())


async def test_writes_to_a_deleted_topic_are_retried_and_counted_until_it_is_back(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("dlq")
    dlq = await open_producer(kafka_broker, topic)
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers})
    small = SourceRecord("shop.order.placed", 0, 3, b"k", b"v", CREATED_MS)
    try:
        admin.delete_topics([topic])[topic].result(timeout=WAIT)
        failures = write_failures()
        sending = asyncio.create_task(dlq.send(small, BAD_MAGIC))
        await wait_for(lambda: write_failures() > failures, what="a counted write failure")
        assert not sending.done()  # still trying: the event stays unfinished
        kafka_broker.create_topics([topic])
        assert await asyncio.wait_for(sending, WAIT) == "bad_magic"
    finally:
        await dlq.close(5.0)
    letters = read_all(kafka_broker.bootstrap_servers, topic, expected=1)
    assert [m.value() for m in letters] == [b"v"]
