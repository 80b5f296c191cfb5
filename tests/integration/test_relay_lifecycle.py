"""Crashes, rebalances and SIGTERM under load: no event is lost, nothing is committed before it
is finished, and a stopped relay leaves the group with its work done."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.conftest import TopicFactory
from tests.fixtures.relay_harness import (
    EventFactory,
    RelayProcess,
    committed_offsets,
    end_offsets,
    make_events,
    produce_events,
    relay_env,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def delivered_ids(events: list[dict[str, object]]) -> set[str]:
    return {str(e["unique_id"]).split(":", 1)[0] for e in events}


async def test_sigkill_twice_mid_run_loses_nothing(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topics = {
        topic_factory("crash-orders", partitions=3): "shop.order.placed",
        topic_factory("crash-accounts", partitions=2): "shop.account.updated",
        topic_factory("crash-leads"): "shop.lead.captured",
    }
    dlq = topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    events = make_events(EventFactory(), topics, 3000, 150, seed=1)
    produce_events(bootstrap, events)
    ends = end_offsets(bootstrap, topics)
    wanted = {e.event_id for e in events}

    # A little latency so that the kills land mid-run with requests in flight.
    async with running_sandbox(SandboxOptions(rate_limits=None, latency_ms=(1, 4))) as sandbox:
        env = relay_env(bootstrap, sandbox.base_url, topics, group, dlq, MAX_IN_FLIGHT="300")
        for n, share in enumerate((0.2, 0.55)):
            relay = RelayProcess(env, tmp_path / f"relay-{n}.log")
            try:

                def reached(share: float = share) -> bool:
                    return len(delivered_ids(sandbox.state.events)) >= share * len(wanted)

                await wait_for(reached, what=f"{share:.0%} delivered")
                relay.kill()
            finally:
                relay.stop()
        last = RelayProcess(env, tmp_path / "relay-last.log")
        try:
            await wait_for(
                lambda: committed_offsets(bootstrap, group, topics) == ends,
                what="all offsets committed after the crashes",
                interval=0.5,
            )
            last.terminate()
            assert await last.wait_exit() == 0
        finally:
            last.stop()
        accepted = list(sandbox.state.events)
    assert delivered_ids(accepted) == wanted
    identities = [(e["metric"], e["unique_id"]) for e in accepted]
    assert len(identities) == len(set(identities))  # resends were deduplicated, not doubled


async def test_member_joins_and_another_leaves_mid_run(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topics = {
        topic_factory("rb-orders", partitions=4): "shop.order.payment-failed",
        topic_factory("rb-accounts", partitions=4): "shop.account.created",
    }
    dlq = topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    events = make_events(EventFactory(), topics, 4000, 300, seed=2)
    produce_events(bootstrap, events)
    ends = end_offsets(bootstrap, topics)
    wanted = {e.event_id for e in events}

    async with running_sandbox(SandboxOptions(rate_limits=None, latency_ms=(1, 4))) as sandbox:
        env = relay_env(bootstrap, sandbox.base_url, topics, group, dlq, MAX_IN_FLIGHT="300")
        first = RelayProcess(env, tmp_path / "first.log")
        second: RelayProcess | None = None
        try:
            await wait_for(
                lambda: len(delivered_ids(sandbox.state.events)) >= 0.15 * len(wanted),
                what="15% delivered",
            )
            second = RelayProcess(env, tmp_path / "second.log")
            await wait_for(
                lambda: second is not None and second.logged("partitions assigned"),
                what="the second relay to get partitions",
            )
            assert first.process.poll() is None
            first.terminate()  # leaves the group: its partitions move to the second relay
            assert await first.wait_exit() == 0
            await wait_for(
                lambda: committed_offsets(bootstrap, group, topics) == ends,
                what="all offsets committed after the rebalances",
                interval=0.5,
            )
            second.terminate()
            assert await second.wait_exit() == 0
        finally:
            first.stop()
            if second is not None:
                second.stop()
        accepted = list(sandbox.state.events)
    assert first.logged("partitions revoked")
    assert delivered_ids(accepted) == wanted


async def test_sigterm_under_load_finishes_in_flight_and_commits(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topics = {topic_factory("term", partitions=3): "shop.order.shipment-updated"}
    dlq = topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    events = make_events(EventFactory(), topics, 3000, 400, seed=3)
    placed = produce_events(bootstrap, events)
    drain_timeout = 15.0

    # Slow answers keep hundreds of events in flight when SIGTERM arrives.
    async with running_sandbox(SandboxOptions(rate_limits=None, latency_ms=(20, 40))) as sandbox:
        env = relay_env(
            bootstrap,
            sandbox.base_url,
            topics,
            group,
            dlq,
            MAX_IN_FLIGHT="400",
            DRAIN_TIMEOUT_SECONDS=str(drain_timeout),
        )
        relay = RelayProcess(env, tmp_path / "relay.log")
        try:
            await wait_for(lambda: len(sandbox.state.events) >= 300, what="the relay under load")
            relay.terminate()
            started = time.monotonic()
            assert await relay.wait_exit() == 0
            took = time.monotonic() - started
        finally:
            relay.stop()
        delivered = delivered_ids(sandbox.state.events)
    assert took < drain_timeout + 5
    assert not relay.logged("drain timeout: unfinished events are left for redelivery")
    committed = committed_offsets(bootstrap, group, topics)
    below = {
        e.event_id
        for e, (partition, offset) in zip(events, placed, strict=True)
        if offset < committed[(e.topic, partition)]
    }
    # Everything taken was finished and committed; nothing committed was left undelivered.
    assert below == delivered
    assert len(delivered) < len(events)  # it really stopped mid-run
