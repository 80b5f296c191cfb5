"""librdkafka's prefetch stays bounded however large the backlog (issue 14).

The relay's consumer settings (``consumer_config``) against a real broker and a backlog of
compressed batches far larger than the prefetch: while the consumer takes records slowly, the
records librdkafka holds (fetched, not yet handed over; its own statistics) stay within the
queue threshold plus one capped fetch response. With librdkafka's default response size (1 MB
of compressed records per partition) one fetch overshot the threshold by tens of thousands of
records, and a 1M backlog held 340,000 (bench/README.md, "Memory"). Held = fetched and not yet
handed to the application, from librdkafka's statistics.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer

from consumer.pipeline.source import consumer_config
from consumer.settings import load_settings
from dev.kafka_broker import KafkaBroker
from tests.conftest import TopicFactory

PARTITIONS = 6
RECORDS = 60_000  # 10,000 a partition: ~30 MB, far more than the prefetch may hold
RECORD_BYTES = 500
# queued.min.messages (2,000) plus one response of at most fetch.max.bytes (1 MiB) of these
# records, compressed about 2:1 (~4,200 of them), with room to spare; the default settings
# held over 25,000 here.
MAX_HELD = 10_000
STATS_DOCUMENTS = 15
WAIT_SECONDS = 120.0


def _record(n: int) -> bytes:
    """Half random (incompressible), half repeated text: lz4 compresses it about 2:1."""
    return os.urandom(RECORD_BYTES // 4).hex().encode() + b"x" * (RECORD_BYTES // 2) + b"%08d" % n


def _fill(bootstrap: str, topic: str) -> None:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": "lz4",
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": RECORDS,
        }
    )
    for n in range(RECORDS):
        producer.produce(topic, _record(n), partition=n % PARTITIONS)
    assert producer.flush(60) == 0


@pytest.mark.kafka
def test_prefetch_holds_few_records_of_a_large_backlog(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("prefetch", partitions=PARTITIONS)
    _fill(kafka_broker.bootstrap_servers, topic)
    settings = load_settings(
        klaviyo_api_key="pk_test",
        kafka_bootstrap_servers=kafka_broker.bootstrap_servers,
        kafka_group_id=f"prefetch-{uuid.uuid4().hex[:8]}",
    )
    held: list[int] = []

    def on_stats(document: str) -> None:
        partitions = [
            p
            for t in json.loads(document)["topics"].values()
            for key, p in t["partitions"].items()
            if key != "-1" and p.get("desired")
        ]
        # Fetched but not yet handed to the application: the fetch position ("next_offset")
        # minus the application's ("app_offset", unset before its first record: the topic is
        # fresh, so 0).
        if partitions:
            held.append(
                sum(
                    max(0, p["next_offset"] - max(p["app_offset"], 0))
                    for p in partitions
                    if p["next_offset"] >= 0
                )
            )

    consumer = Consumer(
        {**consumer_config(settings), "statistics.interval.ms": "200", "stats_cb": on_stats}
    )
    consumer.subscribe([topic])
    taken = 0
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        # A slow application (ten records every 50 ms: pacing, not waiting for anything), so
        # the prefetch fills up to what it may hold.
        while len([n for n in held if n > 0]) < STATS_DOCUMENTS:
            assert time.monotonic() < deadline, f"statistics so far: {held}"
            taken += len(consumer.consume(10, timeout=0.1))
            time.sleep(0.05)
    finally:
        consumer.close()
    assert taken < RECORDS // 2, "the backlog must outlast the measurement"
    assert 0 < max(held) <= MAX_HELD, f"records held by librdkafka over time: {held}"
