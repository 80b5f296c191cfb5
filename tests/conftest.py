"""Shared fixtures: one real Kafka broker per test session, and uniquely named topics on it.

Set KAFKA_BOOTSTRAP_SERVERS_TEST=host:port to run against a broker you already have instead of
starting one (topics are then created there, and left in place).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Protocol

import pytest

from dev.kafka_broker import KafkaBroker


class TopicFactory(Protocol):
    def __call__(self, prefix: str = "t", partitions: int = 1) -> str: ...


def _announce(config: pytest.Config, line: str) -> None:
    """Show ``line`` in the test output even with capture on (so CI logs tell which broker ran)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    # The leading newline keeps the line off the row of progress dots (``-q``).
    if capture is None:
        reporter.write_line(f"\n{line}")
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n{line}")


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest) -> Iterator[KafkaBroker]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS_TEST")
    broker = KafkaBroker.external(external) if external else KafkaBroker.start()
    _announce(request.config, broker.banner)
    with broker:
        yield broker


@pytest.fixture
def topic_factory(kafka_broker: KafkaBroker) -> TopicFactory:
    """``make(prefix="t", partitions=1) -> name``: create a fresh topic and return its name."""

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        kafka_broker.create_topics([name], partitions=partitions)
        return name

    return make


@pytest.fixture
def dedicated_kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A broker of the test's own, for tests that kill and restart it (``kill``/``restart``)
    without disturbing the session's broker."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS_TEST"):
        pytest.skip("an external broker is in use; this test must start (and kill) its own")
    with KafkaBroker.start(tmp_path_factory.mktemp("dedicated-broker")) as broker:
        yield broker
