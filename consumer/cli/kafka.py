"""Kafka for the short commands (``check``, ``produce``, ``dlq``, ``topics``): fail within
seconds with one line naming the address, never with librdkafka's own lines.

librdkafka logs every refused connection (to stderr when no logger is given, and again through
the error callback); these commands look the cluster up once with a deadline and say what
failed instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import click
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._metadata import ClusterMetadata

KAFKA_TIMEOUT_SECONDS = 10.0

QUIET_KAFKA_LOG = logging.getLogger("consumer.cli.librdkafka")
QUIET_KAFKA_LOG.addHandler(logging.NullHandler())
QUIET_KAFKA_LOG.propagate = False


class KafkaUnreachable(Exception):
    """No broker answered before the deadline; the message names the address."""


def admin_client(config: dict[str, str]) -> AdminClient:
    return AdminClient(dict(config), logger=QUIET_KAFKA_LOG)


def cluster_metadata(admin: AdminClient, servers: str, timeout: float) -> ClusterMetadata:
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        error = exc.args[0]
        detail = error.str() if hasattr(error, "str") else str(error)
        raise KafkaUnreachable(
            f"cannot reach {servers} within {timeout:g}s ({detail});"
            " is KAFKA_BOOTSTRAP_SERVERS right?"
        ) from None


def missing_topics(metadata: ClusterMetadata, wanted: Iterable[str]) -> list[str]:
    return [t for t in wanted if t not in metadata.topics or metadata.topics[t].error]


def require_topics(
    config: dict[str, str], topics: Iterable[str], timeout: float = KAFKA_TIMEOUT_SECONDS
) -> None:
    """End the command (exit 1) unless the brokers answer and every topic exists."""
    servers = config["bootstrap.servers"]
    try:
        metadata = cluster_metadata(admin_client(config), servers, timeout)
    except KafkaUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    missing = missing_topics(metadata, topics)
    if missing:
        raise click.ClickException(
            f"topic(s) {', '.join(missing)} do not exist on {servers};"
            " create them with: python -m consumer topics create"
        )


def wait_for_leaders(admin: AdminClient, servers: str, topics: list[str], deadline: float) -> None:
    """Return once every partition of ``topics`` has a leader (a new topic takes a moment)."""
    while True:
        metadata = cluster_metadata(admin, servers, max(deadline - time.monotonic(), 0.1))
        waiting = missing_topics(metadata, topics) + [
            name
            for name in topics
            if name in metadata.topics
            and any(p.leader < 0 for p in metadata.topics[name].partitions.values())
        ]
        if not waiting:
            return
        if time.monotonic() >= deadline:
            raise KafkaUnreachable(f"topic(s) {', '.join(waiting)} have no leader yet on {servers}")
        time.sleep(0.2)
