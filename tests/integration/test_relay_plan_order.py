"""An event part-way through its requests finishes before later events start theirs, end to end
under a short quota (issue 13, item 4): a backlog of orders (Placed Order, then Ordered Product)
fills the in-flight window of different customers; each order's Ordered Product goes to Klaviyo
before the next orders' Placed Order. First come, first served would take every waiting order's
first request before any second one, leaving a window of orders half sent, each of them resent
whole after a crash."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.conftest import TopicFactory
from tests.fixtures.relay_harness import (
    EventFactory,
    RelayProcess,
    produce_events,
    relay_env,
    wait_for,
)
from tests.integration.test_relay_priority import PER_SECOND, WINDOW, short_quota

pytestmark = pytest.mark.kafka

ORDER = "shop.order.placed"  # Placed Order, then one Ordered Product per item (one here)
ORDERS = 60
# Orders half sent at any moment: the first burst starts PER_SECOND orders at once, and an answer
# may come after the next grant on a slow machine. First come, first served: the whole window.
HALF_SENT_AT_MOST = PER_SECOND + 2


async def test_an_order_started_gets_its_next_request_before_later_orders_start(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    orders = topic_factory("orders", partitions=1)
    dlq = topic_factory("dlq")
    factory = EventFactory()
    backlog = [factory.event(orders, ORDER, f"cust-{i}", i) for i in range(ORDERS)]
    produce_events(bootstrap, backlog)
    relay_limits, sandbox_limit = short_quota()

    async with running_sandbox(
        SandboxOptions(rate_limits={"create_event": sandbox_limit})
    ) as sandbox:
        env = relay_env(
            bootstrap,
            sandbox.base_url,
            {orders: ORDER},
            f"relay-{uuid.uuid4().hex[:8]}",
            dlq,
            SEND_MODE="realtime",
            MAX_IN_FLIGHT=str(WINDOW),
            RATE_LIMITS=relay_limits,
        )
        relay = RelayProcess(env, tmp_path / "relay.log")
        try:
            await wait_for(
                lambda: len(sandbox.state.events) == 2 * ORDERS, what="every order's two events"
            )
        finally:
            relay.stop()
        arrived = [str(e["unique_id"]).split(":", 1)[0] for e in sandbox.state.events]

    assert sorted(set(arrived)) == sorted(e.event_id for e in backlog)
    half_sent: set[str] = set()
    most = 0
    for event_id in arrived:
        half_sent ^= {event_id}  # its first request opens it, its second closes it
        most = max(most, len(half_sent))
    assert most <= HALF_SENT_AT_MOST, f"{most} orders were half sent at once"
