"""``run --until-caught-up`` (Klaviyo's hourly script, as a job) on the real broker and the
sandbox: it delivers and commits what the topics held at start and exits 0; it does not wait
for what is produced after its start; it exits 1 with one line saying why when Klaviyo refuses
the key or stays unreachable past ``--max-duration``; empty topics end it at once with 0."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka import Producer

from dev.harness import RELAY_COMMAND, free_port
from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.conftest import TopicFactory
from tests.fixtures.relay_harness import (
    EventFactory,
    RelayProcess,
    base_ids,
    committed_offsets,
    end_offsets,
    produce,
    produce_events,
    relay_env,
    set_faults,
    wait_for,
)

pytestmark = pytest.mark.kafka

HANDLER = "shop.order.placed"


def caught_up_run(env: dict[str, str], log: Path, *extra: str) -> RelayProcess:
    return RelayProcess(env, log, command=(*RELAY_COMMAND, "--until-caught-up", *extra))


def job_env(bootstrap: str, base_url: str, topic: str, group: str, dlq: str) -> dict[str, str]:
    # Explicit: the run must not depend on the default send mode.
    return relay_env(bootstrap, base_url, {topic: HANDLER}, group, dlq, SEND_MODE="realtime")


def log_line(relay: RelayProcess, message: str) -> dict[str, object]:
    lines = [line for line in relay.log_lines() if line.get("message") == message]
    assert len(lines) == 1, relay.tail()
    return lines[0]


async def test_caught_up_run_delivers_commits_and_exits_0(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, dlq = topic_factory("hourly", partitions=3), topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    factory = EventFactory()
    events = [factory.event(topic, HANDLER, f"c{n % 7}", n) for n in range(60)]
    produce_events(bootstrap, events)
    # Parked on the dead-letter topic, it counts as done.
    produce(bootstrap, [(topic, b"c0", b"garbage, not Avro")])
    ends = end_offsets(bootstrap, [topic])

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        relay = caught_up_run(
            job_env(bootstrap, sandbox.base_url, topic, group, dlq), tmp_path / "relay.log"
        )
        try:
            assert await relay.wait_exit() == 0, relay.tail()
        finally:
            relay.stop()
        delivered = base_ids(sandbox.state.events)

    assert delivered == {e.event_id for e in events}
    assert committed_offsets(bootstrap, group, [topic]) == ends
    assert sum(end_offsets(bootstrap, [dlq]).values()) == 1
    assert log_line(relay, "caught up")["events"] == len(events) + 1


@contextmanager
def producing(bootstrap: str, topic: str, factory: EventFactory) -> Iterator[threading.Event]:
    """Produce one event every 20 ms until the block ends; yields an event set once the first
    of them was acknowledged."""
    stop, first = threading.Event(), threading.Event()
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})

    def loop() -> None:
        seq = 1000
        while not stop.is_set():
            event = factory.event(topic, HANDLER, f"late{seq % 5}", seq)
            producer.produce(topic, key=event.key.encode(), value=event.value)
            producer.flush(10)
            first.set()
            seq += 1
            stop.wait(0.02)  # the production rate, not a synchronisation

    thread = threading.Thread(target=loop, name="late-producer", daemon=True)
    thread.start()
    try:
        yield first
    finally:
        stop.set()
        thread.join(30)
        producer.flush(10)


async def test_events_produced_after_the_start_are_not_waited_for(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, dlq = topic_factory("late", partitions=2), topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    factory = EventFactory()
    events = [factory.event(topic, HANDLER, f"c{n % 5}", n) for n in range(40)]
    produce_events(bootstrap, events)
    ends = end_offsets(bootstrap, [topic])

    # Klaviyo refuses until the late events flow, so the run is still busy when they come.
    outage = SandboxOptions(rate_limits=None, error_rates={503: 1.0})
    async with running_sandbox(outage) as sandbox:
        relay = caught_up_run(
            job_env(bootstrap, sandbox.base_url, topic, group, dlq), tmp_path / "relay.log"
        )
        try:
            await wait_for(lambda: relay.logged("catching up"), what="the run's targets")
            # Events keep arriving for as long as the run lasts: a run that chased the end
            # offsets would not end while they do.
            with producing(bootstrap, topic, factory) as first:
                await wait_for(first.is_set, what="the late producer's first event")
                await set_faults(sandbox.base_url, {"error_rates": {}})
                assert await relay.wait_exit() == 0, relay.tail()
        finally:
            relay.stop()
        delivered = base_ids(sandbox.state.events)

    assert {e.event_id for e in events} <= delivered
    committed = committed_offsets(bootstrap, group, [topic])
    assert all(committed[tp] >= end for tp, end in ends.items()), (committed, ends)
    assert log_line(relay, "catching up")["events"] == len(events)


async def test_refused_api_key_exits_1_with_the_reason(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, dlq = topic_factory("refused"), topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    factory = EventFactory()
    produce_events(bootstrap, [factory.event(topic, HANDLER, "k", n) for n in range(10)])

    async with running_sandbox(SandboxOptions(rate_limits=None, fail_auth=True)) as sandbox:
        relay = caught_up_run(
            job_env(bootstrap, sandbox.base_url, topic, group, dlq), tmp_path / "relay.log"
        )
        try:
            assert await relay.wait_exit() == 1, relay.tail()
        finally:
            relay.stop()
        assert sandbox.state.events == []

    reason = relay.line_with("error: ")
    assert reason == (
        "error: klaviyo refused the API key (401/403):"
        " 10 events left undelivered (1 partitions behind)"
    ), relay.tail()
    assert committed_offsets(bootstrap, group, [topic])[(topic, 0)] < 0


async def test_unreachable_klaviyo_gives_up_after_max_duration(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, dlq = topic_factory("unreachable"), topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    factory = EventFactory()
    produce_events(bootstrap, [factory.event(topic, HANDLER, "k", n) for n in range(5)])
    nobody = f"http://127.0.0.1:{free_port()}"

    relay = caught_up_run(
        job_env(bootstrap, nobody, topic, group, dlq),
        tmp_path / "relay.log",
        "--max-duration",
        "3",
    )
    try:
        assert await relay.wait_exit() == 1, relay.tail()
    finally:
        relay.stop()
    reason = relay.line_with("error: ")
    assert reason == (
        "error: not caught up within 3s (klaviyo unreachable):"
        " 5 events left undelivered (1 partitions behind)"
    ), relay.tail()


async def test_empty_topics_exit_0_at_once(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, dlq = topic_factory("empty", partitions=2), topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        relay = caught_up_run(
            job_env(bootstrap, sandbox.base_url, topic, group, dlq), tmp_path / "relay.log"
        )
        try:
            assert await relay.wait_exit() == 0, relay.tail()
        finally:
            relay.stop()
        assert sandbox.state.events == []
    assert log_line(relay, "caught up")["events"] == 0


async def test_a_missing_topic_is_not_taken_for_an_empty_one(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    dlq, group = topic_factory("dlq"), f"relay-{uuid.uuid4().hex[:8]}"
    missing = f"typo-{uuid.uuid4().hex[:8]}"
    relay = caught_up_run(
        job_env(bootstrap, "http://127.0.0.1:9", missing, group, dlq), tmp_path / "relay.log"
    )
    try:
        assert await relay.wait_exit() == 1, relay.tail()
    finally:
        relay.stop()
    assert relay.line_with("error: ") == (
        f"error: cannot read the topics' end offsets: topics missing or not readable: {missing}"
    ), relay.tail()


async def test_a_transactionally_written_topic_is_caught_up(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, dlq = topic_factory("txn"), topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    factory = EventFactory()
    events = [factory.event(topic, HANDLER, "k", n) for n in range(5)]
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": group})
    producer.init_transactions(30)
    producer.begin_transaction()
    for event in events:
        producer.produce(topic, key=event.key.encode(), value=event.value)
    producer.commit_transaction(30)
    del producer  # destroyed now, not retrying its coordinator after the broker is gone
    # The commit marker is the partition's last entry: the group's offset stops one short. (The
    # coordinator writes it after the commit returns.)
    await wait_for(
        lambda: end_offsets(bootstrap, [topic]) == {(topic, 0): len(events) + 1},
        what="the transaction's commit marker",
    )

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        relay = caught_up_run(
            job_env(bootstrap, sandbox.base_url, topic, group, dlq),
            tmp_path / "relay.log",
            "--max-duration",
            "60",
        )
        try:
            assert await relay.wait_exit(within=90) == 0, relay.tail()
        finally:
            relay.stop()
        delivered = base_ids(sandbox.state.events)

    assert delivered == {e.event_id for e in events}
    assert committed_offsets(bootstrap, group, [topic]) == {(topic, 0): len(events)}
