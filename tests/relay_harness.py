"""Shared helpers for the relay's integration tests: contract-shaped events, producing them, the
relay as a real subprocess, waiting on conditions, and reading a group's offsets."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from consumer.codec import Encoder
from consumer.plain_json import from_plain_json
from consumer.schemas import default_schemas_dir, load_store
from consumer.topics import CONTRACT_TOPICS, event_key

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO.parent / "shared" / "contract" / "examples"
WAIT = 120.0  # generous: other helpers run their tests on the same two cores

# No quota in the tests: the sandbox runs without limits and the relay must not throttle itself.
_UNLIMITED = {
    "burst": {"requests": 1_000_000, "seconds": 1},
    "steady": {"requests": 60_000_000, "seconds": 60},
}
UNLIMITED_RATE_LIMITS = json.dumps(
    {
        name: _UNLIMITED
        for name in (
            "create_event",
            "bulk_create_events",
            "update_profile",
            "create_or_update_profile",
            "get_profiles",
        )
    }
)


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
    """Environment for ``python -m consumer run``; ``topics``: test topic → contract topic."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "KLAVIYO_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        KAFKA_GROUP_ID=group,
        # A SIGKILLed member must leave the group fast for the crash tests.
        KAFKA_EXTRA_CONFIG=json.dumps(
            {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}
        ),
        TOPICS=json.dumps(sorted(topics)),
        TOPIC_HANDLERS=json.dumps(topics),
        DLQ_TOPIC=dlq_topic,
        KLAVIYO_BASE_URL=base_url,
        KLAVIYO_API_KEY="pk_sandbox",
        RATE_LIMITS=UNLIMITED_RATE_LIMITS,
        RETRY_MAX_ATTEMPTS="2",
        RETRY_BASE_SECONDS="0.05",
        RETRY_CAP_SECONDS="0.5",
        METRICS_PORT="0",
        COMMIT_INTERVAL_SECONDS="0.2",
        DRAIN_TIMEOUT_SECONDS="15",
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
    )
    env.update(overrides)
    return env


class RelayProcess:
    """``python -m consumer run`` as a child process, its log in a file."""

    def __init__(
        self, env: dict[str, str], log_path: Path, command: list[str] | None = None
    ) -> None:
        """``command`` replaces ``python -m consumer run`` (a wrapper that still runs it)."""
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            command or [sys.executable, "-m", "consumer", "run"],
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"message": raw})
        return lines

    def logged(self, message: str) -> bool:
        return any(line.get("message") == message for line in self.log_lines())

    def tail(self, lines: int = 30) -> str:
        """The log's last lines, for failure messages."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(WAIT)

    async def wait_exit(self, within: float = WAIT) -> int:
        deadline = time.monotonic() + within
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"relay did not exit within {within}s")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def stop(self) -> None:
        """Cleanup: make sure the child is gone."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT)
        self._log.close()


class SandboxProcess:
    """``python -m klaviyo_sandbox`` (no rate limits) as a child process, so that the test's
    own blocking calls (Kafka admin, offsets) never stall Klaviyo's stand-in."""

    def __init__(self, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.base_url = ""
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "klaviyo_sandbox",
                "--port",
                "0",
                "--rate-limits",
                "none",
                *args,
            ],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def started(self) -> str:
        """Wait for the listening line; the sandbox's base URL."""

        def listening() -> bool:
            assert self.process.poll() is None, self.log_path.read_text(errors="replace")
            for line in self.log_path.read_text(errors="replace").splitlines():
                if "listening on " in line:
                    self.base_url = line.rsplit("listening on ", 1)[1].strip()
                    return True
            return False

        await wait_for(listening, what="the sandbox to listen")
        return self.base_url

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(WAIT)
        self._log.close()


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    within: float = WAIT,
    what: str = "condition",
    interval: float = 0.1,
) -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


# --- offsets and topics --------------------------------------------------------------------


def _client(bootstrap: str, group: str | None = None) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or f"inspect-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )


def partitions_of(bootstrap: str, topics: Iterable[str]) -> list[TopicPartition]:
    consumer = _client(bootstrap)
    try:
        out = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=30).topics[topic]
            out += [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        return out
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    consumer = _client(bootstrap)
    try:
        return {
            (tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=30)[1]
            for tp in partitions_of(bootstrap, topics)
        }
    finally:
        consumer.close()


def committed_offsets(
    bootstrap: str, group: str, topics: Iterable[str]
) -> dict[tuple[str, int], int]:
    """The group's committed position per partition (-1001 when nothing is committed)."""
    consumer = _client(bootstrap, group)
    try:
        committed = consumer.committed(partitions_of(bootstrap, topics), timeout=30)
        return {(tp.topic, tp.partition): tp.offset for tp in committed}
    finally:
        consumer.close()


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
    consumer = _client(bootstrap)
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


async def sandbox_stats(base_url: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/_sandbox/stats") as response,
    ):
        result: dict[str, Any] = await response.json()
        return result


async def sandbox_events(base_url: str) -> list[dict[str, Any]]:
    """Every event the sandbox accepted, in the order it received them."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/_sandbox/events") as response,
    ):
        assert response.status == 200, await response.text()
        events: list[dict[str, Any]] = (await response.json())["data"]
        return events


async def readiness(port: int) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        body: dict[str, Any] = await response.json()
        body["status"] = response.status
        return body


def metrics_port(relay: RelayProcess) -> int | None:
    for line in relay.log_lines():
        if line.get("message") == "relay started":
            return int(line["metrics_port"])
    return None
