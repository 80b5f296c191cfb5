"""The dead-letter producer's lifecycle, against a broker that is not there: librdkafka's own
log lines go through our logging (not raw stderr), ``close`` releases the librdkafka handle
(nothing is logged or kept alive afterwards) and does not wait forever for writes no broker
will acknowledge. With a stand-in producer: refusals are retried and counted, never raised, and
a size refusal gets a smaller marker."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from consumer.observability.metrics import REGISTRY
from consumer.pipeline import deadletter
from consumer.pipeline.deadletter import LIBRDKAFKA_LOG, DeadLetterProducer
from consumer.pipeline.failure import Failure
from consumer.pipeline.records import SourceRecord
from consumer.settings import load_settings

WAIT = 60.0


# Bound, never listening: a connection to its port is refused, and no other process of the test
# run (a broker, a sandbox) can take the port while the tests use it. A port merely picked and let
# go was taken by another listener once in a full run, and the "unacknowledged" write got an answer.
_HELD: list[socket.socket] = []


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _HELD.append(sock)
    port: int = sock.getsockname()[1]
    return port


def producer() -> DeadLetterProducer:
    settings = load_settings(
        kafka_bootstrap_servers=f"127.0.0.1:{closed_port()}",
        retry_base_seconds=0.05,
        retry_cap_seconds=0.1,
    )
    return DeadLetterProducer(settings, asyncio.get_running_loop())


async def until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def librdkafka_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LIBRDKAFKA_LOG.name]


async def test_librdkafka_logs_through_logging_and_close_releases_the_handle(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger=LIBRDKAFKA_LOG.name)
    dlq = producer()
    await until(lambda: librdkafka_records(caplog), "librdkafka to report the refused connection")
    assert any("Connection refused" in r.getMessage() for r in librdkafka_records(caplog))

    assert await asyncio.wait_for(dlq.close(1.0), WAIT) == 0
    # The handle is gone, not merely unused: librdkafka refuses any further call on it.
    with pytest.raises(RuntimeError, match="closed"):
        dlq._producer.produce("any", b"value")
    # Nothing of librdkafka's went to stderr unformatted ("%3|<time>|FAIL|...").
    assert "|FAIL|" not in capfd.readouterr().err


async def test_close_gives_up_on_writes_no_broker_acknowledges() -> None:
    dlq = producer()
    record = SourceRecord("shop.order.placed", 0, 7, b"k", b"v", None)
    failure = Failure("decode", "bad_magic", "x.BadMagic", "bad_magic", datetime.now(UTC))
    sending = asyncio.create_task(dlq.send(record, failure))
    await until(lambda: len(dlq._producer) == 1, "the write to be queued")
    sending.cancel()  # as the relay does at shutdown, before closing the producer
    started = time.monotonic()
    left = await asyncio.wait_for(dlq.close(0.2), WAIT)
    assert left == 1
    assert time.monotonic() - started < 30  # purged, not flushed until message.timeout.ms
    with pytest.raises(asyncio.CancelledError):
        await sending


class RefusingProducer:
    """Stands in for librdkafka's producer: ``verdict(value)`` says what becomes of a write
    (None: acknowledged; a KafkaError: a failed delivery report; a KafkaException: raised)."""

    def __init__(self, verdict: Callable[[bytes], KafkaError | KafkaException | None]) -> None:
        self.verdict = verdict
        self.written: list[bytes] = []

    def produce(self, _topic: str, *, on_delivery: Any, value: bytes, **_kw: Any) -> None:
        outcome = self.verdict(value)
        if isinstance(outcome, KafkaException):
            raise outcome
        if outcome is None:
            self.written.append(value)
        on_delivery(outcome, None)

    def poll(self, timeout: float) -> int:
        time.sleep(timeout)
        return 0

    def flush(self, _timeout: float) -> int:
        return 0

    def purge(self) -> None:
        pass

    def close(self) -> None:
        pass


def failures(error: str) -> float:
    value = REGISTRY.get_sample_value(
        "klaviyo_relay_dead_letter_write_failures_total", {"error": error}
    )
    return value or 0.0


async def with_fake(monkeypatch: pytest.MonkeyPatch, fake: RefusingProducer) -> DeadLetterProducer:
    monkeypatch.setattr(deadletter, "Producer", lambda _config: fake)
    return producer()


async def test_a_refusal_raised_by_produce_is_retried_and_counted_never_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refusals = [KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))] * 2
    fake = RefusingProducer(lambda _value: refusals.pop() if refusals else None)
    dlq = await with_fake(monkeypatch, fake)
    before = failures("unknown_partition")
    record = SourceRecord("shop.order.placed", 0, 7, b"k", b"v", None)
    failure = Failure("decode", "bad_magic", "x.BadMagic", "bad_magic", datetime.now(UTC))
    assert await asyncio.wait_for(dlq.send(record, failure), WAIT) == "bad_magic"
    await dlq.close(1.0)
    assert fake.written == [b"v"]
    assert failures("unknown_partition") == before + 2


async def test_a_letter_the_broker_refuses_as_too_large_is_written_as_a_smaller_marker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The topic's limit was lowered after start-up: the broker refuses more than 1,000 bytes.
    too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    fake = RefusingProducer(lambda value: too_large if len(value) > 1_000 else None)
    dlq = await with_fake(monkeypatch, fake)
    before = failures("msg_size_too_large")
    record = SourceRecord("shop.order.placed", 0, 7, b"k", b"x" * 5_000, None)
    failure = Failure("decode", "bad_magic", "x.BadMagic", "bad_magic", datetime.now(UTC))
    assert await asyncio.wait_for(dlq.send(record, failure), WAIT) == "too_large"
    await dlq.close(1.0)
    (written,) = fake.written
    assert 0 < len(written) <= 1_000 and written == b"x" * len(written)
    assert failures("msg_size_too_large") == before  # a size refusal is no write failure
