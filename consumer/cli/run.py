"""``run``: relay Kafka events to Klaviyo until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import sys

import click

from consumer.cli import settings_from
from consumer.cli.preflight import preflight
from consumer.klaviyo.token_store import TokenStoreError
from consumer.observability.health import OperationsPortError
from consumer.observability.logging import configure_logging
from consumer.pipeline.relay import Relay
from consumer.settings import SettingsError

# Young-generation collections: every event allocates hundreds of short-lived dicts and
# lists (datum, request bodies, bulk entries), so with Python's default of 700 the collector
# ran several times per event and re-scanned the in-flight events each time. At 10,000 the
# relay used about 30% less CPU for the same events (batch mode, 100,000 events).
_GC_YOUNG_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """Collect the youngest generation less often (see _GC_YOUNG_THRESHOLD); the older
    generations keep their defaults. Process-wide, so here: the process's one job is the relay."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, _GC_YOUNG_THRESHOLD), middle, old)


@click.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Relay Kafka events to Klaviyo; exits 0 after a clean stop (SIGTERM/SIGINT)."""
    settings = settings_from(ctx)
    # The same checks as `check`'s config line: one line per problem, never a traceback.
    problems = preflight(settings)
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(2)
    configure_logging(settings)
    try:
        relay = Relay(settings)
    except (SettingsError, ValueError, TokenStoreError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    tune_garbage_collector()
    try:
        sys.exit(asyncio.run(relay.run()))
    except OperationsPortError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
