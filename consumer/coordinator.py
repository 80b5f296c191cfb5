"""Kafka errors that only mean a group's coordinator is loading or moving: asking again (after
a moment) answers. librdkafka does not always flag them retriable on an offset fetch (seen:
``NOT_COORDINATOR`` from ``Consumer.committed`` right after a member died)."""

from __future__ import annotations

from confluent_kafka import KafkaError

_MOVING = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
    }
)


def coordinator_moving(error: KafkaError) -> bool:
    """Whether asking again may answer."""
    return bool(error.retriable()) or error.code() in _MOVING
