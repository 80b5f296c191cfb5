"""End to end on the real broker and the sandbox: every event of every topic accepted exactly
once, per-key order kept, the group's offsets at the end offsets — in every send mode."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consumer.codec import Decoder
from consumer.handlers.registry import HandlerRegistry
from consumer.klaviyo.requests import Endpoint
from consumer.settings import load_settings
from consumer.topics import CONTRACT_TOPICS
from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.conftest import TopicFactory
from tests.fixtures.relay_harness import (
    Event,
    EventFactory,
    RelayProcess,
    committed_offsets,
    create_event_limited,
    end_offsets,
    produce_events,
    relay_env,
    wait_for,
)

pytestmark = pytest.mark.kafka

EVENTS = 10_000
KEYS = 400


def base_id(unique_id: str) -> str:
    return unique_id.split(":", 1)[0]


def klaviyo_events(events: Iterable[Event]) -> list[tuple[str, str]]:
    """(metric, unique_id) of every Create Event the handlers make of ``events``."""
    settings = load_settings(klaviyo_api_key="pk_test")
    registry, decoder = HandlerRegistry.from_settings(settings), Decoder.from_settings(settings)
    now = datetime.now(UTC)
    return [
        (
            request.body["data"]["attributes"]["metric"]["data"]["attributes"]["name"],
            request.body["data"]["attributes"]["unique_id"],
        )
        for event in events
        for request in registry.plan(event.handler_topic, decoder.decode(event.value), now).requests
        if request.endpoint is Endpoint.CREATE_EVENT and request.body is not None
    ]


@pytest.mark.parametrize("mode", ["realtime", "batch", "auto"])
async def test_every_event_delivered_once_in_key_order(
    mode: str, kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    # Unique topics per test, each routed to one contract handler; a few with 3 partitions.
    topics = {
        topic_factory(handler.replace(".", "-"), partitions=3 if n % 3 == 0 else 1): handler
        for n, handler in enumerate(CONTRACT_TOPICS)
    }
    dlq = topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    factory = EventFactory()
    rng = random.Random(7)
    names = list(topics)
    events = [
        factory.event(topic, topics[topic], f"cust-{rng.randrange(KEYS)}", seq)
        for seq, topic in enumerate(rng.choice(names) for _ in range(EVENTS))
    ]
    produce_events(bootstrap, events)
    ends = end_offsets(bootstrap, topics)
    assert sum(ends.values()) == EVENTS

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        # Auto with a Create Event quota this run exceeds: both endpoints carry events. The
        # events were produced before the relay started: a bound this long keeps them fresh.
        limits = {
            "RATE_LIMITS": create_event_limited((50, 1.0), (500, 10.0)),
            "AUTO_REALTIME_MAX_WAIT_SECONDS": "3600",
        }
        extra = limits if mode == "auto" else {}
        env = relay_env(bootstrap, sandbox.base_url, topics, group, dlq, SEND_MODE=mode, **extra)
        relay = RelayProcess(env, tmp_path / "relay.log")
        try:
            await wait_for(
                lambda: committed_offsets(bootstrap, group, topics) == ends,
                what="group offsets at the end offsets",
                interval=0.5,
            )
            relay.terminate()
            assert await relay.wait_exit() == 0
        finally:
            relay.stop()
        accepted = list(sandbox.state.events)

    # Klaviyo deduplicates by (metric, unique_id): "Became Lead" and "New Lead" share an id.
    identities = [(e["metric"], e["unique_id"]) for e in accepted]
    assert len(identities) == len(set(identities)), "an event was accepted twice"
    # Every Klaviyo event of every domain event, e.g. both of a captured lead's (same id).
    assert sorted(identities) == sorted(klaviyo_events(events))
    unique_ids = [e["unique_id"] for e in accepted]
    assert all(e["duplicate_count"] == 0 for e in accepted), "an event was sent twice"
    assert {base_id(u) for u in unique_ids} == {e.event_id for e in events}
    # Per key (within a topic), Klaviyo saw the events in the order they were produced.
    first_seen: dict[str, int] = {}
    for index, unique_id in enumerate(unique_ids):
        first_seen.setdefault(base_id(unique_id), index)
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for event in events:
        by_key[(event.topic, event.key)].append(first_seen[event.event_id])
    out_of_order = [k for k, seen in by_key.items() if seen != sorted(seen)]
    assert out_of_order == []
    assert not relay.logged("event dead-lettered")
    if mode == "auto":
        assert {e["endpoint"] for e in accepted} == {"create_event", "bulk_create_events"}
