"""Klaviyo's edge end to end: proxies answering 408/425 and Cloudflare's HTML 403 bot challenge
are temporary. The relay retries them (never halts, never dead-letters) and every event reaches
Klaviyo exactly once. Both kinds, and Klaviyo's partial-failure header, show in the metrics."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client.parser import text_string_to_metric_families

from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.conftest import TopicFactory
from tests.fixtures.relay_harness import (
    EventFactory,
    RelayProcess,
    committed_offsets,
    end_offsets,
    metrics_port,
    produce_events,
    readiness,
    relay_env,
    sandbox_stats,
    wait_for,
)

pytestmark = pytest.mark.kafka


def at_ends(bootstrap: str, group: str, topic: str, ends: dict[tuple[str, int], int]) -> bool:
    """Whether the group has committed ``ends``; a group coordinator still settling on a freshly
    started broker (NOT_COORDINATOR, load in progress) means "not yet", not a failure."""
    try:
        return committed_offsets(bootstrap, group, [topic]) == ends
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        if error.retriable() or error.code() in (
            KafkaError.NOT_COORDINATOR,
            KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        ):
            return False
        raise


async def counters(port: int, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The relay's ``name`` counter by ``labels``, scraped from its ``/metrics``."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    return {
        tuple(sample.labels[label] for label in labels): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == name
        for sample in family.samples
        if sample.name == name + "_total"
    }


async def test_edge_answers_are_retried_without_halting_or_dead_letters(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = topic_factory("edge", partitions=2)
    topics = {topic: "shop.account.created"}
    dlq = topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    factory = EventFactory()
    events = [factory.event(topic, "shop.account.created", f"c{n % 23}", n) for n in range(500)]
    produce_events(bootstrap, events)
    ends = end_offsets(bootstrap, [topic])

    options = SandboxOptions(
        rate_limits=None,
        error_rates={408: 0.015, 425: 0.015},
        challenge_rate=0.01,
        partial_failure_rate=0.02,
        seed=11,
    )
    async with running_sandbox(options) as sandbox:
        relay = RelayProcess(
            # Realtime: the partial failures are counted on Create Event below.
            relay_env(bootstrap, sandbox.base_url, topics, group, dlq, SEND_MODE="realtime"),
            tmp_path / "relay.log",
        )
        try:

            def halted() -> bool:
                return any("relay halted" in str(line.get("message")) for line in relay.log_lines())

            # Stop waiting as soon as the relay halts: it would never commit the rest.
            await wait_for(
                lambda: at_ends(bootstrap, group, topic, ends) or halted(),
                what="every offset committed",
            )
            port = metrics_port(relay)
            assert port is not None
            assert not halted() and (await readiness(port))["halted"] is False
            assert committed_offsets(bootstrap, group, [topic]) == ends
            edge = await counters(port, "klaviyo_relay_klaviyo_edge_answers", "status", "kind")
            partial = await counters(
                port, "klaviyo_relay_klaviyo_partial_failures", "endpoint", "field"
            )
            relay.terminate()
            assert await relay.wait_exit() == 0
        finally:
            relay.stop()
        stats = await sandbox_stats(sandbox.base_url)
        # Sent once and accepted with the header: the relay counted each one.
        assert partial == {("create_event", "phone_number"): stats["partial_failures"]}
        assert edge == {("403", "challenge"): stats["challenged"]}
        unique_ids = Counter(str(e["unique_id"]) for e in sandbox.state.events)

    # The faults did happen, each kind of them.
    assert stats["challenged"] > 0 and {"408", "425"} <= set(stats["injected"])
    assert {u.split(":", 1)[0] for u in unique_ids} == {e.event_id for e in events}
    assert set(unique_ids.values()) == {1} and stats["duplicates"] == 0
    assert sum(end_offsets(bootstrap, [dlq]).values()) == 0
    assert not relay.logged("event dead-lettered")
