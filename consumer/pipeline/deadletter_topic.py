"""Is the dead-letter topic there and writable, and how large a record does it take?

Asked before the relay starts and by ``check``: a relay whose dead letters cannot be written
holds every poison record's partition until someone notices, so a missing or read-only topic
stops the start-up with a message naming ``DLQ_TOPIC`` and the fix instead. Blocking
(``confluent_kafka``'s admin client, every call with a timeout): callers on the event loop run
it in a thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, TopicCollection

# Documented as confluent_kafka.admin's API, imported there without an explicit re-export.
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclOperation,
    AdminClient,
    ConfigResource,
    ResourceType,
)

from consumer.settings import Settings

# librdkafka's default ``message.max.bytes``: the producer refuses larger records.
LIBRDKAFKA_MESSAGE_MAX_BYTES = 1_000_000

# librdkafka reports every refused connection; the probe's result says it once.
_QUIET = logging.getLogger("consumer.pipeline.deadletter_topic.kafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False

_WRITE = frozenset((AclOperation.WRITE, AclOperation.ALL))


class DeadLetterTopicUnusable(RuntimeError):
    """The topic is missing or may not be written: the message names DLQ_TOPIC and the fix."""


class DeadLetterTopicUnchecked(RuntimeError):
    """Kafka did not answer in time: nothing is known about the topic."""


@dataclass(frozen=True, slots=True)
class DeadLetterTopicInfo:
    topic: str
    partitions: int | None  # None: not checked
    producer_max_bytes: int
    topic_max_bytes: int | None  # the topic's max.message.bytes; None when it cannot be read

    @property
    def max_bytes(self) -> int:
        """The largest dead letter both the producer and the topic accept."""
        if self.topic_max_bytes is None:
            return self.producer_max_bytes
        return min(self.producer_max_bytes, self.topic_max_bytes)

    @classmethod
    def unchecked(cls, settings: Settings) -> DeadLetterTopicInfo:
        return cls(settings.dlq_topic, None, producer_max_bytes(settings), None)


def producer_max_bytes(settings: Settings) -> int:
    """``message.max.bytes`` as the producer is configured (KAFKA_EXTRA_CONFIG may set it)."""
    configured = settings.kafka_client_config().get("message.max.bytes")
    try:
        return int(configured) if configured is not None else LIBRDKAFKA_MESSAGE_MAX_BYTES
    except ValueError:
        return LIBRDKAFKA_MESSAGE_MAX_BYTES


def probe_dead_letter_topic(settings: Settings, timeout: float) -> DeadLetterTopicInfo:
    """Describe ``DLQ_TOPIC`` (with this client's authorised operations) and read its
    ``max.message.bytes``; raises :class:`DeadLetterTopicUnusable` when it is missing or not
    writable, :class:`DeadLetterTopicUnchecked` when Kafka does not answer within ``timeout``."""
    topic = settings.dlq_topic
    admin = AdminClient({**settings.kafka_client_config()}, logger=_QUIET)
    futures = admin.describe_topics(
        TopicCollection([topic]), request_timeout=timeout, include_authorized_operations=True
    )
    try:
        description = futures[topic].result(timeout=timeout + 5)
    except KafkaException as exc:
        raise _topic_error(topic, exc.args[0]) from None
    except TimeoutError:
        raise DeadLetterTopicUnchecked(f"Kafka did not answer within {timeout:g}s") from None
    operations = description.authorized_operations
    if operations is not None and not _WRITE.intersection(operations):
        raise DeadLetterTopicUnusable(
            f"DLQ_TOPIC={topic}: this client may not write to it; grant its principal Write"
            " (and Describe) on the topic, or set DLQ_TOPIC to a topic it may write"
        )
    limit = _max_bytes(admin, topic, timeout)
    return DeadLetterTopicInfo(
        topic, len(description.partitions), producer_max_bytes(settings), limit
    )


def _topic_error(topic: str, error: KafkaError) -> Exception:
    code = error.code()
    if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
        return DeadLetterTopicUnusable(
            f"DLQ_TOPIC={topic}: the topic does not exist; create it (retention and ACLs as in"
            " docs/operations.md) or set DLQ_TOPIC to an existing topic"
        )
    if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        return DeadLetterTopicUnusable(
            f"DLQ_TOPIC={topic}: not authorised to describe the topic; grant this client's"
            " principal Describe and Write on it"
        )
    return DeadLetterTopicUnchecked(f"cannot describe DLQ_TOPIC={topic}: {error.str()}")


def _max_bytes(admin: AdminClient, topic: str, timeout: float) -> int | None:
    """The topic's ``max.message.bytes``, or None (no DescribeConfigs right, no answer)."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        configs = admin.describe_configs([resource], request_timeout=timeout)[resource].result(
            timeout=timeout + 5
        )
        return int(configs["max.message.bytes"].value)
    except (KafkaException, TimeoutError, KeyError, TypeError, ValueError):
        return None
