"""Helpers of the relay's integration tests: contract-shaped events, producing them, reading a
topic back, the relay's environment with the tests' settings, and the sandbox's fault API.

Running the relay and the sandbox as child processes, waiting and reading offsets is the
harness the demo and the bench share (:mod:`dev.harness`); its names are re-exported here so
that a test imports its helpers from one place."""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from confluent_kafka import OFFSET_BEGINNING, Message, Producer, TopicPartition

from consumer.codec import Encoder
from consumer.plain_json import from_plain_json
from consumer.schemas import default_schemas_dir, load_store
from consumer.topics import CONTRACT_TOPICS, event_key
from dev import harness
from dev.harness import (
    REPO,
    UNLIMITED_RATE_LIMITS,
    WAIT,
    RelayProcess,
    SandboxProcess,
    committed_offsets,
    end_offsets,
    inspector,
    partitions_of,
    rate_limits_json,
    sandbox_events,
    sandbox_stats,
    wait_for,
)

__all__ = [
    "UNLIMITED_RATE_LIMITS",
    "WAIT",
    "Event",
    "EventFactory",
    "RelayProcess",
    "SandboxProcess",
    "committed_offsets",
    "end_offsets",
    "headers_dict",
    "metrics_port",
    "produce",
    "produce_events",
    "read_all",
    "readiness",
    "relay_env",
    "sandbox_events",
    "sandbox_stats",
    "set_faults",
    "wait_committed_to_end",
    "wait_for",
]

EXAMPLES = REPO.parent / "shared" / "contract" / "examples"
metrics_port = RelayProcess.metrics_port


def contract_examples() -> dict[str, dict[str, Any]]:
    if not EXAMPLES.is_dir():
        pytest.skip(f"contract examples not found at {EXAMPLES}")
    return {path.stem: json.loads(path.read_text()) for path in sorted(EXAMPLES.glob("*.json"))}


@dataclass(frozen=True)
class Event:
    topic: str  # the test's topic (mapped to ``handler_topic``'s handler)
    handler_topic: str
    key: str
    event_id: str
    value: bytes


class EventFactory:
    """Contract-shaped events with fresh ids: one customer per key, stable profile per key (so
    bulk jobs keep a key's events in one profile entry), occurred_at = now."""

    def __init__(self) -> None:
        self._examples = contract_examples()
        self._store = load_store(default_schemas_dir())
        self._encoder = Encoder(self._store)

    def datum(self, handler_topic: str, key: str, seq: int) -> dict[str, Any]:
        plain = copy.deepcopy(self._examples[handler_topic])
        plain["event_id"] = str(uuid.uuid4())
        plain["occurred_at"] = _rfc3339(datetime.now(UTC))
        email = f"{key}@shopmail.io"
        for holder in ("customer", "lead"):
            if isinstance(plain.get(holder), dict):
                # No shared phone number: Klaviyo would merge the customers into one profile.
                plain[holder].update(
                    customer_id=key, klaviyo_profile_id=None, email=email, phone_number=None
                )
        if "customer_id" in plain:  # the email change
            plain.update(customer_id=key, klaviyo_profile_id=None, old_email=email, new_email=email)
        if isinstance(plain.get("order"), dict):
            plain["order"]["order_id"] = f"{key}-{seq}"
        if "expires_at" in plain:
            plain["expires_at"] = _rfc3339(datetime.now(UTC) + timedelta(days=1))
        return from_plain_json(CONTRACT_TOPICS[handler_topic], plain, self._store)

    def event(self, topic: str, handler_topic: str, key: str, seq: int) -> Event:
        datum = self.datum(handler_topic, key, seq)
        assert event_key(datum) == key
        value = self._encoder.encode(CONTRACT_TOPICS[handler_topic], datum)
        return Event(topic, handler_topic, key, datum["event_id"], value)

    def encode(self, handler_topic: str, datum: dict[str, Any]) -> bytes:
        return self._encoder.encode(CONTRACT_TOPICS[handler_topic], datum)


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def produce(
    bootstrap: str,
    records: Iterable[tuple[str, bytes | None, bytes | None]],
    headers: list[tuple[str, bytes]] | None = None,
    config: dict[str, str] | None = None,
) -> list[tuple[int, int]]:
    """Produce (topic, key, value) records in order, acks=all; returns each one's
    (partition, offset) once every one is acknowledged. ``config``: more producer settings."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            **(config or {}),
        }
    )
    errors: list[Any] = []
    placed: dict[int, tuple[int, int]] = {}

    def on_delivery(index: int) -> Callable[[Any, Message], None]:
        def report(err: Any, message: Message) -> None:
            if err:
                errors.append(err)
            else:
                placed[index] = (message.partition(), message.offset())

        return report

    count = 0
    for index, (topic, key, value) in enumerate(records):
        count += 1
        while True:
            try:
                producer.produce(
                    topic, key=key, value=value, headers=headers, on_delivery=on_delivery(index)
                )
                break
            except BufferError:
                producer.poll(0.5)
    assert producer.flush(WAIT) == 0, "records not acknowledged in time"
    assert errors == []
    return [placed[i] for i in range(count)]


def produce_events(bootstrap: str, events: Iterable[Event]) -> list[tuple[int, int]]:
    return produce(bootstrap, ((e.topic, e.key.encode(), e.value) for e in events))


# --- the relay subprocess ---------------------------------------------------------------------


def relay_env(
    bootstrap: str,
    base_url: str,
    topics: dict[str, str],
    group: str,
    dlq_topic: str,
    **overrides: str,
) -> dict[str, str]:
    """The harness's relay environment with the tests' settings; ``topics``: test topic →
    contract topic."""
    settings = {
        # A SIGKILLed member must leave the group fast for the crash tests.
        "KAFKA_EXTRA_CONFIG": json.dumps(
            {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}
        ),
        "TOPICS": json.dumps(sorted(topics)),
        "TOPIC_HANDLERS": json.dumps(topics),
        "RATE_LIMITS": rate_limits_json(UNLIMITED_RATE_LIMITS),
        "RETRY_MAX_ATTEMPTS": "2",
        "RETRY_BASE_SECONDS": "0.05",
        "RETRY_CAP_SECONDS": "0.5",
        "COMMIT_INTERVAL_SECONDS": "0.2",
        "DRAIN_TIMEOUT_SECONDS": "15",
    }
    return harness.relay_env(
        bootstrap, base_url, group=group, dlq_topic=dlq_topic, **{**settings, **overrides}
    )


# --- offsets and topics --------------------------------------------------------------------


async def wait_committed_to_end(
    bootstrap: str, group: str, topics: Iterable[str], produced: int
) -> dict[tuple[str, int], int]:
    """Wait until ``group`` has committed every partition of ``topics`` (holding ``produced``
    records in all) up to its end offset; returns the end offsets."""
    ends = await asyncio.to_thread(end_offsets, bootstrap, topics)
    assert sum(ends.values()) == produced

    def all_committed() -> bool:
        # A partition no record went to has nothing to commit.
        committed = committed_offsets(bootstrap, group, {topic for topic, _ in ends})
        return all(committed[tp] >= end for tp, end in ends.items() if end > 0)

    await wait_for(
        lambda: asyncio.to_thread(all_committed),
        what=f"group {group} committed up to the end offsets",
        interval=0.5,
    )
    return ends


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = WAIT) -> list[Message]:
    """Every record of ``topic`` (at least ``expected`` of them)."""
    consumer = inspector(bootstrap)
    # From the beginning, not from the (never) committed offsets: a fresh broker may answer
    # that lookup with NOT_COORDINATOR, and the consumer then never fetches.
    consumer.assign(
        [
            TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING)
            for tp in partitions_of(bootstrap, [topic])
        ]
    )
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected:
            assert time.monotonic() < deadline, f"only {len(out)} of {expected} records on {topic}"
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                out.append(message)
        # Anything beyond ``expected`` that is already there.
        while (message := consumer.poll(1.0)) is not None:
            if message.error() is None:
                out.append(message)
        return out
    finally:
        consumer.close()


def headers_dict(message: Message) -> dict[str, str]:
    return {name: (value or b"").decode() for name, value in (message.headers() or [])}


async def set_faults(base_url: str, faults: dict[str, Any]) -> None:
    """Change the sandbox's fault injection through its HTTP API."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}/_sandbox/faults", json=faults) as response,
    ):
        assert response.status == 200, await response.text()


async def readiness(port: int) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        body: dict[str, Any] = await response.json()
        body["status"] = response.status
        return body
