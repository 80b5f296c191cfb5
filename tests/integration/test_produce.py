"""``produce``: plain JSON lines in, Avro on Kafka out, keyed by customer id."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Message

from consumer.cli import cli
from consumer.codec import Decoder
from consumer.plain_json import from_plain_json
from consumer.schemas import SchemaStore
from consumer.settings import Settings
from consumer.topics import CONTRACT_TOPICS, event_key
from dev.kafka_broker import KafkaBroker
from dev.sample_events import sample
from tests.conftest import TopicFactory
from tests.fixtures.contract import EXAMPLES_DIR, example

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
WAIT_SECONDS = 90.0
# Nothing listens here: the tests that use it must fail before any connection is tried.
NO_BROKER = "127.0.0.1:1"


def _jsonl(path: Path, events: list[dict[str, Any]], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + extra)
    return path


def _produce(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
    return CliRunner().invoke(cli, ["produce", *args], env=env, input=stdin, catch_exceptions=False)


def test_event_key_is_the_customer_lead_or_top_level_id() -> None:
    assert event_key({"customer": {"customer_id": "c1"}, "order": {}}) == "c1"
    assert (
        event_key({"lead": {"customer_id": "l1"}, "representative": {"customer_id": "r"}}) == "l1"
    )
    assert event_key({"customer_id": "c2", "old_email": "a", "new_email": "b"}) == "c2"
    with pytest.raises(ValueError, match="no customer"):
        event_key({"event_id": "x"})


def test_every_contract_topic_has_an_example_and_a_key() -> None:
    if not EXAMPLES_DIR.is_dir():
        pytest.skip(f"{EXAMPLES_DIR} is absent (needs ../shared next to the repo)")
    assert sorted(p.stem for p in EXAMPLES_DIR.glob("*.json")) == sorted(CONTRACT_TOPICS)
    store = SchemaStore.load(SCHEMAS)
    for topic, record in CONTRACT_TOPICS.items():
        datum = from_plain_json(record, example(topic), store)
        assert event_key(datum).startswith("cust-")


def test_invalid_line_names_line_and_field(tmp_path: Path) -> None:
    good = example("shop.order.placed")
    bad = json.loads(json.dumps(good))
    bad["order"]["total"] = "12.345"
    source = _jsonl(tmp_path / "in.jsonl", [good, bad])
    result = _produce(
        "--topic", "shop.order.placed", "--input", str(source), "--bootstrap", NO_BROKER
    )
    assert result.exit_code != 0
    assert "line 2: order.total" in result.output
    assert "decimal places" in result.output


def test_broken_json_line(tmp_path: Path) -> None:
    source = _jsonl(tmp_path / "in.jsonl", [example("shop.account.created")], extra="{nope\n")
    result = _produce(
        "--topic", "shop.account.created", "--input", str(source), "--bootstrap", NO_BROKER
    )
    assert result.exit_code != 0
    assert "line 2:" in result.output


def test_reads_stdin() -> None:
    result = _produce(
        "--topic",
        "shop.account.created",
        "--input",
        "-",
        "--bootstrap",
        NO_BROKER,
        stdin="\n[1]\n",
    )
    assert result.exit_code != 0
    assert "line 2: expected a JSON object" in result.output


def test_unknown_topic_needs_record(tmp_path: Path) -> None:
    source = _jsonl(tmp_path / "in.jsonl", [example("shop.account.created")])
    result = _produce("--topic", "elsewhere", "--input", str(source), "--bootstrap", NO_BROKER)
    assert result.exit_code == 2
    assert "--record" in result.output


def _consume(bootstrap: str, topic: str, count: int) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"produce-test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    received: list[Message] = []
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        while len(received) < count:
            assert time.monotonic() < deadline, f"got {len(received)} of {count} in time"
            message = consumer.poll(timeout=1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            received.append(message)
    finally:
        consumer.close()
    return received


def _orders(n: int) -> list[dict[str, Any]]:
    events = []
    for i in range(n):
        event = example("shop.order.placed")
        event["event_id"] = str(uuid.uuid4())
        event["customer"]["customer_id"] = f"cust-{i % 2}"
        event["order"]["order_id"] = f"order-{i}"
        events.append(event)
    return events


@pytest.mark.kafka
@pytest.mark.parametrize("registry", [None, "mock://produce-kafka"], ids=["single-object", "sr"])
def test_produce_then_consume_gives_the_same_events(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path, registry: str | None
) -> None:
    topic = topic_factory("produce")
    events = _orders(5)
    source = _jsonl(tmp_path / "orders.jsonl", events)
    env = {"SCHEMA_REGISTRY_URL": registry} if registry else {"SCHEMA_REGISTRY_URL": ""}
    result = _produce(
        "--topic",
        topic,
        "--record",
        "OrderPlaced",
        "--input",
        str(source),
        "--bootstrap",
        kafka_broker.bootstrap_servers,
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"produced 5 events to {topic}"

    decoder = Decoder.from_settings(Settings(schema_registry_url=registry or None))
    messages = _consume(kafka_broker.bootstrap_servers, topic, len(events))
    values = [m.value() or b"" for m in messages]
    assert all(v[:1] == (b"\x00" if registry else b"\xc3") for v in values)
    decoded = [decoder.decode(v) for v in values]
    store = SchemaStore.load(SCHEMAS)
    assert [d.datum for d in decoded] == [
        from_plain_json("shop.events.OrderPlaced", e, store) for e in events
    ]
    assert [m.key() for m in messages] == [e["customer"]["customer_id"].encode() for e in events]


# --- the first hour: documents as well as lines, and a clear failure when Kafka is not there ---


def _sample_event(topic: str) -> dict[str, Any]:
    found = next(r.event for r in sample(datetime.now(UTC), 1) if r.topic == topic and r.event)
    assert isinstance(found, dict)
    return found


@pytest.mark.kafka
def test_pretty_printed_document_is_one_event(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    topic = topic_factory("produce-doc")
    event = _sample_event("shop.order.placed")
    source = tmp_path / "event.json"
    source.write_text(json.dumps(event, indent=2) + "\n")
    result = _produce(
        "--topic", topic, "--record", "OrderPlaced", "--input", str(source),
        "--bootstrap", kafka_broker.bootstrap_servers,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"produced 1 events to {topic}"
    [message] = _consume(kafka_broker.bootstrap_servers, topic, 1)
    decoded = Decoder.from_settings(Settings()).decode(message.value() or b"")
    assert decoded.datum["event_id"] == event["event_id"]


@pytest.mark.kafka
def test_contract_examples_are_accepted_as_they_are(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory
) -> None:
    for contract_topic in ("shop.order.placed", "shop.account.password-reset-requested"):
        path = EXAMPLES_DIR / f"{contract_topic}.json"
        if not path.is_file():
            pytest.skip(f"{path} is absent (needs ../shared next to the repo)")
        topic = topic_factory("produce-example")
        result = _produce(
            "--topic", topic, "--record", CONTRACT_TOPICS[contract_topic], "--input", str(path),
            "--bootstrap", kafka_broker.bootstrap_servers,
        )  # fmt: skip
        assert result.exit_code == 0, result.output


def test_broken_document_says_both_readings(tmp_path: Path) -> None:
    source = tmp_path / "event.json"
    source.write_text('{\n  "event_id": "x",\n  nope\n}\n')
    result = _produce(
        "--topic", "shop.account.created", "--input", str(source), "--bootstrap", NO_BROKER
    )
    assert result.exit_code != 0
    assert "neither a JSON document" in result.output and "nor JSON Lines (line 1:" in result.output


def test_unreachable_broker_fails_naming_the_address(tmp_path: Path) -> None:
    source = tmp_path / "event.json"
    source.write_text(json.dumps(_sample_event("shop.account.created")))
    # A subprocess, as a user runs it: librdkafka writes its own lines to the real stderr.
    result = subprocess.run(
        [sys.executable, "-m", "consumer", "produce", "--topic", "shop.account.created",
         "--input", str(source), "--bootstrap", NO_BROKER],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: cannot reach {NO_BROKER} within 10s")
    assert len(result.stderr.splitlines()) == 1, result.stderr  # no librdkafka lines


@pytest.mark.kafka
def test_missing_topic_says_how_to_create_it(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    source = tmp_path / "event.json"
    source.write_text(json.dumps(_sample_event("shop.account.created")))
    missing = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    result = _produce(
        "--topic", missing, "--record", "AccountCreated", "--input", str(source),
        "--bootstrap", kafka_broker.bootstrap_servers,
    )  # fmt: skip
    assert result.exit_code == 1
    assert f"topic(s) {missing} do not exist" in result.output
    assert "python -m consumer topics create" in result.output
