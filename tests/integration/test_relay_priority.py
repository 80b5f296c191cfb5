"""Priorities under a short quota, end to end on the real broker and the sandbox (issue 13,
item 2): a backlog of lead tracking fills the relay's in-flight window and waits for the Create
Event quota; password resets produced after it must reach Klaviyo before the rest of the
backlog, and an expired reset link is still never sent."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from consumer.settings import EndpointLimit, WindowLimit
from dev.harness import rate_limits_json
from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import SandboxOptions, running_sandbox
from klaviyo_sandbox.facts import Limit, Window
from tests.conftest import TopicFactory
from tests.fixtures.relay_harness import (
    UNLIMITED_RATE_LIMITS,
    Event,
    EventFactory,
    RelayProcess,
    headers_dict,
    produce_events,
    read_all,
    relay_env,
    wait_for,
)

pytestmark = pytest.mark.kafka

LEAD = "shop.lead.assigned"  # one "New Lead" per record, lowest class by default
RESET = "shop.account.password-reset-requested"  # "Reset Password", urgent by default
LEADS = 80
RESETS = 5
WINDOW = 20  # MAX_IN_FLIGHT: a quarter of the backlog
PER_SECOND = 5  # the account's Create Event quota in this test


def short_quota() -> tuple[str, Limit]:
    """The relay's RATE_LIMITS and the sandbox's Create Event limit: PER_SECOND a second."""
    burst, steady = (PER_SECOND, 1.0), (PER_SECOND * 60, 60.0)
    relay = EndpointLimit(
        burst=WindowLimit(requests=burst[0], seconds=burst[1]),
        steady=WindowLimit(requests=steady[0], seconds=steady[1]),
    )
    sandbox = Limit(
        burst=Window(requests=burst[0], seconds=burst[1]),
        steady=Window(requests=steady[0], seconds=steady[1]),
    )
    return rate_limits_json({**UNLIMITED_RATE_LIMITS, "create_event": relay}), sandbox


def expired_reset(factory: EventFactory, topic: str) -> Event:
    datum = factory.datum(RESET, "cust-expired", 0)
    datum["expires_at"] = datetime.now(UTC) - timedelta(minutes=5)
    return Event(topic, RESET, "cust-expired", datum["event_id"], factory.encode(RESET, datum))


async def test_password_resets_pass_a_backlog_of_lead_tracking_waiting_for_the_quota(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    leads = topic_factory("leads", partitions=1)
    resets = topic_factory("resets", partitions=1)
    dlq = topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    factory = EventFactory()
    produce_events(bootstrap, [factory.event(leads, LEAD, f"lead-{i}", i) for i in range(LEADS)])
    relay_limits, sandbox_limit = short_quota()

    async with running_sandbox(
        SandboxOptions(rate_limits={"create_event": sandbox_limit})
    ) as sandbox:

        def received(metric: str) -> int:
            return sum(1 for e in sandbox.state.events if e["metric"] == metric)

        env = relay_env(
            bootstrap,
            sandbox.base_url,
            {leads: LEAD, resets: RESET},
            group,
            dlq,
            SEND_MODE="realtime",
            MAX_IN_FLIGHT=str(WINDOW),
            RATE_LIMITS=relay_limits,
            # The test's topics are routed to the contract's handlers: name their classes.
            TOPIC_PRIORITIES=json.dumps({resets: "urgent", leads: "lowest"}),
        )
        relay = RelayProcess(env, tmp_path / "relay.log")
        try:
            # The backlog flows at the quota's pace, the window full of leads behind it.
            await wait_for(lambda: received("New Lead") >= WINDOW, what="the backlog flowing")
            leads_before = received("New Lead")
            fresh = [factory.event(resets, RESET, f"cust-{i}", i) for i in range(RESETS)]
            expired = expired_reset(factory, resets)
            await asyncio.to_thread(produce_events, bootstrap, [*fresh, expired])
            await wait_for(lambda: received("Reset Password") == RESETS, what="the resets")
            await wait_for(lambda: received("New Lead") == LEADS, what="the rest of the backlog")
            parked = await asyncio.to_thread(read_all, bootstrap, dlq, 1)
            relay.terminate()
            assert await relay.wait_exit() == 0
        finally:
            relay.stop()
        order = [(e["metric"], e["unique_id"]) for e in sandbox.state.events]

    metrics = [metric for metric, _ in order]
    last_reset = max(i for i, metric in enumerate(metrics) if metric == "Reset Password")
    passed_by = metrics[:last_reset].count("New Lead") - leads_before
    # Only leads already on their way when the resets were produced may go first: at most one
    # window of them. Without priorities every remaining lead of the backlog goes first.
    assert passed_by <= WINDOW, f"{passed_by} leads reached Klaviyo before the last reset"
    assert metrics[last_reset:].count("New Lead") >= LEADS - leads_before - WINDOW
    # Freshness still holds: the expired link never reached Klaviyo; it was dead-lettered.
    assert expired.event_id not in {unique_id for _, unique_id in order}
    assert headers_dict(parked[0])["klaviyo-relay.reason"] == "expired"
