"""The start-up check of the dead-letter topic, on the answers a broker with ACLs gives (the
test broker has no authoriser): not authorised to describe, described but not writable, no
right to read its configuration."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

# Documented as confluent_kafka.admin's API, imported there without an explicit re-export.
from confluent_kafka.admin import AclOperation  # type: ignore[attr-defined]

from consumer.pipeline import deadletter_topic
from consumer.pipeline.deadletter_topic import (
    DeadLetterTopicInfo,
    DeadLetterTopicUnusable,
    probe_dead_letter_topic,
)
from consumer.settings import load_settings

SETTINGS = load_settings(dlq_topic="shop.dlq")


def settled(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)
    return future


class Description:
    def __init__(self, operations: list[AclOperation] | None) -> None:
        self.authorized_operations = operations
        self.partitions = [object(), object()]


class FakeAdmin:
    def __init__(self, described: Any, configs: Any) -> None:
        self.described = described
        self.configs = configs

    def describe_topics(self, _topics: Any, **_kw: Any) -> dict[str, Future[Any]]:
        return {"shop.dlq": settled(self.described)}

    def describe_configs(self, resources: list[Any], **_kw: Any) -> dict[Any, Future[Any]]:
        return {resources[0]: settled(self.configs)}


def probe(monkeypatch: pytest.MonkeyPatch, described: Any, configs: Any) -> DeadLetterTopicInfo:
    admin = FakeAdmin(described, configs)
    monkeypatch.setattr(deadletter_topic, "AdminClient", lambda *_a, **_kw: admin)
    return probe_dead_letter_topic(SETTINGS, 1.0)


class Entry:
    def __init__(self, value: str) -> None:
        self.value = value


def test_not_authorised_to_describe(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    with pytest.raises(DeadLetterTopicUnusable, match=r"DLQ_TOPIC=shop\.dlq: not authorised"):
        probe(monkeypatch, refused, {})


def test_described_but_not_writable(monkeypatch: pytest.MonkeyPatch) -> None:
    readable = Description([AclOperation.READ, AclOperation.DESCRIBE])
    with pytest.raises(DeadLetterTopicUnusable, match="may not write to it; grant its principal"):
        probe(monkeypatch, readable, {})


def test_writable_with_its_own_limit_or_the_producers(monkeypatch: pytest.MonkeyPatch) -> None:
    writable = Description([AclOperation.DESCRIBE, AclOperation.WRITE])
    info = probe(monkeypatch, writable, {"max.message.bytes": Entry("200000")})
    assert (info.partitions, info.topic_max_bytes, info.max_bytes) == (2, 200_000, 200_000)
    # No DescribeConfigs right: the producer's limit alone.
    no_configs = KafkaException(KafkaError(KafkaError.CLUSTER_AUTHORIZATION_FAILED))
    info = probe(monkeypatch, Description(None), no_configs)
    assert (info.topic_max_bytes, info.max_bytes) == (None, 1_000_000)
    # Never below what librdkafka accepts as message.max.bytes.
    assert DeadLetterTopicInfo("t", 1, 1_000_000, 10).max_bytes == 1_000
