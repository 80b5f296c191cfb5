"""Batch mode end to end on the real broker and the sandbox (issue 11, defects 7 and 8): every
customer's profile changes back and forth between events, and the producer sends some records
twice. Klaviyo must see each customer's events in the order they were produced, with the
profile each one was produced with (a stale profile never overwrites a newer one), each event
recorded once, and a repeated ``unique_id`` never inside one bulk request."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
from confluent_kafka import KafkaException

from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.fixtures.relay_harness import (
    Event,
    EventFactory,
    RelayCase,
    committed_offsets,
    produce_events,
    wait_for,
)

pytestmark = pytest.mark.kafka

HANDLER = "shop.order.placed"
RECORDS = 1500
KEYS = 40
DUPLICATE_SHARE = 0.1


def base_id(unique_id: str) -> str:
    return unique_id.split(":", 1)[0]


def committed_at(bootstrap: str, group: str, topic: str, ends: dict[tuple[str, int], int]) -> bool:
    try:
        return committed_offsets(bootstrap, group, [topic]) == ends
    except KafkaException:  # the coordinator of a fresh broker is still loading
        return False


def events_with_profile_changes(factory: EventFactory, topic: str) -> list[tuple[Event, str]]:
    """Orders whose customer's first name flips between two values, per key at random."""
    rng = random.Random(11)
    out = []
    for seq in range(RECORDS):
        key = f"cust-{rng.randrange(KEYS)}"
        name = rng.choice(["Ada", "Grace"])
        datum = factory.datum(HANDLER, key, seq)
        datum["customer"]["first_name"] = name
        event = Event(topic, HANDLER, key, datum["event_id"], factory.encode(HANDLER, datum))
        out.append((event, name))
    return out


async def test_batch_mode_keeps_each_customers_order_and_sends_duplicates_once(
    relay_case: RelayCase,
) -> None:
    bootstrap = relay_case.bootstrap
    topic = relay_case.topic("orders-batch", HANDLER, partitions=3)
    produced = events_with_profile_changes(relay_case.factory, topic)
    # Producer-side duplicates: a record sent again a few records later (a retried send).
    rng = random.Random(5)
    records: list[Event] = []
    duplicated = 0
    for event, _name in produced:
        records.append(event)
        if rng.random() < DUPLICATE_SHARE:
            records.append(event)
            duplicated += 1
    produce_events(bootstrap, records)
    ends = relay_case.ends()

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        env = relay_case.env(sandbox.base_url, SEND_MODE="batch", BATCH_LINGER_SECONDS="0.2")
        relay = relay_case.start(env)
        await wait_for(
            lambda: committed_at(bootstrap, relay_case.group, topic, ends),
            what="group offsets at the end offsets",
            interval=0.5,
        )
        assert relay.metrics_port() is not None
        skipped = await relay.metric("klaviyo_relay_bulk_duplicates_total")
        relay.terminate()
        assert await relay.wait_exit() == 0
        accepted = [e for e in sandbox.state.events if e["metric"] == "Placed Order"]
        resent = sum(e["duplicate_count"] for e in sandbox.state.events)
        all_events = len(sandbox.state.events)

    assert not relay.logged("event dead-lettered")
    # Each order recorded once; every copy of a duplicated record either stayed out of its
    # bulk job (counted by the relay) or reached Klaviyo in a later request (deduplicated).
    ids = [e["unique_id"] for e in accepted]
    assert len(ids) == len(set(ids)) == RECORDS
    assert {base_id(u) for u in ids} == {event.event_id for event, _ in produced}
    per_record = all_events / RECORDS
    assert skipped + resent == pytest.approx(duplicated * per_record)
    # Per customer, Klaviyo saw the orders in production order, each with its own profile.
    position = {e["unique_id"]: index for index, e in enumerate(accepted)}
    seen_name = {e["unique_id"]: e["profile"].get("first_name") for e in accepted}
    by_key: dict[str, list[int]] = defaultdict(list)
    for event, name in produced:
        by_key[event.key].append(position[event.event_id])
        assert seen_name[event.event_id] == name
    out_of_order = {key: seen for key, seen in by_key.items() if seen != sorted(seen)}
    assert out_of_order == {}
