"""The dead-letter topic: what a permanently failed record becomes, and the producer that
writes it.

A record is written with its original key, value, timestamp and headers plus Kafka Connect's
``__connect.errors.*`` headers (so Connect tooling reads it) and the relay's own
``klaviyo-relay.*`` headers. Messages are built from reason codes, field names, JSON pointers
and Klaviyo's code/title, then passed through the log redaction: a dead-letter topic is read by
people, and the payload is where personal data belongs, not the headers.

The source offset of a dead-lettered record is finished only when the broker acknowledged the
write (acks=all, idempotent producer): :meth:`DeadLetterProducer.send` returns then, never
earlier, and keeps trying while the broker refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Producer

from consumer.headers import (
    CONNECT_PREFIX,
    H_ATTEMPTS,
    H_CLASS,
    H_CODE,
    H_ENDPOINT,
    H_FIRST_FAILURE,
    H_MESSAGE,
    H_OFFSET,
    H_PARTITION,
    H_POINTER,
    H_REASON,
    H_STAGE,
    H_STATUS,
    H_TOPIC,
)
from consumer.klaviyo.outcomes import KlaviyoError, Permanent
from consumer.observability.logging import LibrdkafkaLogFilter, get_logger
from consumer.observability.redact import redact_text
from consumer.pipeline.records import Headers, SourceRecord
from consumer.settings import Settings

log = get_logger(__name__)
# librdkafka's own log lines (connection lost, broker down...), through our logging rather than
# raw to stderr; delivered by the poll thread's ``poll`` calls.
LIBRDKAFKA_LOG = logging.getLogger(f"{__name__}.librdkafka")
LIBRDKAFKA_LOG.addFilter(LibrdkafkaLogFilter())

STAGE_DECODE = "decode"
STAGE_HANDLE = "handle"
STAGE_SEND = "send"

# Relay headers this module writes; an older copy on the original record is replaced.
_WRITTEN_RELAY_HEADERS = frozenset(
    (H_REASON, H_STATUS, H_CODE, H_POINTER, H_ATTEMPTS, H_FIRST_FAILURE, H_ENDPOINT)
)
_MAX_MESSAGE = 500


def class_name(obj: object) -> str:
    """``module.Class`` of an exception or outcome, as Connect's ``class.name`` header wants."""
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _one_line(text: str) -> str:
    flat = " ".join(redact_text(text).split())
    return flat if len(flat) <= _MAX_MESSAGE else flat[: _MAX_MESSAGE - 1] + "…"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a record goes to the dead-letter topic."""

    stage: str  # decode | handle | send
    reason: str  # bounded code (see interfaces: "Dead-letter records")
    class_name: str
    message: str
    first_failure: datetime
    attempts: int = 1
    klaviyo_status: int | None = None
    klaviyo_code: str | None = None
    klaviyo_pointer: str | None = None
    endpoint: str | None = None

    @classmethod
    def from_exception(cls, stage: str, reason: str, exc: BaseException, now: datetime) -> Failure:
        """A decode error or a handler's rejection (their messages name fields, not values)."""
        field = getattr(exc, "field", None)
        text = f"{reason}: {exc}"
        if field and field not in text:
            text += f" (field {field})"
        return cls(stage, reason, class_name(exc), _one_line(text), now)

    @classmethod
    def from_klaviyo(
        cls,
        outcome: Permanent,
        endpoint: str,
        now: datetime,
        error: KlaviyoError | None = None,
    ) -> Failure:
        """Klaviyo refused the request (4xx); ``error`` picks one item's error of a bulk job."""
        error = error if error is not None else outcome.first
        status = error.status if error is not None and error.status else outcome.status
        parts = [f"Klaviyo {status}"]
        if error is not None:
            # Code and title are Klaviyo's fixed vocabulary; ``detail`` may quote the payload.
            parts += [p for p in (error.code, error.title) if p]
            if error.pointer:
                parts.append(f"at {error.pointer}")
            elif error.parameter:
                parts.append(f"parameter {error.parameter}")
        return cls(
            stage=STAGE_SEND,
            reason="klaviyo_rejected",
            class_name=class_name(outcome),
            message=_one_line(" ".join(parts)),
            first_failure=now,
            attempts=outcome.attempts,
            klaviyo_status=status,
            klaviyo_code=error.code if error is not None else None,
            klaviyo_pointer=error.pointer if error is not None else None,
            endpoint=endpoint,
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None
    headers: Headers


def build_dead_letter(record: SourceRecord, failure: Failure) -> DeadLetter:
    """``record``'s dead letter: original key, value, timestamp and headers + error headers."""
    error_headers: list[tuple[str, str]] = [
        (H_TOPIC, record.topic),
        (H_PARTITION, str(record.partition)),
        (H_OFFSET, str(record.offset)),
        (H_STAGE, failure.stage),
        (H_CLASS, failure.class_name),
        (H_MESSAGE, failure.message),
        (H_REASON, failure.reason),
        (H_ATTEMPTS, str(failure.attempts)),
        (H_FIRST_FAILURE, rfc3339(failure.first_failure)),
    ]
    optional = {
        H_STATUS: None if failure.klaviyo_status is None else str(failure.klaviyo_status),
        H_CODE: failure.klaviyo_code,
        H_POINTER: failure.klaviyo_pointer,
        H_ENDPOINT: failure.endpoint,
    }
    error_headers += [(k, v) for k, v in optional.items() if v is not None]
    kept = tuple(
        (name, value)
        for name, value in record.headers
        if not name.startswith(CONNECT_PREFIX) and name not in _WRITTEN_RELAY_HEADERS
    )
    return DeadLetter(
        key=record.key,
        value=record.value,
        timestamp_ms=record.timestamp_ms,
        headers=kept + tuple((name, value.encode()) for name, value in error_headers),
    )


class DeadLetterProducer:
    """Writes dead letters; ``send`` returns once the broker has acknowledged the record.

    Delivery reports arrive on this class's poll thread and are handed to the event loop with
    ``call_soon_threadsafe``.
    """

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self._topic = settings.dlq_topic
        self._loop = loop
        self._retry_base = settings.retry_base_seconds
        self._retry_cap = settings.retry_cap_seconds
        self._producer = Producer(
            {
                **settings.kafka_client_config(),
                "acks": "all",
                "enable.idempotence": "true",
                "linger.ms": "5",
                "client.id": f"{settings.kafka_group_id}-dlq",
                "logger": LIBRDKAFKA_LOG,
            }
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="dlq-producer", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    async def send(self, record: SourceRecord, failure: Failure) -> None:
        """Write the dead letter for ``record``; retries (with backoff) until acknowledged."""
        letter = build_dead_letter(record, failure)
        attempt = 0
        while True:
            error = await self._produce_once(letter)
            if error is None:
                return
            attempt += 1
            delay = min(self._retry_cap, self._retry_base * 2 ** min(attempt, 16))
            log.warning(
                "dead-letter write failed, retrying",
                topic=self._topic,
                source=record.where,
                error=str(error),
                retry_in=round(delay, 2),
            )
            await asyncio.sleep(delay)

    async def _produce_once(self, letter: DeadLetter) -> KafkaError | None:
        done: asyncio.Future[KafkaError | None] = self._loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            # librdkafka's thread: only hand the result over.
            # A closed loop means the process is exiting: the offset simply stays uncommitted.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_resolve, done, err)

        while True:
            try:
                self._producer.produce(
                    self._topic,
                    key=letter.key,
                    value=letter.value,
                    headers=list(letter.headers),
                    timestamp=letter.timestamp_ms or 0,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                # Local queue full: the poll thread drains it; give it a moment.
                await asyncio.sleep(0.05)
        return await done

    async def close(self, wait_seconds: float) -> int:
        """Wait (up to ``wait_seconds``) for outstanding writes, then release the producer;
        returns how many writes were left unconfirmed. Those are dropped: their source offsets
        were never committed, so the records are read (and dead-lettered) again."""
        left: int = await asyncio.to_thread(self._producer.flush, wait_seconds)
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 5.0)
        if left:
            self._producer.purge()  # Producer.close flushes, with no time limit of its own
        # Closed now, not whenever the object is collected: until then librdkafka keeps its
        # connections and threads, and logs losing them when the broker goes away later.
        await asyncio.to_thread(self._producer.close)
        return left


def _resolve(future: asyncio.Future[KafkaError | None], err: KafkaError | None) -> None:
    if not future.done():
        future.set_result(err)
