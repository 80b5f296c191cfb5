"""Dead-letter records: original record + Kafka Connect error headers + relay headers, no
personal data in any header."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime

from consumer.errors import LimitViolation, UnknownSchema
from consumer.klaviyo.outcomes import KlaviyoError, Permanent
from consumer.pipeline.deadletter import build_dead_letter, build_marker
from consumer.pipeline.failure import STAGE_DECODE, STAGE_HANDLE, Failure, class_name
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
    assert (letter.key, letter.value, letter.reason) == (RECORD.key, RECORD.value, "unknown_schema")
    headers = headers_of(letter.headers)
    # The letter is stamped when parked (by the producer); the record's own time is a header.
    assert headers["klaviyo-relay.original-timestamp"] == "2023-11-14T22:13:20.123Z"
    assert headers["trace-id"] == "abc"  # the producer's own headers survive
    assert headers["__connect.errors.topic"] == "shop.order.placed"
    assert headers["__connect.errors.partition"] == "3"
    assert headers["__connect.errors.offset"] == "42"
    assert headers["__connect.errors.stage"] == "decode"  # the stale copy was replaced
    assert headers["__connect.errors.class.name"] == "consumer.errors.UnknownSchema"
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


BIG = SourceRecord(
    topic="shop.order.placed",
    partition=0,
    offset=9,
    key=b"cust-9",
    value=bytes(range(256)) * 4_062 + b"tail",  # 1,039,876 bytes: the broker took it
    timestamp_ms=1_700_000_000_123,
    headers=(("trace-id", b"abc"), ("klaviyo-relay.value-truncated", b"stale")),
)
BAD_MAGIC = Failure("decode", "bad_magic", "consumer.errors.BadMagic", "bad_magic: x", NOW)


def test_a_letter_within_the_limit_is_written_whole() -> None:
    small = dataclasses.replace(BIG, value=b"v" * 1000)
    letter = build_dead_letter(small, BAD_MAGIC, 1_000_000)
    assert letter.value == small.value and letter.reason == "bad_magic"
    assert "klaviyo-relay.value-truncated" not in headers_of(letter.headers)


def test_an_oversized_record_becomes_a_marker_that_fits() -> None:
    assert build_dead_letter(BIG, BAD_MAGIC).value == BIG.value  # no limit given: as it is
    letter = build_dead_letter(BIG, BAD_MAGIC, 1_000_000)
    assert letter.reason == "too_large"
    assert 999_000 < letter.size <= 1_000_000  # as much of the value as fits
    assert letter.key == BIG.key
    assert BIG.value is not None and letter.value is not None
    assert BIG.value.startswith(letter.value) and len(letter.value) < len(BIG.value)
    headers = headers_of(letter.headers)
    assert headers["klaviyo-relay.reason"] == "too_large"
    assert headers["klaviyo-relay.original-reason"] == "bad_magic"
    assert headers["klaviyo-relay.original-size"] == str(len(BIG.value))
    assert headers["klaviyo-relay.value-sha256"] == hashlib.sha256(BIG.value).hexdigest()
    assert headers["klaviyo-relay.value-truncated"] == "prefix"  # the stale copy was replaced
    assert headers["klaviyo-relay.original-timestamp"] == "2023-11-14T22:13:20.123Z"
    assert headers["__connect.errors.offset"] == "9"
    assert headers["__connect.errors.stage"] == "decode"
    assert headers["trace-id"] == "abc"
    assert "klaviyo-relay.omitted" not in headers


def test_a_marker_with_no_room_keeps_only_what_says_what_it_was() -> None:
    letter = build_marker(BIG, BAD_MAGIC, 0)
    assert (letter.key, letter.value) == (None, b"")
    headers = headers_of(letter.headers)
    assert headers["klaviyo-relay.value-truncated"] == "dropped"
    assert headers["klaviyo-relay.omitted"] == "headers,key"
    assert "trace-id" not in headers
    assert headers["klaviyo-relay.value-sha256"] and headers["__connect.errors.topic"]
    # 40 bytes more: the key and the headers fit, and a few bytes of the value.
    roomy = build_marker(BIG, BAD_MAGIC, letter.size + 40)
    assert roomy.key == BIG.key and roomy.size <= letter.size + 40
    assert roomy.value is not None and 0 < len(roomy.value) < 40
    assert headers_of(roomy.headers)["trace-id"] == "abc"
    assert "klaviyo-relay.omitted" not in headers_of(roomy.headers)


def test_unexpected_exceptions_are_parked_masked() -> None:
    exc = ValueError("no zip for John Smith, 12 Baker Street: 'NW1 6XE' (+44 20 7946 0958)")
    failure = Failure.unexpected(STAGE_HANDLE, "invalid_event", exc, NOW)
    assert failure.class_name == "builtins.ValueError"
    assert failure.message.startswith("invalid_event: ValueError: no zip for J*** S***")
    for secret in ("John", "Smith", "Baker", "12", "NW1", "6XE", "7946"):
        assert secret not in failure.message
    keyed = Failure.unexpected(STAGE_HANDLE, "invalid_event", KeyError("jane@shopmail.io"), NOW)
    assert keyed.message == "invalid_event: KeyError: '***'"


def test_oversized_headers_are_left_out_and_the_value_kept_whole() -> None:
    noisy = dataclasses.replace(BIG, value=b"small", headers=(("trace", b"t" * 5_000),))
    letter = build_dead_letter(noisy, BAD_MAGIC, 2_000)
    assert letter.reason == "too_large" and letter.value == b"small" and letter.size <= 2_000
    headers = headers_of(letter.headers)
    assert headers["klaviyo-relay.omitted"] == "headers"
    assert "klaviyo-relay.value-truncated" not in headers and "trace" not in headers
