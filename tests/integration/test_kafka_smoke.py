"""The test broker is a real Kafka (a new consumer resumes at the group's last manual commit), and
a broker that cannot start says why instead of hanging."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

import dev.kafka_broker
from dev.kafka_broker import BrokerError, KafkaBroker
from tests.conftest import TopicFactory

N = 20
K = 7
WAIT_SECONDS = 60.0


def _consumer(bootstrap_servers: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )


def _consume(consumer: Consumer, count: int) -> list[Message]:
    """Poll until ``count`` messages arrived (poll blocks on the broker, no sleeping)."""
    received: list[Message] = []
    deadline = time.monotonic() + WAIT_SECONDS
    while len(received) < count:
        assert time.monotonic() < deadline, f"got {len(received)} of {count} messages in time"
        message = consumer.poll(timeout=1.0)
        if message is None:
            continue
        assert message.error() is None, message.error()
        received.append(message)
    return received


@pytest.mark.kafka
def test_new_consumer_resumes_after_last_manual_commit(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("smoke")
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers, "acks": "all"})
    failures: list[KafkaError] = []
    for i in range(N):
        producer.produce(
            topic,
            value=f"message-{i}".encode(),
            key=f"k{i}".encode(),
            on_delivery=lambda err, _msg: failures.append(err) if err else None,
        )
    assert producer.flush(timeout=WAIT_SECONDS) == 0
    assert failures == []

    group = f"{topic}-group"
    first = _consumer(kafka_broker.bootstrap_servers, group)
    first.subscribe([topic])
    everything = _consume(first, N)
    assert [m.value() for m in everything] == [f"message-{i}".encode() for i in range(N)]
    assert [m.offset() for m in everything] == list(range(N))
    # Commit "processed up to and including message K-1": the committed offset is the next one.
    first.commit(message=everything[K - 1], asynchronous=False)
    first.close()

    second = _consumer(kafka_broker.bootstrap_servers, group)
    try:
        [committed] = second.committed([TopicPartition(topic, 0)], timeout=WAIT_SECONDS)
        assert committed.offset == K
        second.subscribe([topic])
        rest = _consume(second, N - K)
        assert [m.value() for m in rest] == [f"message-{i}".encode() for i in range(K, N)]
        assert [m.key() for m in rest] == [f"k{i}".encode() for i in range(K, N)]
        # Nothing beyond N-1 exists, and nothing before K may come back.
        assert second.poll(timeout=1.0) is None
    finally:
        second.close()


@pytest.mark.kafka
def test_create_topics_makes_the_requested_partitions(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    topic = topic_factory("parts", partitions=3)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    metadata = producer.list_topics(topic, timeout=WAIT_SECONDS)
    assert sorted(metadata.topics[topic].partitions) == [0, 1, 2]


def test_missing_java_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(BrokerError, match="has no bin/java"):
        KafkaBroker.start(tmp_path / "work")


def test_missing_maven_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAFKA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match=r"Maven \(mvn\) is not on PATH"):
        dev.kafka_broker.fetch_jars()


def test_maven_failure_shows_its_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_mvn = tmp_path / "bin" / "mvn"
    fake_mvn.parent.mkdir()
    fake_mvn.write_text(
        "#!/bin/sh\necho '[ERROR] Failed to resolve org.apache.kafka:kafka_2.13'\nexit 1\n"
    )
    fake_mvn.chmod(0o755)
    monkeypatch.setenv("KAFKA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(fake_mvn.parent))
    with pytest.raises(BrokerError) as failure:
        dev.kafka_broker.fetch_jars()
    assert "mvn failed (exit 1)" in str(failure.value)
    assert "[ERROR] Failed to resolve org.apache.kafka:kafka_2.13" in str(failure.value)
    assert not (tmp_path / "cache" / "lib").exists()


@pytest.mark.kafka
def test_invalid_config_is_reported(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="Invalid value not-a-number") as failure:
        KafkaBroker.start(tmp_path, extra_config={"node.id": "not-a-number"})
    assert "formatting KRaft storage failed" in str(failure.value)


@pytest.mark.kafka
def test_port_taken_by_another_process_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Bound but not listening: the broker cannot bind the port, and nothing answers on it.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        free_port = dev.kafka_broker._free_port
        monkeypatch.setattr(
            dev.kafka_broker, "_free_port", lambda: next(ports, None) or free_port()
        )
        monkeypatch.setattr(dev.kafka_broker, "_PORT_ATTEMPTS", 1)
        with pytest.raises(BrokerError, match=f"port 127.0.0.1:{taken} is in use"):
            KafkaBroker.start(tmp_path, timeout=120)


def test_preferred_port_is_used_only_when_free() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert dev.kafka_broker._free_port(free) == free
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        taken = squatter.getsockname()[1]
        assert dev.kafka_broker._free_port(taken) != taken


def test_start_says_what_to_export(capsys: pytest.CaptureFixture[str]) -> None:
    dev.kafka_broker._print_export("127.0.0.1:9092")
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092"
    dev.kafka_broker._print_export("127.0.0.1:40123")
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "port 9092 was taken; point every command at this broker with:",
        "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:40123",
    ]
