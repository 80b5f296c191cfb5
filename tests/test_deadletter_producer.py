"""The dead-letter producer's lifecycle, against a broker that is not there: librdkafka's own
log lines go through our logging (not raw stderr), ``close`` releases the librdkafka handle
(nothing is logged or kept alive afterwards) and does not wait forever for writes no broker
will acknowledge."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from consumer.pipeline.deadletter import LIBRDKAFKA_LOG, DeadLetterProducer, Failure
from consumer.pipeline.records import SourceRecord
from consumer.settings import load_settings

WAIT = 60.0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
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
