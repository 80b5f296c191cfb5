"""The load generator: N realistic events on the contract's topics, produced fast.

Encoding is not what is measured, so events are *pre-encoded*: a pool of templates (every
topic of the contract, weighted like a shop's traffic, one customer each, so keys are mixed)
is built once from :mod:`dev.sample_events`, each encoded with a placeholder ``event_id`` and
``occurred_at``. Producing an event copies a template's bytes and patches those two fields in
place:

- ``event_id`` (a UUID string, always 36 characters) becomes ``<run prefix><counter>``, a valid
  and unique UUID per event. It is the ``unique_id`` Klaviyo deduplicates on, so every produced
  event is a new event for the sandbox too.
- ``occurred_at`` (``timestamp-millis``: a zig-zag varint, 6 bytes for any date between 1970
  and 2039) becomes the produce time, so the end-to-end delay starts when the event entered
  Kafka.

Both patches keep the length, so the Avro body stays valid; :meth:`LoadGenerator.self_check`
decodes patched values to prove it.
"""

from __future__ import annotations

import copy
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Producer

from consumer.codec import Decoder, Encoder
from consumer.handlers.registry import HandlerRegistry
from consumer.klaviyo.requests import Endpoint
from consumer.plain_json import from_plain_json
from consumer.rfc3339 import format_rfc3339
from consumer.schemas import default_schemas_dir, load_store
from consumer.settings import load_settings
from consumer.topics import CONTRACT_TOPICS
from dev.sample_events import sample

# A shop's traffic: orders and shipments dominate, email changes are rare.
TOPIC_WEIGHTS: dict[str, int] = {
    "shop.order.placed": 20,
    "shop.order.shipment-updated": 20,
    "shop.order.invoice-created": 8,
    "shop.order.payment-failed": 4,
    "shop.account.created": 10,
    "shop.account.updated": 10,
    "shop.account.email-changed": 2,
    "shop.account.password-reset-requested": 6,
    "shop.lead.captured": 10,
    "shop.lead.assigned": 10,
}
_VARINT_BYTES = 6  # zig-zag varint of epoch milliseconds from mid-1970 to 2039


def zigzag_varint(value: int) -> bytes:
    """Avro's encoding of a ``long``."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Template:
    topic: str
    key: bytes
    value: bytes
    id_at: int  # offset of the 36-byte event_id string
    time_at: int  # offset of the 6-byte occurred_at varint
    klaviyo_events: int  # Create Event requests the relay makes for it
    requests: int  # Klaviyo requests of any kind it makes


class LoadGenerator:
    def __init__(self, customers: int = 2000, seed: int = 11) -> None:
        rng = random.Random(seed)
        self._store = load_store(default_schemas_dir())
        encoder = Encoder(self._store)
        settings = load_settings(klaviyo_api_key="pk_bench")
        registry = HandlerRegistry.from_settings(settings)
        decoder = Decoder.from_settings(settings)
        now = datetime.now(UTC)
        examples = _examples(now)
        topics = list(TOPIC_WEIGHTS)
        weights = [TOPIC_WEIGHTS[t] for t in topics]
        self.templates: list[Template] = []
        for k in range(customers):
            topic = rng.choices(topics, weights)[0]
            plain = _personalise(copy.deepcopy(rng.choice(examples[topic])), k, now)
            placeholder = str(uuid.uuid4())
            stamp = now - timedelta(minutes=1)
            plain["event_id"] = placeholder
            plain["occurred_at"] = format_rfc3339(stamp, timespec="milliseconds")
            datum = from_plain_json(CONTRACT_TOPICS[topic], plain, self._store)
            value = encoder.encode(CONTRACT_TOPICS[topic], datum)
            millis = zigzag_varint(int(stamp.timestamp() * 1000))
            assert len(millis) == _VARINT_BYTES
            id_at, time_at = _only(value, placeholder.encode()), _only(value, millis)
            plan = registry.plan(topic, decoder.decode(value), now)
            creates = sum(r.endpoint is Endpoint.CREATE_EVENT for r in plan.requests)
            self.templates.append(
                Template(
                    topic, _customer(k).encode(), value, id_at, time_at, creates, len(plan.requests)
                )
            )
        # A fresh run prefix: ids never repeat across runs on the same sandbox or topics.
        self._prefix = str(uuid.uuid4())[:24].encode()
        self._counter = 0
        self._decoder = decoder

    @property
    def klaviyo_events_per_event(self) -> float:
        return sum(t.klaviyo_events for t in self.templates) / len(self.templates)

    def events(self, count: int, clock: Callable[[], float] = time.time) -> Iterator[Produced]:
        """``count`` events cycling through the pool, stamped with ``clock()`` (seconds)."""
        templates, pool = self.templates, len(self.templates)
        last_ms, stamp = -1, b""
        for _ in range(count):
            template = templates[self._counter % pool]
            ms = int(clock() * 1000)
            if ms != last_ms:
                last_ms, stamp = ms, zigzag_varint(ms)
            value = bytearray(template.value)
            value[template.id_at : template.id_at + 36] = self._prefix + b"%012x" % self._counter
            value[template.time_at : template.time_at + _VARINT_BYTES] = stamp
            self._counter += 1
            yield Produced(template.topic, template.key, bytes(value), template.klaviyo_events)

    def self_check(self, samples: int = 50) -> None:
        """Decode patched events: every id unique and well-formed, times the produce time."""
        before = time.time()
        seen = set()
        for event in self.events(samples):
            datum = self._decoder.decode(event.value).datum
            uuid.UUID(str(datum["event_id"]))
            seen.add(datum["event_id"])
            occurred = datum["occurred_at"].timestamp()
            assert before - 1 <= occurred <= time.time() + 1, "occurred_at patch is wrong"
        assert len(seen) == samples, "event ids repeat"


@dataclass(frozen=True, slots=True)
class Produced:
    topic: str
    key: bytes
    value: bytes
    klaviyo_events: int


@dataclass
class ProduceReport:
    events: int = 0
    klaviyo_events: int = 0
    seconds: float = 0.0


def producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
            "compression.type": "lz4",
        }
    )


def produce(
    gen: LoadGenerator, bootstrap: str, count: int, *, rate: float | None = None
) -> ProduceReport:
    """Produce ``count`` events as fast as possible, or at ``rate`` events/s (paced, so each
    event's occurred_at is when it was produced)."""
    out = producer(bootstrap)
    report = ProduceReport()
    errors: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    began = time.monotonic()
    for event in gen.events(count):
        if rate is not None:
            due = began + report.events / rate
            wait = due - time.monotonic()
            if wait > 0:
                out.poll(wait)
        while True:
            try:
                out.produce(event.topic, event.value, event.key, on_delivery=on_delivery)
                break
            except BufferError:
                out.poll(0.1)
        report.events += 1
        report.klaviyo_events += event.klaviyo_events
        if report.events % 10_000 == 0:
            out.poll(0)
    left = out.flush(120)
    if left or errors:
        raise RuntimeError(f"produce failed: {left} unacknowledged, errors {errors[:3]}")
    report.seconds = time.monotonic() - began
    return report


def _only(haystack: bytes, needle: bytes) -> int:
    at = haystack.find(needle)
    if at < 0 or haystack.find(needle, at + 1) >= 0:
        raise ValueError("placeholder not found exactly once in the encoded template")
    return at


def _customer(k: int) -> str:
    return f"bench-{k:06d}"


def _examples(now: datetime) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {topic: [] for topic in CONTRACT_TOPICS}
    for seed in range(3):
        for record in sample(now, per_topic=8, seed=seed):
            if record.planted is None and record.event is not None:
                out[record.topic].append(record.event)
    return out


def _personalise(plain: dict[str, Any], k: int, now: datetime) -> dict[str, Any]:
    """One bench customer per template: own id, email and (valid, unique) phone number, so the
    sandbox keeps one profile per key and no two customers merge."""
    customer = _customer(k)
    email = f"{customer}@shopmail.io"
    phone = f"+1 617 {200 + k // 10_000} {k % 10_000:04d}"
    for holder in ("customer", "lead"):
        person = plain.get(holder)
        if isinstance(person, dict):
            person.update(
                customer_id=customer, klaviyo_profile_id=None, email=email, phone_number=phone
            )
    if "old_email" in plain:  # the email change
        plain.update(
            customer_id=customer,
            klaviyo_profile_id=None,
            old_email=email,
            new_email=f"{customer}.new@shopmail.io",
        )
    if plain.get("expires_at") is not None:  # a reset link valid for the whole run
        plain["expires_at"] = format_rfc3339(now + timedelta(days=2), timespec="milliseconds")
    return plain
