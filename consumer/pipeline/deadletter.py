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
import hashlib
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from consumer.errors import Reason
from consumer.headers import (
    CONNECT_PREFIX,
    H_ATTEMPTS,
    H_CLASS,
    H_CODE,
    H_ENDPOINT,
    H_FIRST_FAILURE,
    H_MESSAGE,
    H_OFFSET,
    H_OMITTED,
    H_ORIGINAL_REASON,
    H_ORIGINAL_SIZE,
    H_ORIGINAL_TIMESTAMP,
    H_PARTITION,
    H_POINTER,
    H_REASON,
    H_STAGE,
    H_STATUS,
    H_TOPIC,
    H_VALUE_SHA256,
    H_VALUE_TRUNCATED,
    Headers,
)
from consumer.observability.logging import LibrdkafkaLogFilter, get_logger
from consumer.observability.metrics import DEAD_LETTER_WRITE_FAILURES
from consumer.pipeline.deadletter_topic import (
    DeadLetterTopicInfo,
    DeadLetterTopicUnchecked,
    probe_dead_letter_topic,
)
from consumer.pipeline.failure import Failure
from consumer.pipeline.records import SourceRecord
from consumer.rfc3339 import format_rfc3339
from consumer.settings import Settings

log = get_logger(__name__)
# librdkafka's own log lines (connection lost, broker down...), through our logging rather than
# raw to stderr; delivered by the poll thread's ``poll`` calls.
LIBRDKAFKA_LOG = logging.getLogger(f"{__name__}.librdkafka")
LIBRDKAFKA_LOG.addFilter(LibrdkafkaLogFilter())

# Relay headers this module writes; an older copy on the original record is replaced.
_WRITTEN_RELAY_HEADERS = frozenset(
    (
        H_REASON,
        H_STATUS,
        H_CODE,
        H_POINTER,
        H_ATTEMPTS,
        H_FIRST_FAILURE,
        H_ENDPOINT,
        H_ORIGINAL_TIMESTAMP,
        H_ORIGINAL_REASON,
        H_ORIGINAL_SIZE,
        H_VALUE_SHA256,
        H_VALUE_TRUNCATED,
        H_OMITTED,
    )
)
# Bytes a record takes beyond its key, value and headers' names and values: librdkafka's
# worst-case record framing plus the batch header, rounded up generously.
_RECORD_FRAMING = 256
_HEADER_FRAMING = 10  # the two varint lengths of one header


@dataclass(frozen=True, slots=True)
class OutgoingDeadLetter:
    """A dead letter about to be written; read back by the tools it is a
    :class:`consumer.tools.deadletters.ParkedRecord`. Its Kafka timestamp is left to the
    producer: the time it is parked."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    reason: str

    @property
    def size(self) -> int:
        """Bytes on the wire, over-estimated: what the producer's and the topic's limits see."""
        return (
            _RECORD_FRAMING
            + len(self.key or b"")
            + len(self.value or b"")
            + _headers_size(self.headers)
        )


def _headers_size(headers: Headers) -> int:
    return sum(len(name.encode()) + len(value) + _HEADER_FRAMING for name, value in headers)


def _encoded(headers: list[tuple[str, str]]) -> Headers:
    return tuple((name, value.encode()) for name, value in headers)


def _error_headers(record: SourceRecord, failure: Failure) -> list[tuple[str, str]]:
    error_headers: list[tuple[str, str]] = [
        (H_TOPIC, record.topic),
        (H_PARTITION, str(record.partition)),
        (H_OFFSET, str(record.offset)),
        (H_STAGE, failure.stage),
        (H_CLASS, failure.class_name),
        (H_MESSAGE, failure.message),
        (H_REASON, failure.reason),
        (H_ATTEMPTS, str(failure.attempts)),
        (H_FIRST_FAILURE, format_rfc3339(failure.first_failure, timespec="milliseconds")),
    ]
    optional = {
        H_STATUS: None if failure.klaviyo_status is None else str(failure.klaviyo_status),
        H_CODE: failure.klaviyo_code,
        H_POINTER: failure.klaviyo_pointer,
        H_ENDPOINT: failure.endpoint,
        H_ORIGINAL_TIMESTAMP: None
        if record.timestamp_ms is None
        else format_rfc3339(
            datetime.fromtimestamp(record.timestamp_ms / 1000, UTC), timespec="milliseconds"
        ),
    }
    return error_headers + [(k, v) for k, v in optional.items() if v is not None]


def _original_headers(record: SourceRecord) -> Headers:
    return tuple(
        (name, value)
        for name, value in record.headers
        if not name.startswith(CONNECT_PREFIX) and name not in _WRITTEN_RELAY_HEADERS
    )


def build_dead_letter(
    record: SourceRecord, failure: Failure, max_bytes: int | None = None
) -> OutgoingDeadLetter:
    """``record``'s dead letter: original key, value and headers + error headers, or, when that
    is over ``max_bytes``, a ``too_large`` marker (:func:`build_marker`)."""
    letter = OutgoingDeadLetter(
        key=record.key,
        value=record.value,
        headers=_original_headers(record) + _encoded(_error_headers(record, failure)),
        reason=failure.reason,
    )
    if max_bytes is None or letter.size <= max_bytes:
        return letter
    return build_marker(record, failure, max_bytes)


def build_marker(record: SourceRecord, failure: Failure, max_bytes: int) -> OutgoingDeadLetter:
    """A ``too_large`` marker for a record whose dead letter would be over ``max_bytes``.

    It keeps the error headers (reason ``too_large``, the first reason in ``original-reason``),
    the value's size and SHA-256 and, as room allows, the key, the original headers and a prefix
    of the value; ``value-truncated`` says whether a prefix is kept or none (absent: the whole
    value is there), ``omitted`` names other parts left out. Given too little room it still
    comes out, with nothing optional.
    """
    value = record.value or b""
    fixed = [
        (name, Reason.TOO_LARGE if name == H_REASON else text)
        for name, text in _error_headers(record, failure)
    ] + [
        (H_ORIGINAL_REASON, failure.reason),
        (H_ORIGINAL_SIZE, str(len(value))),
        (H_VALUE_SHA256, hashlib.sha256(value).hexdigest()),
    ]
    # Sized as if everything optional were left out, so the headers saying so always fit.
    worst = [(H_VALUE_TRUNCATED, "dropped"), (H_OMITTED, "headers,key")]
    room = max_bytes - _RECORD_FRAMING - _headers_size(_encoded(fixed + worst))
    omitted: list[str] = []
    key = record.key
    if key is not None and len(key) > room:
        key = None
        omitted.append("key")
    room -= len(key or b"")
    kept = _original_headers(record)
    if _headers_size(kept) > room:
        kept = ()
        omitted.insert(0, "headers")
    room -= _headers_size(kept)
    prefix = value[: max(room, 0)]
    if len(prefix) < len(value):
        fixed.append((H_VALUE_TRUNCATED, "prefix" if prefix else "dropped"))
    if omitted:
        fixed.append((H_OMITTED, ",".join(omitted)))
    return OutgoingDeadLetter(key, prefix, kept + _encoded(fixed), Reason.TOO_LARGE)


class DeadLetterProducer:
    """Writes dead letters; ``send`` returns once the broker has acknowledged the record.

    Delivery reports arrive on this class's poll thread and are handed to the event loop with
    ``call_soon_threadsafe``. A write the broker refuses (topic deleted, not authorised, broker
    down) is tried again with backoff, counted in ``DEAD_LETTER_WRITE_FAILURES``, and never
    given up: its event stays unfinished, so its offset is not committed.
    """

    def __init__(
        self,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        topic: DeadLetterTopicInfo | None = None,
    ) -> None:
        self._topic = settings.dlq_topic
        self._loop = loop
        self._retry_base = settings.retry_base_seconds
        self._retry_cap = settings.retry_cap_seconds
        self._max_bytes = (topic or DeadLetterTopicInfo.unchecked(settings)).max_bytes
        self._producer = Producer(
            {
                **settings.kafka_client_config(),
                "acks": "all",
                "enable.idempotence": "true",
                "linger.ms": "5",
                # Batches too stay within what the topic takes.
                "message.max.bytes": str(self._max_bytes),
                "client.id": f"{settings.kafka_group_id}-dlq",
                "logger": LIBRDKAFKA_LOG,
            }
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="dlq-producer", daemon=True)
        self._thread.start()

    @classmethod
    async def open(
        cls, settings: Settings, loop: asyncio.AbstractEventLoop, check_seconds: float = 15.0
    ) -> DeadLetterProducer:
        """The producer for a dead-letter topic that was checked first: raises
        :class:`~consumer.pipeline.deadletter_topic.DeadLetterTopicUnusable` when it is missing
        or not writable. Kafka not answering is no reason not to start (the source waits for it
        too): the producer's own size limit is used then."""
        try:
            topic = await asyncio.to_thread(probe_dead_letter_topic, settings, check_seconds)
        except DeadLetterTopicUnchecked as exc:
            log.warning("dead-letter topic not checked", topic=settings.dlq_topic, error=str(exc))
            topic = DeadLetterTopicInfo.unchecked(settings)
        return cls(settings, loop, topic)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    async def send(self, record: SourceRecord, failure: Failure) -> str:
        """Write the dead letter for ``record`` (a ``too_large`` marker when it is over the size
        limit); retries with backoff until acknowledged. Returns the reason written."""
        max_bytes = self._max_bytes
        letter = build_dead_letter(record, failure, max_bytes)
        attempt = 0
        while True:
            error = await self._produce_once(letter)
            if error is None:
                return letter.reason
            if error.code() in _TOO_LARGE and max_bytes > 0:
                # Refused for its size all the same (the topic's limit was lowered since
                # start-up, or could not be read): a smaller marker, at once.
                max_bytes = min(max_bytes, letter.size) // 2
                letter = build_marker(record, failure, max_bytes)
                log.warning(
                    "dead letter refused as too large, writing a smaller marker",
                    source=record.where,
                    max_bytes=max_bytes,
                )
                continue
            DEAD_LETTER_WRITE_FAILURES.labels(error.name().lstrip("_").lower()).inc()
            attempt += 1
            delay = min(self._retry_cap, self._retry_base * 2 ** min(attempt, 16))
            log.warning(
                "dead-letter write failed, retrying",
                topic=self._topic,
                source=record.where,
                error=error.str(),
                retry_in=round(delay, 2),
            )
            await asyncio.sleep(delay)

    async def _produce_once(self, letter: OutgoingDeadLetter) -> KafkaError | None:
        done: asyncio.Future[KafkaError | None] = self._loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            # librdkafka's thread: only hand the result over.
            # A closed loop means the process is exiting: the offset simply stays uncommitted.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_resolve, done, err)

        while True:
            try:
                # No timestamp: the broker's record says when it was parked (the original one
                # is a header), so the topic's retention counts from parking.
                self._producer.produce(
                    self._topic,
                    key=letter.key,
                    value=letter.value,
                    headers=list(letter.headers),
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                # Local queue full: the poll thread drains it; give it a moment.
                await asyncio.sleep(0.05)
            except KafkaException as exc:
                # Refused before queueing (too large, unknown partition, producer failed).
                error: KafkaError = exc.args[0]
                return error
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


# Size refusals: librdkafka's own check and the broker's (record, or batch).
_TOO_LARGE = frozenset((KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE))


def _resolve(future: asyncio.Future[KafkaError | None], err: KafkaError | None) -> None:
    if not future.done():
        future.set_result(err)
