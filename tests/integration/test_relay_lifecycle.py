"""Crashes, rebalances and SIGTERM under load: no event is lost, nothing is committed before it
is finished, and a stopped relay leaves the group with its work done."""

from __future__ import annotations

import time

import pytest

from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.fixtures.relay_harness import (
    RelayCase,
    make_events,
    produce_events,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def delivered_ids(events: list[dict[str, object]]) -> set[str]:
    return {str(e["unique_id"]).split(":", 1)[0] for e in events}


async def test_sigkill_twice_mid_run_loses_nothing(relay_case: RelayCase) -> None:
    relay_case.topic("crash-orders", "shop.order.placed", partitions=3)
    relay_case.topic("crash-accounts", "shop.account.updated", partitions=2)
    relay_case.topic("crash-leads", "shop.lead.captured")
    events = make_events(relay_case.factory, relay_case.topics, 3000, 150, seed=1)
    produce_events(relay_case.bootstrap, events)
    ends = relay_case.ends()
    wanted = {e.event_id for e in events}

    # A little latency so that the kills land mid-run with requests in flight.
    async with running_sandbox(SandboxOptions(rate_limits=None, latency_ms=(1, 4))) as sandbox:
        env = relay_case.env(sandbox.base_url, MAX_IN_FLIGHT="300")
        for n, share in enumerate((0.2, 0.55)):
            relay = relay_case.start(env, f"relay-{n}")

            def reached(share: float = share) -> bool:
                return len(delivered_ids(sandbox.state.events)) >= share * len(wanted)

            await wait_for(reached, what=f"{share:.0%} delivered")
            relay.kill()
        last = relay_case.start(env, "relay-last")
        await wait_for(
            lambda: relay_case.committed() == ends,
            what="all offsets committed after the crashes",
            interval=0.5,
        )
        last.terminate()
        assert await last.wait_exit() == 0
        accepted = list(sandbox.state.events)
    assert delivered_ids(accepted) == wanted
    identities = [(e["metric"], e["unique_id"]) for e in accepted]
    assert len(identities) == len(set(identities))  # resends were deduplicated, not doubled


async def test_member_joins_and_another_leaves_mid_run(relay_case: RelayCase) -> None:
    relay_case.topic("rb-orders", "shop.order.payment-failed", partitions=4)
    relay_case.topic("rb-accounts", "shop.account.created", partitions=4)
    events = make_events(relay_case.factory, relay_case.topics, 4000, 300, seed=2)
    produce_events(relay_case.bootstrap, events)
    ends = relay_case.ends()
    wanted = {e.event_id for e in events}

    async with running_sandbox(SandboxOptions(rate_limits=None, latency_ms=(1, 4))) as sandbox:
        env = relay_case.env(sandbox.base_url, MAX_IN_FLIGHT="300")
        first = relay_case.start(env, "first")
        await wait_for(
            lambda: len(delivered_ids(sandbox.state.events)) >= 0.15 * len(wanted),
            what="15% delivered",
        )
        second = relay_case.start(env, "second")
        await wait_for(
            lambda: second.logged("partitions assigned"),
            what="the second relay to get partitions",
        )
        assert first.process.poll() is None
        first.terminate()  # leaves the group: its partitions move to the second relay
        assert await first.wait_exit() == 0
        await wait_for(
            lambda: relay_case.committed() == ends,
            what="all offsets committed after the rebalances",
            interval=0.5,
        )
        second.terminate()
        assert await second.wait_exit() == 0
        accepted = list(sandbox.state.events)
    assert first.logged("partitions revoked")
    assert delivered_ids(accepted) == wanted


async def test_sigterm_under_load_finishes_in_flight_and_commits(relay_case: RelayCase) -> None:
    relay_case.topic("term", "shop.order.shipment-updated", partitions=3)
    events = make_events(relay_case.factory, relay_case.topics, 3000, 400, seed=3)
    placed = produce_events(relay_case.bootstrap, events)
    drain_timeout = 15.0

    # Slow answers keep hundreds of events in flight when SIGTERM arrives.
    async with running_sandbox(SandboxOptions(rate_limits=None, latency_ms=(20, 40))) as sandbox:
        env = relay_case.env(
            sandbox.base_url, MAX_IN_FLIGHT="400", DRAIN_TIMEOUT_SECONDS=str(drain_timeout)
        )
        relay = relay_case.start(env)
        await wait_for(lambda: len(sandbox.state.events) >= 300, what="the relay under load")
        relay.terminate()
        started = time.monotonic()
        assert await relay.wait_exit() == 0
        took = time.monotonic() - started
        delivered = delivered_ids(sandbox.state.events)
    assert took < drain_timeout + 5
    assert not relay.logged("drain timeout: unfinished events are left for redelivery")
    committed = relay_case.committed()
    below = {
        e.event_id
        for e, (partition, offset) in zip(events, placed, strict=True)
        if offset < committed[(e.topic, partition)]
    }
    # Everything taken was finished and committed; nothing committed was left undelivered.
    assert below == delivered
    assert len(delivered) < len(events)  # it really stopped mid-run
