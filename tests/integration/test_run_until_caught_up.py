"""``run --until-caught-up`` (Klaviyo's hourly script, as a job) on the real broker and the
sandbox: it delivers (or dead-letters) and commits what the topics held at start and exits 0,
also on a transactionally written topic; it does not wait for what is produced after its
start; it exits 1 with one line saying why when Klaviyo refuses the key, stays unreachable past
``--max-duration`` or a topic is missing, and while another member of its group holds
partitions back; empty topics end it at once with 0."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from confluent_kafka import Producer

from dev.harness import RELAY_COMMAND, free_port
from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import SandboxOptions, running_sandbox
from klaviyo_sandbox.facts import Limit, Window
from tests.conftest import TopicFactory
from tests.fixtures.relay_harness import (
    WAIT,
    Event,
    EventFactory,
    RelayProcess,
    base_ids,
    committed_offsets,
    create_event_limited,
    end_offsets,
    produce,
    produce_events,
    relay_env,
    set_faults,
    wait_for,
)
from tests.integration.test_relay_oauth import (
    CLIENT_ID,
    CLIENT_SECRET,
    FIRST_REFRESH_TOKEN,
    oauth_sandbox,
)

pytestmark = pytest.mark.kafka

HANDLER = "shop.order.placed"


@dataclass(frozen=True)
class Job:
    """One topic, its dead-letter topic and a fresh group, run with ``--until-caught-up``."""

    bootstrap: str
    topic: str
    dlq: str
    group: str
    log: Path

    @classmethod
    def make(
        cls, broker: KafkaBroker, topics: TopicFactory, log: Path, name: str, partitions: int = 1
    ) -> Job:
        group = f"relay-{uuid.uuid4().hex[:8]}"
        topic = topics(name, partitions=partitions)
        return cls(broker.bootstrap_servers, topic, topics("dlq"), group, log)

    def produce(self, count: int, keys: int = 5) -> list[Event]:
        factory = EventFactory()
        events = [factory.event(self.topic, HANDLER, f"c{n % keys}", n) for n in range(count)]
        produce_events(self.bootstrap, events)
        return events

    def start(self, base_url: str, *extra: str, **settings: str) -> RelayProcess:
        # SEND_MODE explicit: the run must not depend on the default send mode (``settings``
        # may name another, or drop it with "" to run on the default).
        env = relay_env(
            self.bootstrap,
            base_url,
            {self.topic: HANDLER},
            self.group,
            self.dlq,
            **{"SEND_MODE": "realtime", **settings},
        )
        if not env["SEND_MODE"]:
            del env["SEND_MODE"]
        return RelayProcess(env, self.log, command=(*RELAY_COMMAND, "--until-caught-up", *extra))

    async def run(
        self, base_url: str, *extra: str, within: float = WAIT, **settings: str
    ) -> RelayProcess:
        """A run to its end (its exit status in ``process.returncode``)."""
        relay = self.start(base_url, *extra, **settings)
        try:
            await relay.wait_exit(within)
        finally:
            relay.stop()
        return relay

    def ends(self) -> dict[tuple[str, int], int]:
        return end_offsets(self.bootstrap, [self.topic])

    def committed(self) -> dict[tuple[str, int], int]:
        return committed_offsets(self.bootstrap, self.group, [self.topic])


def exit_code(relay: RelayProcess) -> int:
    return relay.process.returncode


def log_line(relay: RelayProcess, message: str) -> dict[str, object]:
    lines = [line for line in relay.log_lines() if line.get("message") == message]
    assert len(lines) == 1, relay.tail()
    return lines[0]


async def test_caught_up_run_delivers_commits_and_exits_0(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    job = Job.make(kafka_broker, topic_factory, tmp_path / "relay.log", "hourly", partitions=3)
    events = job.produce(60, keys=7)
    # Parked on the dead-letter topic, it counts as done.
    produce(job.bootstrap, [(job.topic, b"c0", b"garbage, not Avro")])
    ends = job.ends()

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        relay = await job.run(sandbox.base_url)
        delivered = base_ids(sandbox.state.events)

    assert exit_code(relay) == 0, relay.tail()
    assert delivered == {e.event_id for e in events}
    assert job.committed() == ends
    assert sum(end_offsets(job.bootstrap, [job.dlq]).values()) == 1
    assert log_line(relay, "caught up")["events"] == len(events) + 1


async def test_caught_up_run_in_auto_mode_uses_both_endpoints_commits_and_exits_0(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    """The CronJob's run on the default send mode: a short Create Event quota sends part of the
    backlog realtime and the rest in bulk jobs (whose linger must not outlive the run), all of
    it committed before exit 0; alone in its group, the run takes the whole quota (share 1.0,
    with no RATE_LIMIT_SHARE, as the chart's CronJob runs)."""
    job = Job.make(kafka_broker, topic_factory, tmp_path / "relay.log", "hourly-auto", partitions=3)
    events = job.produce(150, keys=11)
    ends = job.ends()
    short = {
        "create_event": Limit(
            burst=Window(requests=5, seconds=1.0), steady=Window(requests=20, seconds=4.0)
        )
    }

    async with running_sandbox(SandboxOptions(rate_limits=short)) as sandbox:
        relay = await job.run(
            sandbox.base_url,
            SEND_MODE="",  # the default: auto
            RATE_LIMITS=create_event_limited((5, 1.0), (20, 4.0)),
            # Produced before the run started: once older than the bound (a slow start on a
            # loaded machine) the whole backlog is stale and goes in bulk jobs; the quota's
            # split between the two endpoints is what is tested here.
            AUTO_REALTIME_MAX_WAIT_SECONDS="3600",
        )
        received = list(sandbox.state.events)
        throttled = dict(sandbox.sandbox.throttled)

    assert exit_code(relay) == 0, relay.tail()
    assert log_line(relay, "relay started")["mode"] == "auto"
    ids = [str(e["unique_id"]) for e in received]
    assert len(ids) == len(set(ids))  # each Klaviyo event sent once, on one path
    assert base_ids(received) == {e.event_id for e in events}
    used = {str(e["endpoint"]) for e in received}
    assert used == {"create_event", "bulk_create_events"}, used
    assert throttled.get("create_event", 0) == 0
    assert job.committed() == ends
    assert log_line(relay, "caught up")["events"] == len(events)
    shares = [line["share"] for line in relay.log_lines() if line.get("message") == "quota share"]
    # 1.0 from the first assignment (0 again only as it leaves the group at the end).
    assert shares[0] == 1.0 and shares[-1] in (0.0, 1.0), shares


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
    job = Job.make(kafka_broker, topic_factory, tmp_path / "relay.log", "late", partitions=2)
    events = job.produce(40)
    ends = job.ends()

    # Klaviyo refuses until the late events flow, so the run is still busy when they come.
    outage = SandboxOptions(rate_limits=None, error_rates={503: 1.0})
    async with running_sandbox(outage) as sandbox:
        relay = job.start(sandbox.base_url)
        try:
            await wait_for(lambda: relay.logged("catching up"), what="the run's targets")
            # Events keep arriving for as long as the run lasts: a run that chased the end
            # offsets would not end while they do.
            with producing(job.bootstrap, job.topic, EventFactory()) as first:
                await wait_for(first.is_set, what="the late producer's first event")
                await set_faults(sandbox.base_url, {"error_rates": {}})
                assert await relay.wait_exit() == 0, relay.tail()
        finally:
            relay.stop()
        delivered = base_ids(sandbox.state.events)

    assert {e.event_id for e in events} <= delivered
    committed = job.committed()
    assert all(committed[tp] >= end for tp, end in ends.items()), (committed, ends)
    assert log_line(relay, "catching up")["events"] == len(events)


async def test_refused_api_key_exits_1_with_the_reason(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    job = Job.make(kafka_broker, topic_factory, tmp_path / "relay.log", "refused")
    job.produce(10)

    async with running_sandbox(SandboxOptions(rate_limits=None, fail_auth=True)) as sandbox:
        relay = await job.run(sandbox.base_url)
        assert sandbox.state.events == []

    assert exit_code(relay) == 1, relay.tail()
    assert relay.line_with("error: ") == (
        "error: klaviyo refused the API key (401/403):"
        " 10 events left undelivered (1 partitions behind)"
    ), relay.tail()
    assert job.committed()[(job.topic, 0)] < 0


async def test_an_uninstalled_oauth_app_exits_1_saying_so(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    """A CronJob run of an OAuth app the merchant uninstalled: the one line names the revoked
    grant (the fix is a reinstall), not an API key the run does not use."""
    job = Job.make(kafka_broker, topic_factory, tmp_path / "relay.log", "oauth-revoked")
    job.produce(10)

    async with running_sandbox(oauth_sandbox(3600, rotate=False)) as sandbox:
        assert sandbox.sandbox.oauth is not None
        sandbox.sandbox.oauth.update({"revoke": True})
        relay = await job.run(
            sandbox.base_url,
            KLAVIYO_API_KEY="",
            KLAVIYO_OAUTH_CLIENT_ID=CLIENT_ID,
            KLAVIYO_OAUTH_CLIENT_SECRET=CLIENT_SECRET,
            KLAVIYO_OAUTH_REFRESH_TOKEN=FIRST_REFRESH_TOKEN,
            KLAVIYO_OAUTH_TOKEN_URL=f"{sandbox.base_url}/oauth/token",
        )
        assert sandbox.state.events == []

    assert exit_code(relay) == 1, relay.tail()
    line = relay.line_with("error: ")
    assert line is not None and "(invalid_grant)" in line, relay.tail()
    assert "API key" not in line
    assert line.endswith(": 10 events left undelivered (1 partitions behind)"), line
    assert job.committed()[(job.topic, 0)] < 0


async def test_unreachable_klaviyo_gives_up_after_max_duration(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    job = Job.make(kafka_broker, topic_factory, tmp_path / "relay.log", "unreachable")
    job.produce(5)

    relay = await job.run(f"http://127.0.0.1:{free_port()}", "--max-duration", "3")

    assert exit_code(relay) == 1, relay.tail()
    assert relay.line_with("error: ") == (
        "error: not caught up within 3s (klaviyo unreachable):"
        " 5 events left undelivered (1 partitions behind)"
    ), relay.tail()


async def test_empty_topics_exit_0_at_once(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    job = Job.make(kafka_broker, topic_factory, tmp_path / "relay.log", "empty", partitions=2)

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        relay = await job.run(sandbox.base_url)
        assert sandbox.state.events == []

    assert exit_code(relay) == 0, relay.tail()
    assert log_line(relay, "caught up")["events"] == 0


async def test_a_missing_topic_is_not_taken_for_an_empty_one(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    job = Job.make(kafka_broker, topic_factory, tmp_path / "relay.log", "unused")
    missing = replace(job, topic=f"typo-{uuid.uuid4().hex[:8]}")

    relay = await missing.run("http://127.0.0.1:9")

    assert exit_code(relay) == 1, relay.tail()
    assert relay.line_with("error: ") == (
        "error: cannot read the topics' end offsets: topics missing or not readable:"
        f" {missing.topic}"
    ), relay.tail()


async def test_a_transactionally_written_topic_is_caught_up(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    job = Job.make(kafka_broker, topic_factory, tmp_path / "relay.log", "txn")
    factory = EventFactory()
    events = [factory.event(job.topic, HANDLER, "k", n) for n in range(5)]
    producer = Producer({"bootstrap.servers": job.bootstrap, "transactional.id": job.group})
    producer.init_transactions(30)
    producer.begin_transaction()
    for event in events:
        producer.produce(job.topic, key=event.key.encode(), value=event.value)
    producer.commit_transaction(30)
    del producer  # destroyed now, not retrying its coordinator after the broker is gone
    # The commit marker is the partition's last entry: the group's offset stops one short. (The
    # coordinator writes it after the commit returns.)
    await wait_for(
        lambda: job.ends() == {(job.topic, 0): len(events) + 1},
        what="the transaction's commit marker",
    )

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        relay = await job.run(sandbox.base_url, "--max-duration", "60", within=90)
        delivered = base_ids(sandbox.state.events)

    assert exit_code(relay) == 0, relay.tail()
    assert delivered == {e.event_id for e in events}
    assert job.committed() == {(job.topic, 0): len(events)}


async def test_partitions_another_member_holds_back_keep_the_run_from_exiting_0(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    job = Job.make(kafka_broker, topic_factory, tmp_path / "relay.log", "shared", partitions=4)
    events = job.produce(40, keys=20)

    async with running_sandbox(SandboxOptions(rate_limits=None)) as sandbox:
        # An always-on member of the same group whose key Klaviyo refuses: it keeps the
        # partitions it is given and commits nothing.
        env = relay_env(
            job.bootstrap,
            sandbox.base_url,
            {job.topic: HANDLER},
            job.group,
            job.dlq,
            SEND_MODE="realtime",
            KLAVIYO_API_KEY="pk_refused",
        )
        other = RelayProcess(env, tmp_path / "other.log")
        try:
            await wait_for(lambda: other.logged("partitions assigned"), what="the other member")
            relay = await job.run(sandbox.base_url, "--max-duration", "20", within=90)
        finally:
            other.stop()
        delivered = base_ids(sandbox.state.events)

    assert exit_code(relay) == 1, relay.tail()
    reason = relay.line_with("error: ") or ""
    assert reason.startswith("error: not caught up within 20s: "), relay.tail()
    # The run relayed its own share; the other member's partitions stayed behind.
    assert 0 < len(delivered) < len(events)
    committed = job.committed()
    assert sum(1 for offset in committed.values() if offset < 0) >= 1
