"""``topics create``: make the source topics the relay reads and its dead-letter topic.

Idempotent: a topic that exists is reported and left as it is (its partitions and retention
are not changed). The topics are the ones ``run`` would consume (``TOPICS``, else every
contract topic) and ``DLQ_TOPIC``.
"""

from __future__ import annotations

import re
import sys
import time

import click
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.cimpl import NewTopic

from consumer.cli import settings_from
from consumer.cli.kafka import (
    KAFKA_TIMEOUT_SECONDS,
    KafkaUnreachable,
    admin_client,
    cluster_metadata,
    wait_for_leaders,
)
from consumer.cli.preflight import source_topics
from consumer.settings import SettingsError

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_retention(text: str) -> int:
    """``7d``, ``36h``, ``90m``, ``3600s``, ``500ms`` or ``forever`` → retention.ms (-1: keep)."""
    if text == "forever":
        return -1
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text.strip())
    if match is None or int(match.group(1)) == 0:
        raise click.BadParameter(f"{text!r}: expected e.g. 7d, 36h, 90m or forever")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _retention(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    try:
        return parse_retention(value)
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message) from None


@click.group()
def topics() -> None:
    """Create the topics the relay needs (source topics and dead-letter topic)."""


@topics.command()
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Partitions of each source topic (the relay's parallelism across pods).",
)
@click.option(
    "--dlq-partitions",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Partitions of the dead-letter topic.",
)
@click.option(
    "--replication-factor",
    type=click.IntRange(min=-1),
    default=-1,
    show_default=True,
    help="Replicas of each partition; -1 uses the brokers' default.replication.factor.",
)
@click.option(
    "--retention",
    callback=_retention,
    default="7d",
    show_default=True,
    help="How long the source topics keep records (7d, 36h, forever).",
)
@click.option(
    "--dlq-retention",
    callback=_retention,
    default="14d",
    show_default=True,
    help="How long the dead-letter topic keeps records: long enough to inspect and replay.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=KAFKA_TIMEOUT_SECONDS,
    show_default=True,
    help="Seconds to wait for Kafka.",
)
@click.pass_context
def create(
    ctx: click.Context,
    *,
    partitions: int,
    dlq_partitions: int,
    replication_factor: int,
    retention: int,
    dlq_retention: int,
    timeout: float,
) -> None:
    """Create the source topics and DLQ_TOPIC; existing topics are left unchanged."""
    settings = settings_from(ctx)
    try:
        sources = source_topics(settings)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    servers = settings.kafka_bootstrap_servers
    wanted = {name: (partitions, retention) for name in sources}
    wanted[settings.dlq_topic] = (dlq_partitions, dlq_retention)
    deadline = time.monotonic() + timeout
    admin = admin_client(settings.kafka_client_config())
    try:
        existing = cluster_metadata(admin, servers, timeout).topics
    except KafkaUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    new = [
        NewTopic(
            name,
            num_partitions=count,
            replication_factor=replication_factor,
            config={"retention.ms": str(keep)},
        )
        for name, (count, keep) in wanted.items()
        if name not in existing
    ]
    for name in wanted:
        if name in existing:
            click.echo(f"exists  {name} ({len(existing[name].partitions)} partitions; unchanged)")
    failed = False
    created: list[str] = []
    if new:
        futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
        for name, future in futures.items():
            count, keep = wanted[name]
            try:
                future.result(timeout=max(deadline - time.monotonic(), 0.1))
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    click.echo(f"exists  {name} (created meanwhile; unchanged)")
                    continue
                failed = True
                click.echo(f"error: creating {name} on {servers} failed: {error.str()}", err=True)
                continue
            except TimeoutError:
                failed = True
                click.echo(f"error: creating {name} on {servers}: no answer in time", err=True)
                continue
            shown = "forever" if keep < 0 else _duration(keep)
            click.echo(f"created {name} ({count} partitions, retention {shown})")
            created.append(name)
    try:
        wait_for_leaders(admin, servers, created, deadline)
    except KafkaUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    if failed:
        sys.exit(1)


def _duration(ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if ms % _UNITS[unit] == 0:
            return f"{ms // _UNITS[unit]}{unit}"
    return f"{ms}ms"
