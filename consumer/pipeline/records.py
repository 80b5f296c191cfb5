"""The pipeline's own copy of a Kafka record: plain data, so everything after the source can be
tested without a broker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consumer.headers import H_BACKFILL, Headers


@dataclass(frozen=True, slots=True)
class SourceRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None  # the record's timestamp (CreateTime for our producers)
    headers: Headers = ()

    @classmethod
    def from_message(cls, message: Any) -> SourceRecord:
        """Copy a ``confluent_kafka.Message`` (which must not carry an error)."""
        kind, timestamp = message.timestamp()
        return cls(
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            key=message.key(),
            value=message.value(),
            # TIMESTAMP_NOT_AVAILABLE is 0; keep None rather than a fake epoch.
            timestamp_ms=timestamp if kind != 0 else None,
            headers=tuple((name, value or b"") for name, value in (message.headers() or ())),
        )

    @property
    def backfill(self) -> bool:
        """Set by ``dlq replay`` on records old enough that flows must not fire again."""
        return any(
            name == H_BACKFILL and value.strip().lower() == b"true" for name, value in self.headers
        )

    @property
    def where(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"
