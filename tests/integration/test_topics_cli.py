"""``topics create``: the source topics and the dead-letter topic, on the real broker."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import orjson
import pytest

# Documented as confluent_kafka.admin's API, imported there without an explicit re-export.
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from consumer.cli.topics import parse_retention
from dev.kafka_broker import KafkaBroker
from tests.fixtures.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]


def topics_create(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("topics", "create", *args, env=env)


def test_retention_forms() -> None:
    assert parse_retention("7d") == 7 * 86_400_000
    assert parse_retention("36h") == 36 * 3_600_000
    assert parse_retention("500ms") == 500
    assert parse_retention("forever") == -1
    for bad in ("7", "0d", "1w", "-1d"):
        with pytest.raises(Exception, match="expected"):
            parse_retention(bad)


@pytest.mark.kafka
def test_creates_source_and_dead_letter_topics_once(kafka_broker: KafkaBroker) -> None:
    run = uuid.uuid4().hex[:8]
    sources = [f"topics-a-{run}", f"topics-b-{run}"]
    dlq = f"topics-dlq-{run}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
        "TOPICS": orjson.dumps(sources).decode(),
        "TOPIC_HANDLERS": orjson.dumps({t: "shop.order.placed" for t in sources}).decode(),
        "DLQ_TOPIC": dlq,
    }
    first = topics_create(env, "--partitions", "3", "--retention", "2d", "--dlq-retention", "30d")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        f"created {sources[0]} (3 partitions, retention 2d)",
        f"created {sources[1]} (3 partitions, retention 2d)",
        f"created {dlq} (1 partitions, retention 30d)",
    ]
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers})
    metadata = admin.list_topics(timeout=30)
    assert {t: len(metadata.topics[t].partitions) for t in [*sources, dlq]} == {
        sources[0]: 3,
        sources[1]: 3,
        dlq: 1,
    }
    resources = [ConfigResource("topic", t) for t in (sources[0], dlq)]
    retention = {
        resource.name: future.result(30)["retention.ms"].value
        for resource, future in admin.describe_configs(resources).items()
    }
    assert retention == {sources[0]: str(2 * 86_400_000), dlq: str(30 * 86_400_000)}

    again = topics_create(env, "--partitions", "5")
    assert again.returncode == 0, again.stderr
    assert all(line.startswith("exists  ") for line in again.stdout.splitlines())
    assert f"exists  {sources[0]} (3 partitions; unchanged)" in again.stdout


def test_unreachable_kafka_is_one_line_naming_it() -> None:
    result = topics_create({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "--timeout", "2")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot reach 127.0.0.1:1 within 2s")
    assert len(result.stderr.splitlines()) == 1, result.stderr
