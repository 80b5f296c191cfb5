"""Auto mode (the default) end to end on the real broker and the sandbox (issue 13): with a short
Create Event quota, a backlog goes to Create Event while its windows have room and into Bulk
Create Events jobs when they are exhausted; once the backlog is gone, new events go to Create
Event again. The sandbox records which endpoint received each event, in arrival order: that is
what is checked, with each customer's order across the switches and no 429 answer."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest

from klaviyo_sandbox import SandboxOptions, running_sandbox
from klaviyo_sandbox.facts import Limit, Window
from tests.fixtures.relay_harness import (
    Event,
    RelayCase,
    RelayProcess,
    create_event_limited,
    produce_events,
    set_faults,
    wait_committed_to_end,
    wait_for,
)

pytestmark = pytest.mark.kafka

HANDLER = "shop.account.created"  # one Create Event per record, unique_id = event_id
BACKLOG = 600
KEYS = 40
# Klaviyo's shape, scaled down so that a few seconds exhaust it and a few seconds refill it.
BURST, STEADY = (5, 1.0), (20, 4.0)
REALTIME = "create_event"
BULK = "bulk_create_events"


def sandbox_limits() -> dict[str, Limit]:
    return {
        REALTIME: Limit(
            burst=Window(requests=BURST[0], seconds=BURST[1]),
            steady=Window(requests=STEADY[0], seconds=STEADY[1]),
        )
    }


async def test_auto_switches_to_bulk_under_a_short_quota_and_back_keeping_each_keys_order(
    relay_case: RelayCase,
) -> None:
    bootstrap, factory = relay_case.bootstrap, relay_case.factory
    topic = relay_case.topic("accounts-auto", HANDLER, partitions=3)
    rng = random.Random(13)
    backlog = [
        factory.event(topic, HANDLER, f"cust-{rng.randrange(KEYS)}", seq) for seq in range(BACKLOG)
    ]
    produce_events(bootstrap, backlog)  # waiting before the relay starts: a backlog

    async with running_sandbox(SandboxOptions(rate_limits=sandbox_limits())) as sandbox:
        env = relay_case.env(
            sandbox.base_url,
            RATE_LIMITS=create_event_limited(BURST, STEADY),
            BATCH_LINGER_SECONDS="0.2",
            # Produced before the relay started: the bound would make the backlog stale, and
            # the quota is what is tested here.
            AUTO_REALTIME_MAX_WAIT_SECONDS="3600",
        )  # no SEND_MODE: the default is what is tested
        relay = relay_case.start(env)
        await wait_committed_to_end(bootstrap, relay_case.group, [topic], BACKLOG)
        drained = len(sandbox.state.events)
        # Backlog gone: single new events, each once the previous one arrived, until the
        # Create Event windows have refilled and three in a row went there.
        fresh: list[Event] = []

        def endpoints_of_fresh() -> list[str]:
            by_id = {e["unique_id"]: e["endpoint"] for e in sandbox.state.events[drained:]}
            return [by_id.get(event.event_id, "") for event in fresh]

        async def three_realtime_in_a_row() -> bool:
            arrived = endpoints_of_fresh()
            if arrived[-3:] == [REALTIME] * 3:
                return True
            if not fresh or arrived[-1]:
                event = factory.event(topic, HANDLER, f"cust-{len(fresh) % KEYS}", len(fresh))
                fresh.append(event)
                await asyncio.to_thread(produce_events, bootstrap, [event])
            return False

        await wait_for(three_realtime_in_a_row, what="new events back on Create Event")
        relay.terminate()
        assert await relay.wait_exit() == 0
        received = list(sandbox.state.events)
        throttled = dict(sandbox.sandbox.throttled)

    assert any(
        line.get("message") == "relay started" and line.get("mode") == "auto"
        for line in relay.log_lines()
    )
    assert not relay.logged("event dead-lettered")
    assert throttled[REALTIME] == 0  # realtime sends kept to the quota: never a 429
    ids = [str(e["unique_id"]) for e in received]
    assert len(ids) == len(set(ids)) == BACKLOG + len(fresh)

    # The backlog used both endpoints: Create Event while it had room, bulk jobs for the rest.
    endpoint = {str(e["unique_id"]): str(e["endpoint"]) for e in received}
    used = [endpoint[event.event_id] for event in backlog]
    assert 0 < used.count(REALTIME) < used.count(BULK)
    assert used.count(REALTIME) + used.count(BULK) == BACKLOG

    # Each customer's events arrived in production order, across the two endpoints.
    position = {uid: n for n, uid in enumerate(ids)}
    by_key: dict[str, list[int]] = defaultdict(list)
    paths: dict[str, set[str]] = defaultdict(set)
    for event in [*backlog, *fresh]:
        by_key[event.key].append(position[event.event_id])
        paths[event.key].add(endpoint[event.event_id])
    out_of_order = {key: seen for key, seen in by_key.items() if seen != sorted(seen)}
    assert out_of_order == {}
    # The order held where it could break: customers whose events took both paths.
    assert sum(taken == {REALTIME, BULK} for taken in paths.values()) > 0


async def routed_to_bulk(relay: RelayProcess) -> float:
    """Create Events the relay put into bulk jobs so far (every reason), from its /metrics."""
    return await relay.metric("klaviyo_relay_auto_route_total", {"path": "bulk"})


async def bulk_failed(relay: RelayProcess) -> float:
    """Bulk Create Events requests answered 5xx so far."""
    labels = {"endpoint": BULK, "status_class": "5xx"}
    return await relay.metric("klaviyo_relay_klaviyo_requests_total", labels)


async def test_auto_events_sent_realtime_during_an_outage_fall_over_into_bulk_jobs(
    relay_case: RelayCase,
) -> None:
    # Before, an event that went realtime stayed on Create Event, retrying, for the whole
    # outage and the backoffs after it; its key's later events waited behind it. Now it falls
    # over into a bulk job: with Klaviyo down, every event ends up in one, and arrives there
    # (in each key's order) once Klaviyo is back.
    bootstrap = relay_case.bootstrap
    topic = relay_case.topic("accounts-outage", HANDLER, partitions=2)
    factory = relay_case.factory
    events = [factory.event(topic, HANDLER, f"cust-{seq % 6}", seq) for seq in range(30)]

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        await set_faults(sandbox.base_url, {"error_rates": {"503": 1.0}})  # Klaviyo is down
        env = relay_case.env(
            sandbox.base_url, AUTO_REALTIME_FALLOVER_SECONDS="1", BATCH_LINGER_SECONDS="0.2"
        )
        relay = relay_case.start(env)
        await wait_for(lambda: relay.logged("partitions assigned"), what="partitions")
        produce_events(bootstrap, events)

        async def all_in_bulk_jobs() -> bool:
            return await routed_to_bulk(relay) >= len(events)

        await wait_for(all_in_bulk_jobs, what="every event in a bulk job, Klaviyo down")
        await set_faults(sandbox.base_url, {"error_rates": {}})  # Klaviyo is back
        await wait_committed_to_end(bootstrap, relay_case.group, [topic], len(events))
        relay.stop()
        received = list(sandbox.state.events)

    assert relay.logged("create event failing: fresh events go to bulk jobs")
    assert not relay.logged("event dead-lettered")
    endpoint = {str(e["unique_id"]): str(e["endpoint"]) for e in received}
    assert [endpoint.get(event.event_id) for event in events] == [BULK] * len(events)
    position = {str(e["unique_id"]): n for n, e in enumerate(received)}
    by_key: dict[str, list[int]] = defaultdict(list)
    for event in events:
        by_key[event.key].append(position[event.event_id])
    assert {key: seen for key, seen in by_key.items() if seen != sorted(seen)} == {}


async def test_auto_during_an_outage_bulk_jobs_go_one_at_a_time_not_each_spending_places(
    relay_case: RelayCase,
) -> None:
    # Before, every bulk job retried on its own during an outage, each attempt taking a place
    # of Bulk Create Events' 150/min window: when Klaviyo came back the window was spent and
    # the backlog (password resets behind it) waited for places. Now, once the relay knows
    # Klaviyo fails, one bulk request probes at a time and the other jobs wait, unsent; the
    # first accepted answer (here a fresh event's Create Event probe) lets them all go.
    bootstrap = relay_case.bootstrap
    topic = relay_case.topic("accounts-outage-bulk", HANDLER, partitions=2)
    factory = relay_case.factory
    jobs, per_job = 12, 5
    first = factory.event(topic, HANDLER, "cust-first", 0)
    backlog = [factory.event(topic, HANDLER, f"cust-{seq}", seq) for seq in range(jobs * per_job)]
    last = factory.event(topic, HANDLER, "cust-last", 0)

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        await set_faults(sandbox.base_url, {"error_rates": {"503": 1.0}})  # Klaviyo is down
        env = relay_case.env(
            sandbox.base_url,
            AUTO_REALTIME_FALLOVER_SECONDS="1",
            BATCH_MAX_EVENTS=str(per_job),  # full jobs go at once, without a linger
            # The probe's retries come seconds apart: its next one is not in this test's window.
            RETRY_BASE_SECONDS="20",
            RETRY_CAP_SECONDS="60",
        )
        relay = relay_case.start(env)
        await wait_for(lambda: relay.logged("partitions assigned"), what="partitions")
        produce_events(bootstrap, [first])
        await wait_for(
            lambda: relay.logged("create event failing: fresh events go to bulk jobs"),
            what="fall-over",
        )
        produce_events(bootstrap, backlog)

        async def all_in_jobs_and_one_refused() -> bool:
            in_jobs = await routed_to_bulk(relay) >= 1 + len(backlog)
            return in_jobs and await bulk_failed(relay) > 0

        # Twelve full jobs are due at once, and the first fallen-over event's job was sent.
        await wait_for(all_in_jobs_and_one_refused, what="the jobs filled, one answered 503")
        await set_faults(sandbox.base_url, {"error_rates": {}})  # Klaviyo is back
        failed = await bulk_failed(relay)
        produce_events(bootstrap, [last])
        await wait_committed_to_end(bootstrap, relay_case.group, [topic], 2 + len(backlog))
        relay.stop()
        received = list(sandbox.state.events)

    # Before: every one of the twelve jobs was sent into the outage.
    assert failed <= 2
    assert not relay.logged("event dead-lettered")
    sent = [first, *backlog, last]
    assert {str(e["unique_id"]) for e in received} >= {event.event_id for event in sent}
