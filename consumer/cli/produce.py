"""``produce``: publish plain-JSON events, Avro-encoded as the relay reads them.

The input is one JSON document (an event, pretty-printed or not: the contract's examples as
they are) or JSON Lines (one event per line). Every event is checked
before anything is sent, so a bad file publishes nothing.
"""

from __future__ import annotations

import sys
from typing import IO, Any

import click
import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.cli import settings_from
from consumer.cli.kafka import QUIET_KAFKA_LOG, require_topics
from consumer.codec import EncodeError, Encoder
from consumer.plain_json import InvalidEvent, from_plain_json
from consumer.schemas import SchemaStore
from consumer.settings import Settings
from consumer.topics import CONTRACT_TOPICS, event_key

_FLUSH_TIMEOUT_SECONDS = 60.0


def record_for(topic: str, record: str | None, settings: Settings, store: SchemaStore) -> str:
    """The record a topic carries: ``--record``, else TOPIC_HANDLERS, else the contract."""
    name = record or settings.topic_handlers.get(topic) or topic
    name = CONTRACT_TOPICS.get(name, name)
    for candidate in (name, f"shop.events.{name}"):
        if store.find_current(candidate) is not None:
            return candidate
    raise click.UsageError(f"no record known for topic {topic!r}; pass --record NAME")


def _documents(text: bytes) -> list[tuple[str, Any]]:
    """``(where, object)`` per event: the whole input as one JSON document, else JSON Lines."""
    whole_error: orjson.JSONDecodeError | None = None
    try:
        whole = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        whole_error = exc
    else:
        if isinstance(whole, dict):
            return [("event", whole)]
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            found.append((f"line {number}", orjson.loads(line)))
        except orjson.JSONDecodeError as exc:
            if not found and whole_error is not None:
                # Not even its first line parses: it may be a broken document; say both.
                raise click.ClickException(
                    f"neither a JSON document ({whole_error}) nor JSON Lines (line {number}: {exc})"
                ) from None
            raise click.ClickException(f"line {number}: {exc}") from None
    return found


def _events(source: IO[bytes], record_name: str, store: SchemaStore) -> list[dict[str, Any]]:
    datums = []
    for where, obj in _documents(source.read()):
        try:
            if not isinstance(obj, dict):
                raise InvalidEvent("expected a JSON object")
            datum = from_plain_json(record_name, obj, store)
            event_key(datum)
        except ValueError as exc:  # InvalidEvent is a ValueError
            raise click.ClickException(f"{where}: {exc}") from None
        datums.append(datum)
    return datums


@click.command()
@click.option("--topic", required=True, help="Topic to publish to.")
@click.option(
    "--input",
    "input_file",
    type=click.File("rb"),
    required=True,
    help="Plain-JSON events: one JSON document (an event or a list) or JSON Lines ('-' for stdin).",
)
@click.option(
    "--bootstrap", default=None, help="Kafka bootstrap servers [KAFKA_BOOTSTRAP_SERVERS]."
)
@click.option(
    "--record",
    default=None,
    help="Record name (e.g. OrderPlaced) for a topic that is not one of the contract's.",
)
@click.pass_context
def produce(
    ctx: click.Context, topic: str, input_file: IO[bytes], bootstrap: str | None, record: str | None
) -> None:
    """Encode plain-JSON events and publish them, keyed by customer id."""
    settings = settings_from(ctx)
    store = SchemaStore.from_settings(settings)
    record_name = record_for(topic, record, settings, store)
    datums = _events(input_file, record_name, store)

    encoder = Encoder.from_settings(settings)
    try:
        values = [encoder.encode(record_name, datum, topic=topic) for datum in datums]
    except EncodeError as exc:
        raise click.ClickException(str(exc)) from None

    config: dict[str, Any] = {**settings.kafka_client_config(), "enable.idempotence": True}
    if bootstrap:
        config["bootstrap.servers"] = bootstrap
    # Fail in seconds, naming the address, rather than after the flush timeout.
    require_topics(config, [topic])
    failures: list[str] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error.str())

    try:
        producer = Producer(config, logger=QUIET_KAFKA_LOG)
        for datum, value in zip(datums, values, strict=True):
            while True:
                try:
                    producer.produce(topic, value, event_key(datum).encode(), on_delivery=delivered)
                    break
                except BufferError:  # local queue full: let deliveries drain it
                    producer.poll(1.0)
            producer.poll(0)
        remaining = producer.flush(_FLUSH_TIMEOUT_SECONDS)
    except KafkaException as exc:
        raise click.ClickException(f"kafka: {exc}") from None
    if remaining or failures:
        reason = failures[0] if failures else "flush timed out"
        undelivered = remaining + len(failures)
        raise click.ClickException(f"{undelivered} of {len(values)} events not delivered: {reason}")
    click.echo(f"produced {len(values)} events to {topic}", file=sys.stdout)
