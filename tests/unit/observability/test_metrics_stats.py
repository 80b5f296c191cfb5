"""Every metric the operations guide promises is exposed with the right type, and librdkafka's
statistics become per-partition lag and committed-offset gauges.

The scrape test starts the operations server itself; set RELAY_METRICS_URL (e.g.
http://127.0.0.1:9400/metrics) to scrape a running relay instead.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from consumer.observability.health import RelayState, start_http_server
from consumer.observability.metrics import COMMITTED_OFFSET, CONSUMER_LAG, REGISTRY
from consumer.observability.stats import record_kafka_stats
from tests.fixtures.metrics import PROMISED, metric_families

# Labels must stay bounded: none of these may ever label a series.
UNBOUNDED_LABELS = {"email", "phone", "profile_id", "event_id", "unique_id", "offset", "key", "id"}


@pytest.fixture
async def scraped_text() -> AsyncIterator[str]:
    url = os.environ.get("RELAY_METRICS_URL")
    runner = None
    if url is None:
        runner = await start_http_server(0, RelayState(), host="127.0.0.1")
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}/metrics"
    try:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            assert resp.status == 200
            yield await resp.text()
    finally:
        if runner is not None:
            await runner.cleanup()


async def test_every_promised_metric_is_exposed_with_its_type(scraped_text: str) -> None:
    families = metric_families(scraped_text)
    missing = sorted(set(PROMISED) - set(families))
    assert not missing, f"not exposed: {missing}"
    wrong = {n: families[n].type for n, t in PROMISED.items() if families[n].type != t}
    assert not wrong, f"wrong types: {wrong}"
    assert scraped_text.count("# TYPE klaviyo_relay_") >= len(PROMISED)


def test_metric_names_and_labels_follow_prometheus_conventions() -> None:
    for metric in REGISTRY.collect():
        name, kind = metric.name, metric.type
        assert name.startswith("klaviyo_relay_"), name
        if kind == "histogram":
            # Time in seconds, or a size counted in events (bulk requests).
            assert name.endswith(("_seconds", "_events")), f"{name}: seconds or events"
        assert not name.endswith(("_milliseconds", "_ms", "_minutes")), f"{name}: base units"
    for collector in REGISTRY._collector_to_names:  # labelnames are only on the collectors
        labels = set(getattr(collector, "_labelnames", ()))
        assert not labels & UNBOUNDED_LABELS, f"{collector}: unbounded labels {labels}"


def _stats(name: str, partitions: dict[str, dict[str, Any]], topic: str) -> str:
    """A librdkafka statistics document (only the fields the relay reads, plus some noise)."""
    return orjson.dumps(
        {
            "name": name,
            "type": "consumer",
            "ts": 1,
            "brokers": {},
            "topics": {
                topic: {
                    "topic": topic,
                    "partitions": {
                        # The UA pseudo-partition is in every document; never a series.
                        "-1": {"partition": -1, "desired": False, "consumer_lag": -1},
                        **partitions,
                    },
                }
            },
        }
    ).decode()


def _value(gauge_name: str, topic: str, partition: str) -> float | None:
    return REGISTRY.get_sample_value(gauge_name, {"topic": topic, "partition": partition})


def test_stats_set_lag_and_committed_offset_of_assigned_partitions() -> None:
    topic, client = f"stats-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    record_kafka_stats(
        _stats(
            client,
            {
                "0": {"desired": True, "consumer_lag": 7, "committed_offset": 93},
                "1": {"desired": True, "consumer_lag": 0, "committed_offset": 12},
                # Known from metadata, assigned to another member of the group.
                "2": {"desired": False, "consumer_lag": 50, "committed_offset": 5},
            },
            topic,
        )
    )
    assert _value("klaviyo_relay_consumer_lag_messages", topic, "0") == 7
    assert _value("klaviyo_relay_committed_offset", topic, "0") == 93
    assert _value("klaviyo_relay_consumer_lag_messages", topic, "1") == 0
    assert _value("klaviyo_relay_consumer_lag_messages", topic, "2") is None
    assert _value("klaviyo_relay_consumer_lag_messages", topic, "-1") is None


def test_stats_drop_revoked_partitions_and_ignore_unknown_values() -> None:
    topic, client = f"stats-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    record_kafka_stats(
        _stats(
            client,
            {
                "0": {"desired": True, "consumer_lag": 3, "committed_offset": 10},
                "1": {"desired": True, "consumer_lag": 4, "committed_offset": 20},
            },
            topic,
        )
    )
    # Rebalance: partition 1 went to another member; partition 0's numbers are momentarily
    # unknown (-1 / OFFSET_INVALID) and keep their last value rather than a false 0.
    record_kafka_stats(
        _stats(
            client, {"0": {"desired": True, "consumer_lag": -1, "committed_offset": -1001}}, topic
        )
    )
    assert _value("klaviyo_relay_consumer_lag_messages", topic, "0") == 3
    assert _value("klaviyo_relay_committed_offset", topic, "0") == 10
    assert _value("klaviyo_relay_consumer_lag_messages", topic, "1") is None
    assert _value("klaviyo_relay_committed_offset", topic, "1") is None


def test_stats_of_another_client_or_a_producer_leave_series_alone() -> None:
    topic, client = f"stats-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    record_kafka_stats(_stats(client, {"0": {"desired": True, "consumer_lag": 9}}, topic))
    record_kafka_stats(_stats("other-consumer", {}, "unrelated-topic"))
    producer = orjson.loads(_stats("dlq-producer", {}, topic))
    producer["type"] = "producer"
    record_kafka_stats(orjson.dumps(producer).decode())
    assert _value("klaviyo_relay_consumer_lag_messages", topic, "0") == 9


@pytest.mark.parametrize("garbage", ["", "not json", "[]", '{"topics": null}'])
def test_malformed_stats_are_ignored(garbage: str) -> None:
    before = {
        (m.name, tuple(s.labels.items()), s.value)
        for m in (*CONSUMER_LAG.collect(), *COMMITTED_OFFSET.collect())
        for s in m.samples
    }
    record_kafka_stats(garbage)
    after = {
        (m.name, tuple(s.labels.items()), s.value)
        for m in (*CONSUMER_LAG.collect(), *COMMITTED_OFFSET.collect())
        for s in m.samples
    }
    assert after == before


@pytest.mark.kafka
def test_real_librdkafka_statistics_give_lag_and_committed_offset(
    kafka_broker: Any, topic_factory: Any
) -> None:
    from confluent_kafka import Consumer, Producer

    topic = topic_factory("stats")
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    for i in range(10):
        producer.produce(topic, value=b"x%d" % i)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap_servers,
            "group.id": f"stats-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "statistics.interval.ms": 200,
            "stats_cb": record_kafka_stats,
        }
    )
    try:
        consumer.subscribe([topic])
        taken: list[Any] = []
        deadline = time.monotonic() + 60
        while len(taken) < 4 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                taken.append(msg)
        assert len(taken) == 4, "did not receive 4 messages in time"
        consumer.commit(message=taken[-1], asynchronous=False)  # committed offset: 4
        consumer.pause(consumer.assignment())  # keep the rest unconsumed

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            consumer.poll(0.2)  # statistics callbacks are served from poll()
            lag = _value("klaviyo_relay_consumer_lag_messages", topic, "0")
            committed = _value("klaviyo_relay_committed_offset", topic, "0")
            if (lag, committed) == (6, 4):
                break
        assert (lag, committed) == (6, 4)
    finally:
        consumer.close()
