"""``dlq inspect`` and ``dlq replay`` against the real broker, the real relay and the sandbox.

The commands run as an operator runs them (``python -m consumer dlq ...``, a subprocess); the
relay runs in this process so the tests can wait on its state.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from consumer.codec import Encoder
from consumer.errors import LimitViolation
from consumer.pipeline.deadletter import build_dead_letter
from consumer.pipeline.failure import Failure
from consumer.pipeline.records import SourceRecord
from consumer.plain_json import from_plain_json
from dev.kafka_broker import KafkaBroker
from dev.sample_events import Planted, SampleRecord, sample
from klaviyo_sandbox import running_sandbox
from tests.conftest import TopicFactory
from tests.fixtures.cli import run_cli
from tests.fixtures.dlq import (
    WAIT,
    Scenario,
    drained,
    end_offsets,
    make_scenario,
    relaying,
    sample_of,
    sandbox_options,
    set_faults,
)

pytestmark = pytest.mark.kafka

EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def publish(scenario: Scenario, records: Iterable[SampleRecord]) -> int:
    encoder = Encoder.from_settings(scenario.settings)
    producer = Producer(scenario.settings.kafka_client_config())
    count = 0
    for record in records:
        value = (
            encoder.encode(record.record, from_plain_json(record.record, record.event))
            if record.event is not None
            else record.raw_value
        )
        producer.produce(scenario.topics[record.topic], value, record.key.encode())
        count += 1
    assert producer.flush(30) == 0
    return count


def reason_of(line: str) -> str:
    found = re.search(r" reason=(\S+)", line)
    assert found is not None, line
    return found[1]


# --- inspect -----------------------------------------------------------------------------------


async def test_inspect_shows_why_each_kind_was_dead_lettered(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    async with running_sandbox(sandbox_options()) as sandbox:
        created, reset, invoice = (
            "shop.account.created",
            "shop.account.password-reset-requested",
            "shop.order.invoice-created",
        )
        scenario = make_scenario(
            kafka_broker, topic_factory, [created, reset, invoice], sandbox.base_url
        )
        garbage = next(r for r in sample(datetime.now(UTC)) if r.planted is Planted.UNDECODABLE)
        publish(
            scenario,
            [
                SampleRecord(created, garbage.key, garbage.record, None, garbage.raw_value),
                *sample_of(reset, Planted.EXPIRED),
                *sample_of(invoice, Planted.LIMIT_EXCEEDED),
                *sample_of(created),  # reaches Klaviyo, which refuses it
            ],
        )
        await set_faults(sandbox, {"error_rates": {"400": 1.0}})
        async with relaying(scenario):
            await drained(scenario)

    result = await scenario.acli("dlq", "inspect")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout
    by_reason = {reason_of(line): line for line in lines}
    assert set(by_reason) == {"bad_magic", "expired", "limit_exceeded", "klaviyo_rejected"}
    assert "stage=decode" in by_reason["bad_magic"]
    assert "undecodable (bad_magic)" in by_reason["bad_magic"]
    assert by_reason["bad_magic"].startswith(scenario.topics[created] + "/0/0 ")
    assert (
        "stage=handle" in by_reason["expired"] and "PasswordResetRequested" in by_reason["expired"]
    )
    assert "ItemNames" in by_reason["limit_exceeded"] or "Items" in by_reason["limit_exceeded"]
    assert "stage=send" in by_reason["klaviyo_rejected"]
    assert "klaviyo=400" in by_reason["klaviyo_rejected"]
    assert "klaviyo=-" in by_reason["expired"]
    # Decoded, but no personal data: emails masked, reset link not shown.
    assert "email=j***@s***.io" in by_reason["expired"]
    assert not EMAIL.search(result.stdout.replace("***@", "")), result.stdout
    assert "/reset/" not in result.stdout
    assert "4 dead letter(s)" in result.stderr and "not replayed yet: 4" in result.stderr

    limited = await scenario.acli("dlq", "inspect", "--limit", "1", "--reason", "expired")
    assert limited.returncode == 0, limited.stderr
    assert [reason_of(line) for line in limited.stdout.splitlines()] == ["expired"]


# --- replay ------------------------------------------------------------------------------------


async def test_replay_after_the_fix_delivers_exactly_once(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    placed = "shop.order.placed"
    async with running_sandbox(sandbox_options()) as sandbox:
        scenario = make_scenario(kafka_broker, topic_factory, [placed], sandbox.base_url)
        records = sample_of(placed, count=3)
        publish(scenario, records)
        await set_faults(sandbox, {"error_rates": {"400": 1.0}})  # Klaviyo refuses everything
        async with relaying(scenario):
            await drained(scenario)
            assert sandbox.state.events == []
            source_end = end_offsets(scenario, scenario.topics[placed])

            await set_faults(sandbox, {"error_rates": {}})  # the cause is fixed

            dry = await scenario.acli("dlq", "replay", "--dry-run")
            assert dry.returncode == 0, dry.stderr
            assert dry.stdout.count("would replay") == 3
            assert "nothing sent" in dry.stdout
            assert end_offsets(scenario, scenario.topics[placed]) == source_end

            first = await scenario.acli("dlq", "replay")
            assert first.returncode == 0, first.stderr
            assert "replayed 3 (0 with backfill)" in first.stdout
            assert end_offsets(scenario, scenario.topics[placed]) == source_end + 3
            await drained(scenario)

            second = await scenario.acli("dlq", "replay")
            assert second.returncode == 0, second.stderr
            assert "replayed 0" in second.stdout and "3 replayed before" in second.stdout
            assert end_offsets(scenario, scenario.topics[placed]) == source_end + 3
            await drained(scenario)

        # Each event exactly once: Placed Order + one Ordered Product per line item.
        events = [r.event for r in records if r.event is not None]
        expected = {e["event_id"] for e in events} | {
            f"{e['event_id']}:{n}" for e in events for n in range(len(e["order"]["items"]))
        }
        unique_ids = [e["unique_id"] for e in sandbox.state.events]
        assert sorted(unique_ids) == sorted(expected)
        assert all(e.get("duplicate_count", 0) == 0 for e in sandbox.state.events)
        assert sandbox.state.duplicates == 0

    after = await scenario.acli("dlq", "inspect")
    assert after.stdout.count("[replayed]") == 3
    assert "not replayed yet: 0" in after.stderr


def dead_letter(
    topic: str, offset: int, failure: Failure, created: datetime, value: bytes
) -> tuple[bytes | None, bytes | None, list[tuple[str, str | bytes | None]]]:
    """As the relay writes it: stamped when parked, the record's own time in a header."""
    source = SourceRecord(
        topic=topic,
        partition=0,
        offset=offset,
        key=f"cust-{offset}".encode(),
        value=value,
        timestamp_ms=int(created.timestamp() * 1000),
        headers=(("traceparent", f"trace-{offset}".encode()),),
    )
    letter = build_dead_letter(source, failure)
    return letter.key, letter.value, list(letter.headers)


async def test_replay_selects_keeps_the_rest_and_marks_old_events_backfill(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    """No relay: dead letters as the relay writes them, replayed by reason, then the rest."""
    created = "shop.account.created"
    scenario = make_scenario(kafka_broker, topic_factory, [created], backfill_after=3600)
    source = scenario.topics[created]
    now = datetime.now(UTC)
    limit = LimitViolation("array of more than 4000 items", field="/data/attributes/properties/x")
    kinds = [
        # (offset, reason, created): one old event, others recent
        (
            10,
            Failure.from_exception("handle", "limit_exceeded", limit, now),
            now - timedelta(hours=5),
        ),
        (11, Failure.from_exception("handle", "invalid_event", ValueError("bad"), now), now),
        (12, Failure.from_exception("handle", "limit_exceeded", limit, now), now),
    ]
    producer = Producer(scenario.settings.kafka_client_config())
    for offset, failure, at in kinds:
        key, value, headers = dead_letter(source, offset, failure, at, f"value-{offset}".encode())
        producer.produce(scenario.settings.dlq_topic, value, key, headers=headers)
    assert producer.flush(30) == 0

    first = await scenario.acli("dlq", "replay", "--reason", "limit_exceeded")
    assert first.returncode == 0, first.stderr
    assert "replayed 2 (1 with backfill); 0 replayed before, 1 not selected" in first.stdout
    replayed = read_all(scenario, source)
    assert [(m["key"], m["value"]) for m in replayed] == [
        (b"cust-10", b"value-10"),
        (b"cust-12", b"value-12"),
    ]
    old, recent = replayed
    assert old["headers"] == [
        ("traceparent", b"trace-10"),
        ("klaviyo-relay.replay-of", f"{source}/0/10".encode()),
        ("klaviyo-relay.backfill", b"true"),
    ]
    assert old["timestamp"] == int((now - timedelta(hours=5)).timestamp() * 1000)
    assert ("klaviyo-relay.backfill", b"true") not in recent["headers"]

    rest = await scenario.acli("dlq", "replay")
    assert rest.returncode == 0, rest.stderr
    assert "replayed 1 (0 with backfill); 2 replayed before, 0 not selected" in rest.stdout
    again = await scenario.acli("dlq", "replay")
    assert "replayed 0 (0 with backfill); 3 replayed before" in again.stdout
    assert [m["key"] for m in read_all(scenario, source)] == [b"cust-10", b"cust-12", b"cust-11"]


def read_all(scenario: Scenario, topic: str) -> list[dict[str, Any]]:
    end = end_offsets(scenario, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": scenario.env["KAFKA_BOOTSTRAP_SERVERS"],
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + WAIT
    try:
        while len(out) < end and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            out.append(
                {
                    "key": message.key(),
                    "value": message.value(),
                    "headers": message.headers() or [],
                    "timestamp": message.timestamp()[1],
                }
            )
    finally:
        consumer.close()
    return out


# --- the first hour: reasons a replay cannot fix, and unknown reasons ---------------------------


def test_unknown_reason_lists_the_valid_ones() -> None:
    for command in ("inspect", "replay"):
        result = run_cli("dlq", command, "--reason", "klaviyo_refused")
        assert result.returncode == 2
        assert "unknown reason klaviyo_refused; valid reasons: bad_magic," in result.stderr
        assert "klaviyo_rejected" in result.stderr


async def test_replay_skips_what_cannot_be_fixed_unless_asked(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    """Undecodable bytes and expired links fail again on replay: skipped, and said so."""
    created = "shop.account.created"
    scenario = make_scenario(kafka_broker, topic_factory, [created])
    source = scenario.topics[created]
    now = datetime.now(UTC)
    kinds = [
        (20, Failure.from_exception("decode", "bad_magic", ValueError("magic 0x7b"), now)),
        (21, Failure.from_exception("handle", "expired", ValueError("link expired"), now)),
        (22, Failure.from_exception("handle", "invalid_event", ValueError("bad"), now)),
    ]
    producer = Producer(scenario.settings.kafka_client_config())
    for offset, failure in kinds:
        key, value, headers = dead_letter(source, offset, failure, now, b"v")
        producer.produce(scenario.settings.dlq_topic, value, key, headers=headers)
    assert producer.flush(30) == 0

    first = await scenario.acli("dlq", "replay")
    assert first.returncode == 0, first.stderr
    assert "skipping 2 that a replay cannot fix (bad_magic 1, expired 1)" in first.stdout
    assert "replayed 1 (0 with backfill)" in first.stdout
    assert "2 skipped as unfixable" in first.stdout
    assert [m["key"] for m in read_all(scenario, source)] == [b"cust-22"]

    named = await scenario.acli("dlq", "replay", "--reason", "expired")
    assert "replayed 1 (0 with backfill)" in named.stdout, named.stdout + named.stderr
    rest = await scenario.acli("dlq", "replay", "--include-unfixable")
    assert "replayed 1 (0 with backfill); 2 replayed before" in rest.stdout, rest.stdout
    assert [m["key"] for m in read_all(scenario, source)] == [b"cust-22", b"cust-21", b"cust-20"]


def test_unreachable_kafka_is_one_line_naming_it() -> None:
    result = run_cli("dlq", "inspect", env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot reach 127.0.0.1:1 within 10s")
    assert len(result.stderr.splitlines()) == 1, result.stderr
