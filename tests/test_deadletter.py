"""Dead-letter records: original record + Kafka Connect error headers + relay headers, no
personal data in any header."""

from __future__ import annotations

from datetime import UTC, datetime

from consumer.codec import UnknownSchema
from consumer.handlers.errors import LimitViolation
from consumer.klaviyo.outcomes import KlaviyoError, Permanent
from consumer.pipeline.deadletter import (
    STAGE_DECODE,
    STAGE_HANDLE,
    Failure,
    build_dead_letter,
    class_name,
)
from consumer.pipeline.records import SourceRecord

NOW = datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)
RECORD = SourceRecord(
    topic="shop.order.placed",
    partition=3,
    offset=42,
    key=b"cust-1",
    value=b"\xc3\x01payload",
    timestamp_ms=1_700_000_000_123,
    headers=(
        ("trace-id", b"abc"),
        ("__connect.errors.stage", b"old"),
        ("klaviyo-relay.reason", b"x"),
    ),
)


def headers_of(letter_headers: tuple[tuple[str, bytes], ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in letter_headers:
        assert name not in out, f"header {name} written twice"
        out[name] = value.decode()
    return out


def test_decode_failure_keeps_the_original_record_and_adds_connect_headers() -> None:
    exc = UnknownSchema("no schema with fingerprint 0x1234")
    letter = build_dead_letter(RECORD, Failure.from_exception(STAGE_DECODE, exc.reason, exc, NOW))
    assert (letter.key, letter.value, letter.timestamp_ms) == (
        RECORD.key,
        RECORD.value,
        RECORD.timestamp_ms,
    )
    headers = headers_of(letter.headers)
    assert headers["trace-id"] == "abc"  # the producer's own headers survive
    assert headers["__connect.errors.topic"] == "shop.order.placed"
    assert headers["__connect.errors.partition"] == "3"
    assert headers["__connect.errors.offset"] == "42"
    assert headers["__connect.errors.stage"] == "decode"  # the stale copy was replaced
    assert headers["__connect.errors.class.name"] == "consumer.codec.UnknownSchema"
    assert "fingerprint" in headers["__connect.errors.exception.message"]
    assert headers["klaviyo-relay.reason"] == "unknown_schema"
    assert headers["klaviyo-relay.attempts"] == "1"
    assert headers["klaviyo-relay.first-failure"] == "2026-03-04T05:06:07.891Z"
    assert not any(name.startswith("klaviyo-relay.klaviyo.") for name in headers)
    assert "klaviyo-relay.endpoint" not in headers


def test_handler_rejection_names_the_field() -> None:
    exc = LimitViolation("string longer than 100 KB", field="/data/attributes/properties/Notes")
    failure = Failure.from_exception(STAGE_HANDLE, exc.reason, exc, NOW)
    headers = headers_of(build_dead_letter(RECORD, failure).headers)
    assert headers["__connect.errors.stage"] == "handle"
    assert headers["klaviyo-relay.reason"] == "limit_exceeded"
    assert "/data/attributes/properties/Notes" in headers["__connect.errors.exception.message"]


def test_klaviyo_rejection_carries_status_code_pointer_but_not_the_detail() -> None:
    error = KlaviyoError(
        status=400,
        code="invalid",
        title="Invalid input.",
        detail="'jane.doe@shopmail.io' is not a valid phone number +1 555 010 2030",
        pointer="/data/attributes/profile/data/attributes/phone_number",
    )
    outcome = Permanent(status=400, errors=(error,), attempts=2)
    failure = Failure.from_klaviyo(outcome, "create_event", NOW)
    headers = headers_of(build_dead_letter(RECORD, failure).headers)
    assert headers["__connect.errors.stage"] == "send"
    assert headers["__connect.errors.class.name"] == "consumer.klaviyo.outcomes.Permanent"
    assert headers["klaviyo-relay.reason"] == "klaviyo_rejected"
    assert headers["klaviyo-relay.klaviyo.status"] == "400"
    assert headers["klaviyo-relay.klaviyo.code"] == "invalid"
    assert headers["klaviyo-relay.klaviyo.pointer"] == error.pointer
    assert headers["klaviyo-relay.attempts"] == "2"
    assert headers["klaviyo-relay.endpoint"] == "create_event"
    joined = " ".join(headers.values())
    assert "shopmail" not in joined and "555" not in joined


def test_messages_are_one_redacted_line() -> None:
    exc = ValueError("bad value for jane@shopmail.io\non line two, call +44 20 7946 0958")
    failure = Failure.from_exception(STAGE_HANDLE, "invalid_event", exc, NOW)
    assert "\n" not in failure.message
    assert "shopmail" not in failure.message and "7946" not in failure.message
    assert failure.class_name == "builtins.ValueError" == class_name(exc)


def test_bulk_item_error_picks_that_items_error() -> None:
    first = KlaviyoError(status=400, code="invalid", pointer="/data/attributes/x/data/0")
    second = KlaviyoError(status=400, code="too_long", pointer="/data/attributes/x/data/1")
    outcome = Permanent(status=400, errors=(first, second))
    failure = Failure.from_klaviyo(outcome, "bulk_create_events", NOW, second)
    assert failure.klaviyo_code == "too_long"
    assert failure.klaviyo_pointer == second.pointer
