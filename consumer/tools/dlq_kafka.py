"""The Kafka side of the dead-letter tools: read a snapshot of the topic, read and commit the
replay group's progress, publish replays and wait for the broker to acknowledge them.

Blocking (``confluent_kafka``) on purpose: these are short operator commands, not the relay.
The replay group is ``<KAFKA_GROUP_ID>.dlq-replay``; partitions are assigned, never
subscribed, so reading never joins (or rebalances) the group, and only ``commit`` writes to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from consumer.coordinator import committed
from consumer.settings import Settings
from consumer.tools.deadletters import ParkedRecord, Replay
from consumer.tools.progress import PartitionProgress

# librdkafka logs every refused connection to stderr; these commands say once what failed.
_KAFKA_LOG = logging.getLogger("consumer.tools.kafka")
_KAFKA_LOG.addHandler(logging.NullHandler())
_KAFKA_LOG.propagate = False


class DeadLetterTopicError(RuntimeError):
    """The dead-letter topic cannot be read or the replay cannot be recorded; says why."""


def replay_group(settings: Settings) -> str:
    return f"{settings.kafka_group_id}.dlq-replay"


@dataclass(frozen=True, slots=True)
class Watermarks:
    low: int
    high: int  # next offset to be written


class DeadLetterTopic:
    """Reads ``settings.dlq_topic`` and the replay group's committed progress on it."""

    def __init__(self, settings: Settings, *, timeout: float = 30.0) -> None:
        self.topic = settings.dlq_topic
        self._timeout = timeout
        self._consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": replay_group(settings),
                "enable.auto.commit": "false",
                "enable.auto.offset.store": "false",
                "enable.partition.eof": "true",
                "auto.offset.reset": "earliest",
                "client.id": f"{settings.kafka_group_id}-dlq-tool",
            },
            logger=_KAFKA_LOG,
        )
        self.partitions = self._partitions()
        self.watermarks = {
            p: Watermarks(
                *self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=timeout
                )
            )
            for p in self.partitions
        }

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._consumer.close()

    def _partitions(self) -> list[int]:
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=self._timeout)
        except KafkaException as exc:
            raise DeadLetterTopicError(f"cannot reach Kafka: {exc.args[0]}") from None
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise DeadLetterTopicError(f"dead-letter topic {self.topic} does not exist")
        return sorted(topic.partitions)

    def topic_partitions(self, topics: Sequence[str]) -> dict[str, int]:
        """Partition count of each of ``topics`` that exists."""
        metadata = self._consumer.list_topics(timeout=self._timeout)
        return {
            name: len(metadata.topics[name].partitions)
            for name in topics
            if name in metadata.topics and metadata.topics[name].error is None
        }

    def progress(self) -> dict[int, PartitionProgress]:
        """The replay group's progress on every partition."""
        partitions = [TopicPartition(self.topic, p) for p in self.partitions]
        # A new group's coordinator may still be loading or moving: asked again meanwhile.
        return {
            tp.partition: PartitionProgress.from_commit(
                tp.offset, tp.metadata, self.watermarks[tp.partition].low
            )
            for tp in committed(self._consumer, partitions, self._timeout)
        }

    def read(self, starts: Mapping[int, int] | None = None) -> list[ParkedRecord]:
        """Every record from ``starts`` (default: the beginning) to the end as it was when this
        object was made, in partition/offset order."""
        wanted = {
            p: max(w.low, (starts or {}).get(p, w.low))
            for p, w in self.watermarks.items()
            if max(w.low, (starts or {}).get(p, w.low)) < w.high
        }
        if not wanted:
            return []
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in wanted.items()])
        letters: list[ParkedRecord] = []
        pending = set(wanted)
        deadline = time.monotonic() + self._timeout
        try:
            while pending:
                if time.monotonic() > deadline:
                    raise DeadLetterTopicError(
                        f"timed out reading {self.topic} (partitions {sorted(pending)} unread)"
                    )
                messages: list[Any] = self._consumer.consume(500, timeout=0.5)
                for message in messages:
                    partition = message.partition()
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.discard(partition)
                            continue
                        raise DeadLetterTopicError(f"cannot read {self.topic}: {error.str()}")
                    if message.offset() >= self.watermarks[partition].high:
                        pending.discard(partition)
                        continue
                    letters.append(_letter(message))
                    if message.offset() >= self.watermarks[partition].high - 1:
                        pending.discard(partition)
        finally:
            self._consumer.unassign()
        return sorted(letters, key=lambda dl: (dl.partition, dl.offset))

    def commit(self, progress: Mapping[int, PartitionProgress]) -> None:
        """Record the replay group's progress (synchronously: the replay is done only then)."""
        offsets = [
            TopicPartition(self.topic, partition, done.position, metadata=done.metadata())
            for partition, done in sorted(progress.items())
        ]
        if not offsets:
            return
        try:
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            raise DeadLetterTopicError(f"cannot commit replay progress: {exc.args[0]}") from None
        failed = [tp for tp in result or () if tp.error is not None]
        if failed:
            raise DeadLetterTopicError(f"cannot commit replay progress: {failed[0].error}")


def _letter(message: Any) -> ParkedRecord:
    kind, millis = message.timestamp()
    timestamp = (
        datetime.fromtimestamp(millis / 1000, UTC) if kind != TIMESTAMP_NOT_AVAILABLE else None
    )
    return ParkedRecord(
        partition=message.partition(),
        offset=message.offset(),
        key=message.key(),
        value=message.value(),
        timestamp=timestamp,
        headers=tuple((name, value or b"") for name, value in message.headers() or ()),
    )


def publish(
    settings: Settings, replays: Sequence[Replay], *, timeout: float = 60.0
) -> list[tuple[Replay, str | None]]:
    """Publish ``replays`` (idempotent producer, acks=all); each with its delivery error or
    None once the broker acknowledged it."""
    producer = Producer(
        {
            **settings.kafka_client_config(),
            "acks": "all",
            "enable.idempotence": "true",
            "client.id": f"{settings.kafka_group_id}-dlq-replay",
        },
        logger=_KAFKA_LOG,
    )
    results: dict[int, str | None] = {}

    def reporter(index: int) -> Any:
        def on_delivery(err: KafkaError | None, _message: Any) -> None:
            results[index] = err.str() if err is not None else None

        return on_delivery

    for index, replay in enumerate(replays):
        letter = replay.letter
        extra: dict[str, Any] = {}
        if replay.partition is not None:
            extra["partition"] = replay.partition
        original = letter.original_timestamp
        if original is not None:
            # The original CreateTime: the event's age (and so backfill) survives a second failure.
            extra["timestamp"] = round(original.timestamp() * 1000)
        headers: list[tuple[str, str | bytes | None]] = [*replay.headers]
        while True:
            try:
                producer.produce(
                    replay.topic,
                    key=letter.key,
                    value=letter.value,
                    headers=headers,
                    on_delivery=reporter(index),
                    **extra,
                )
                break
            except BufferError:
                producer.poll(0.5)
        producer.poll(0)
    left = producer.flush(timeout)
    return [
        (replay, results.get(index, "not acknowledged in time" if left else "no delivery report"))
        for index, replay in enumerate(replays)
    ]
