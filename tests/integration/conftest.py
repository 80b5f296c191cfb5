"""The integration tests' relay set-up, as a fixture: :class:`RelayCase`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dev.kafka_broker import KafkaBroker
from tests.conftest import TopicFactory
from tests.fixtures.relay_harness import RelayCase


@pytest.fixture
def relay_case(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> Iterator[RelayCase]:
    case = RelayCase(kafka_broker.bootstrap_servers, topic_factory, tmp_path)
    yield case
    case.close()
