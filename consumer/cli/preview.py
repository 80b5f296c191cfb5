"""``preview``: the Klaviyo requests one event would become, printed, nothing contacted.

Reads one event in the contract's plain JSON form, validates it against the topic's record
schema, runs the handler with the current time and prints the plan as a JSON array. An invalid
or refused event ends with exit status 1 and a one-line reason on stderr.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import IO, NoReturn

import click
import orjson

from consumer.cli import settings_from
from consumer.codec import DecodedEvent
from consumer.errors import EventRejected, UnknownRecord
from consumer.handlers.registry import NAMESPACE, HandlerRegistry
from consumer.plain_json import InvalidEvent, from_plain_json
from consumer.schemas import SchemaStore
from consumer.settings import SettingsError


@click.command()
@click.option("--topic", required=True, help="Topic the event is published on.")
@click.option(
    "--input",
    "input_file",
    type=click.File("rb"),
    default="-",
    show_default="stdin",
    help="File holding one plain-JSON event.",
)
@click.option(
    "--record",
    default=None,
    help="Record name (e.g. PaymentFailed), for a topic that carries several.",
)
@click.pass_context
def preview(ctx: click.Context, topic: str, input_file: IO[bytes], record: str | None) -> None:
    """Print the Klaviyo requests for one event (nothing is sent)."""
    settings = settings_from(ctx)
    try:
        registry = HandlerRegistry.from_settings(settings)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    try:
        record_name = registry.record_for(topic) if record is None else _full_name(record)
    except UnknownRecord as exc:
        _fail(f"{exc}; known topics: {', '.join(registry.topics())}")
    try:
        obj = orjson.loads(input_file.read())
        if not isinstance(obj, dict):
            raise InvalidEvent("expected one JSON object")
        datum = from_plain_json(record_name, obj, SchemaStore.from_settings(settings))
        plan = registry.plan(topic, DecodedEvent(record_name, datum), datetime.now(UTC))
    except EventRejected as exc:
        _fail(f"event refused ({exc.reason}): {exc}")
    except (orjson.JSONDecodeError, InvalidEvent) as exc:
        _fail(f"invalid event: {exc}")
    for warning in plan.warnings:
        click.echo(f"warning: {warning.code} at {warning.field}", err=True)
    previews = [request.to_preview() for request in plan.requests]
    click.echo(orjson.dumps(previews, option=orjson.OPT_INDENT_2).decode())


def _full_name(record: str) -> str:
    return record if "." in record else f"{NAMESPACE}.{record}"


def _fail(reason: str) -> NoReturn:
    click.echo(f"error: {' '.join(reason.split())}", err=True)  # one line, whatever the cause
    sys.exit(1)
