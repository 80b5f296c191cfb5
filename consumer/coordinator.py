"""Kafka errors that only mean a group's coordinator is loading or moving: asking again (after
a moment) answers. librdkafka does not always flag them retriable on an offset fetch (seen:
``NOT_COORDINATOR`` from ``Consumer.committed`` right after a member died)."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

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


def committed(consumer: Consumer, partitions: list[TopicPartition], seconds: float) -> Any:
    """``consumer.committed(partitions)``, asked again while the coordinator is moving, for up
    to ``seconds``; raises the last ``KafkaException`` otherwise. Blocking: call it off the loop."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return consumer.committed(partitions, timeout=seconds)
        except KafkaException as exc:
            if not coordinator_moving(exc.args[0]) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # a retry's backoff, not a synchronisation
