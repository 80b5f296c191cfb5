"""``run``: relay Kafka events to Klaviyo until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys

import click

from consumer.cli import settings_from
from consumer.observability.logging import configure_logging
from consumer.pipeline.relay import Relay
from consumer.settings import SettingsError


@click.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Relay Kafka events to Klaviyo; exits 0 after a clean stop (SIGTERM/SIGINT)."""
    settings = settings_from(ctx)
    configure_logging(settings)
    try:
        relay = Relay(settings)
    except (SettingsError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    sys.exit(asyncio.run(relay.run()))
