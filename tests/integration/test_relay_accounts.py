"""Two Klaviyo accounts in one relay, on the real broker and two sandboxes (each its own port,
key and quota; each sandbox accepts only its own account's key, so an event sent with the wrong
account's key would halt that account instead of passing).

One run: events routed by the ``klaviyo-account`` header and by the topic map each reach their
own account exactly once; an unknown account is dead-lettered ``unknown_account``. Then account
A's key is refused mid-run: B's events keep flowing and committing, A's are parked
``account_halted``; once A's key works again, ``dlq replay --account a`` and a restart deliver
them: none lost, none twice."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Message

from consumer.settings import DEFAULT_RATE_LIMITS, EndpointLimit, WindowLimit
from dev.harness import rate_limits_json
from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import SandboxOptions, running_sandbox
from tests.conftest import TopicFactory
from tests.fixtures.cli import run_cli
from tests.fixtures.relay_harness import (
    Event,
    EventFactory,
    RelayProcess,
    base_ids,
    headers_dict,
    metrics_port,
    produce,
    read_all,
    readiness,
    relay_env,
    sandbox_events,
    set_faults,
    wait_committed_to_end,
    wait_for,
)
from tests.integration.test_relay_oauth import (
    CLIENT_ID,
    CLIENT_SECRET,
    FIRST_REFRESH_TOKEN,
    oauth_sandbox,
    refreshes,
    secrets_in,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

HEADER = "klaviyo-account"


def sandbox(key: str) -> SandboxOptions:
    return SandboxOptions(api_keys=(key,), rate_limits=None, latency_ms=(1, 3))


def produce_with(bootstrap: str, events: list[Event], account: str | None) -> None:
    headers = [(HEADER, account.encode())] if account is not None else None
    produce(bootstrap, ((e.topic, e.key.encode(), e.value) for e in events), headers)


def batch(factory: EventFactory, topic: str, handler: str, tag: str, count: int) -> list[Event]:
    return [factory.event(topic, handler, f"{tag}-{i % 7}", i) for i in range(count)]


async def halted_by_account(relay: RelayProcess) -> dict[str, float]:
    return await relay.metric_by("klaviyo_relay_halted", "account")


def two_accounts_env(
    bootstrap: str,
    sandboxes: tuple[str, str],
    topics: dict[str, str],
    group: str,
    dlq: str,
    *,
    account_topics: dict[str, str],
    **overrides: str,
) -> dict[str, str]:
    """The relay's environment for accounts a and b, each on its own sandbox (no default)."""
    url_a, url_b = sandboxes
    return relay_env(
        bootstrap,
        url_a,
        topics,
        group,
        dlq,
        KLAVIYO_API_KEY="",  # no top-level key: no default account
        KLAVIYO_ACCOUNTS='["a", "b"]',
        KLAVIYO_ACCOUNT_TOPICS=json.dumps(account_topics),
        KLAVIYO_ACCOUNT_A_API_KEY="pk_a",
        KLAVIYO_ACCOUNT_A_BASE_URL=url_a,
        KLAVIYO_ACCOUNT_B_API_KEY="pk_b",
        KLAVIYO_ACCOUNT_B_BASE_URL=url_b,
        **overrides,
    )


async def test_two_accounts_routing_isolation_and_replay_after_a_halt(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    orders = topic_factory("acct-orders", partitions=2)  # mapped to account b
    signups = topic_factory("acct-signups", partitions=2)  # routed by header only
    topics = {orders: "shop.order.placed", signups: "shop.account.created"}
    dlq = topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    factory = EventFactory()

    async with (
        running_sandbox(sandbox("pk_a")) as sandbox_a,
        running_sandbox(sandbox("pk_b")) as sandbox_b,
    ):
        urls = (sandbox_a.base_url, sandbox_b.base_url)
        env = two_accounts_env(bootstrap, urls, topics, group, dlq, account_topics={orders: "b"})
        # --- one run: the header wins, then the topic map; no account → dead letter ---------
        to_a = batch(factory, signups, "shop.account.created", "a1", 60)
        to_a += batch(factory, orders, "shop.order.placed", "a1o", 20)  # header over topic
        to_b = batch(factory, signups, "shop.account.created", "b1", 40)
        by_topic = batch(factory, orders, "shop.order.placed", "b1o", 50)  # no header: b
        nobody = batch(factory, signups, "shop.account.created", "x", 3)  # no header, no map
        stranger = batch(factory, orders, "shop.order.placed", "y", 2)  # header names none
        produce_with(bootstrap, to_a, "a")
        produce_with(bootstrap, to_b, "b")
        produce_with(bootstrap, by_topic, None)
        produce_with(bootstrap, nobody, None)
        produce_with(bootstrap, stranger, "zz")
        produced = len(to_a) + len(to_b) + len(by_topic) + len(nobody) + len(stranger)

        relay = RelayProcess(env, tmp_path / "relay-1.log")
        try:
            await wait_committed_to_end(bootstrap, group, topics, produced)
            a_ids = {e.event_id for e in to_a}
            b_ids = {e.event_id for e in to_b + by_topic}
            seen_a = await sandbox_events(sandbox_a.base_url)
            seen_b = await sandbox_events(sandbox_b.base_url)
            assert base_ids(seen_a) == a_ids and once(seen_a)
            assert base_ids(seen_b) == b_ids and once(seen_b)
            parked = read_all(bootstrap, dlq, len(nobody) + len(stranger))
            assert reasons(parked) == ["unknown_account"] * 5

            # --- account a's key refused mid-run: b goes on, a's events are parked ----------
            await set_faults(sandbox_a.base_url, {"fail_auth": True})
            more_a = batch(factory, signups, "shop.account.created", "a2", 40)
            more_b = batch(factory, signups, "shop.account.created", "b2", 40)
            more_b_topic = batch(factory, orders, "shop.order.placed", "b2o", 40)
            produce_with(bootstrap, more_a, "a")
            produce_with(bootstrap, more_b, "b")
            produce_with(bootstrap, more_b_topic, None)
            produced += len(more_a) + len(more_b) + len(more_b_topic)
            # The shared partitions commit to the end: a's events are parked, not held.
            await wait_committed_to_end(bootstrap, group, topics, produced)
            b_ids |= {e.event_id for e in more_b + more_b_topic}
            assert base_ids(await sandbox_events(sandbox_b.base_url)) == b_ids
            assert base_ids(await sandbox_events(sandbox_a.base_url)) == a_ids  # nothing new
            port = metrics_port(relay)
            assert port is not None
            assert await halted_by_account(relay) == {"a": 1.0, "b": 0.0}
            assert (await readiness(port))["ready"] is True  # the relay itself is not halted
            halt_line = relay.line_with("klaviyo refused the API key: account halted")
            assert halt_line is not None and '"account":"a"' in halt_line
            assert "pk_a" not in relay.log_text() and "pk_b" not in relay.log_text()
            letters = read_all(bootstrap, dlq, 5 + len(more_a))
            assert reasons(letters).count("account_halted") == len(more_a)
        finally:
            assert relay.stop(grace=30) == 0

        # --- the key works again: replay a's dead letters only, and restart ------------------
        await set_faults(sandbox_a.base_url, {"fail_auth": False})
        replayed = await asyncio.to_thread(run_cli, "dlq", "replay", "--account", "a", env=env)
        assert replayed.returncode == 0, replayed.stderr
        assert f"replayed {len(more_a)}" in replayed.stdout, replayed.stdout
        produced += len(more_a)
        relay = RelayProcess(env, tmp_path / "relay-2.log")
        try:
            await wait_committed_to_end(bootstrap, group, topics, produced)
            a_ids |= {e.event_id for e in more_a}
            await wait_for(
                lambda: _ids(sandbox_a.base_url, a_ids), what="a's parked events delivered"
            )
            seen_a = await sandbox_events(sandbox_a.base_url)
            assert base_ids(seen_a) == a_ids and once(seen_a)
            seen_b = await sandbox_events(sandbox_b.base_url)
            assert base_ids(seen_b) == b_ids and once(seen_b)
        finally:
            assert relay.stop(grace=30) == 0


def once(seen: list[dict[str, object]]) -> bool:
    """Every Klaviyo event the sandbox kept arrived once (none resent under a new id)."""
    return len({str(e["unique_id"]) for e in seen}) == len(seen)


def reasons(letters: list[Message]) -> list[str]:
    return [headers_dict(m)["klaviyo-relay.reason"] for m in letters]


async def _ids(base_url: str, wanted: set[str]) -> bool:
    return base_ids(await sandbox_events(base_url)) == wanted


def topic_per_account(
    topic_factory: TopicFactory, prefix: str
) -> tuple[str, str, dict[str, str], str, str]:
    """A topic for account a and one for b (handler shop.account.created), a dead-letter topic
    and a fresh group."""
    a_topic = topic_factory(f"{prefix}-a", partitions=2)
    b_topic = topic_factory(f"{prefix}-b", partitions=2)
    topics = {a_topic: "shop.account.created", b_topic: "shop.account.created"}
    return a_topic, b_topic, topics, topic_factory("dlq"), f"relay-{uuid.uuid4().hex[:8]}"


async def in_flight_of(relay: RelayProcess, account: str) -> float:
    in_flight = await relay.metric_by("klaviyo_relay_account_events_in_flight", "account")
    return in_flight.get(account, 0.0)


async def test_an_account_whose_events_wait_never_holds_back_another(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    """Account a's Klaviyo answers 503 to everything, with a backlog far over the relay's whole
    window (MAX_IN_FLIGHT 40); a and b on topics of their own. a stops at its own window (10):
    b's events keep being delivered while a's wait, and once a's Klaviyo recovers all of a's
    are delivered, none lost. (Today's one shared window: a's backlog fills it and b waits.)"""
    bootstrap = kafka_broker.bootstrap_servers
    a_topic, b_topic, topics, dlq, group = topic_per_account(topic_factory, "win")
    factory = EventFactory()

    async with (
        running_sandbox(sandbox("pk_a")) as sandbox_a,
        running_sandbox(sandbox("pk_b")) as sandbox_b,
    ):
        env = two_accounts_env(
            bootstrap,
            (sandbox_a.base_url, sandbox_b.base_url),
            topics,
            group,
            dlq,
            account_topics={a_topic: "a", b_topic: "b"},
            MAX_IN_FLIGHT="40",
            ACCOUNT_MAX_IN_FLIGHT="10",
            RETRY_CAP_SECONDS="0.5",
            RETRY_MAX_ELAPSED_SECONDS="2",
        )
        await set_faults(sandbox_a.base_url, {"error_rates": {"503": 1.0}})
        to_a = batch(factory, a_topic, "shop.account.created", "wa", 120)
        produce_with(bootstrap, to_a, None)
        relay = RelayProcess(env, tmp_path / "relay.log")
        try:
            await wait_for(lambda: metrics_port(relay) is not None, what="the relay started")
            port = metrics_port(relay)
            assert port is not None
            await wait_for(lambda: _at_least(relay, "a", 10), what="a's events wait at its window")
            # Rounds of b's events while a's Klaviyo still fails: each round is delivered.
            b_ids: set[str] = set()
            for round_ in range(3):
                to_b = batch(factory, b_topic, "shop.account.created", f"wb{round_}", 30)
                produce_with(bootstrap, to_b, None)
                b_ids |= {e.event_id for e in to_b}
                delivered = functools.partial(_ids, sandbox_b.base_url, set(b_ids))
                await wait_for(delivered, what=f"b's round {round_} delivered")
            assert await sandbox_events(sandbox_a.base_url) == []  # a's still all refused
            assert await in_flight_of(relay, "a") <= 20  # its window, plus at most one fetch
            paused = relay.line_with("account at its in-flight window")
            assert paused is not None and '"account":"a"' in paused

            await set_faults(sandbox_a.base_url, {"error_rates": {}})
            await wait_committed_to_end(bootstrap, group, topics, len(to_a) + len(b_ids))
            a_ids = {e.event_id for e in to_a}
            await wait_for(lambda: _ids(sandbox_a.base_url, a_ids), what="a's events delivered")
            seen_a = await sandbox_events(sandbox_a.base_url)
            assert base_ids(seen_a) == a_ids and once(seen_a)
            seen_b = await sandbox_events(sandbox_b.base_url)
            assert base_ids(seen_b) == b_ids and once(seen_b)
        finally:
            assert relay.stop(grace=30) == 0


async def _at_least(relay: RelayProcess, account: str, count: int) -> bool:
    return await in_flight_of(relay, account) >= count


# Account a's pace in the OAuth test: its first batch takes several token lifetimes to send.
PACED_A = {
    name: EndpointLimit(
        burst=WindowLimit(requests=50, seconds=1), steady=WindowLimit(requests=3000, seconds=60)
    )
    for name in DEFAULT_RATE_LIMITS
}


async def test_a_revoked_oauth_grant_halts_only_its_account(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    """Account a on OAuth (tokens living two seconds, the refresh token rotated at every
    refresh), b on a private key. a's grant is revoked mid-run (the merchant uninstalled the
    app): the next refresh answers invalid_grant and a alone halts with that reason. b's events
    go on being delivered; a's are parked ``account_halted``; every event is either at its
    account's Klaviyo or parked, none lost."""
    bootstrap = kafka_broker.bootstrap_servers
    a_topic, b_topic, topics, dlq, group = topic_per_account(topic_factory, "grant")
    factory = EventFactory()

    async with (
        running_sandbox(oauth_sandbox(2, rotate=True)) as sandbox_a,
        running_sandbox(sandbox("pk_b")) as sandbox_b,
    ):
        oauth = sandbox_a.sandbox.oauth
        assert oauth is not None
        url_a, url_b = sandbox_a.base_url, sandbox_b.base_url
        env = two_accounts_env(
            bootstrap,
            (url_a, url_b),
            topics,
            group,
            dlq,
            account_topics={a_topic: "a", b_topic: "b"},
            SEND_MODE="realtime",  # one request per event: a's pace stretches over tokens
        )
        env.update(
            KLAVIYO_ACCOUNT_A_API_KEY="",  # a has the OAuth app instead
            KLAVIYO_ACCOUNT_A_OAUTH_CLIENT_ID=CLIENT_ID,
            KLAVIYO_ACCOUNT_A_OAUTH_CLIENT_SECRET=CLIENT_SECRET,
            KLAVIYO_ACCOUNT_A_OAUTH_REFRESH_TOKEN=FIRST_REFRESH_TOKEN,
            KLAVIYO_ACCOUNT_A_OAUTH_TOKEN_URL=f"{url_a}/oauth/token",
            KLAVIYO_ACCOUNT_A_OAUTH_TOKEN_STORE=str(tmp_path / "a-refresh-token"),
            KLAVIYO_ACCOUNT_A_RATE_LIMITS=rate_limits_json(PACED_A),
        )
        to_a = batch(factory, a_topic, "shop.account.created", "ga", 250)
        to_b = batch(factory, b_topic, "shop.account.created", "gb", 60)
        produce_with(bootstrap, to_a + to_b, None)  # routed by the topic map
        relay = RelayProcess(env, tmp_path / "relay.log")
        try:
            # a's paced events outlast its first token: refreshed (and rotated) before revoking.
            await wait_for(lambda: oauth.counts.granted >= 2, what="a's token refreshed once")
            granted_before = oauth.counts.granted
            issued = [*oauth.refresh_tokens, *oauth.access_tokens]
            oauth.update({"revoke": True})  # the merchant uninstalled the app
            b_at_revocation = len(await sandbox_events(url_b))
            await wait_for(lambda: metrics_port(relay) is not None, what="the metrics port")
            port = metrics_port(relay)
            assert port is not None
            await wait_for(
                lambda: _halted_is(relay, {"a": 1.0, "b": 0.0}), what="a halted, b running"
            )

            # --- after the halt: b's events are delivered, a's parked -----------------------
            later_a = batch(factory, a_topic, "shop.account.created", "la", 30)
            later_b = batch(factory, b_topic, "shop.account.created", "lb", 60)
            produce_with(bootstrap, later_a + later_b, None)
            b_ids = {e.event_id for e in to_b + later_b}
            await wait_for(lambda: _ids(url_b, b_ids), what="b's events delivered after the halt")
            produced = len(to_a) + len(to_b) + len(later_a) + len(later_b)
            await wait_committed_to_end(bootstrap, group, topics, produced)

            seen_b = await sandbox_events(url_b)
            assert len(seen_b) > b_at_revocation and base_ids(seen_b) == b_ids and once(seen_b)
            assert await halted_by_account(relay) == {"a": 1.0, "b": 0.0}
            assert (await readiness(port))["ready"] is True  # the relay itself is not halted
            # Every one of a's events is at a's Klaviyo or parked, never both; the later all
            # parked (a was refreshed, then refused for good: nothing resent).
            seen_a = await sandbox_events(url_a)
            delivered_a = base_ids(seen_a)
            a_ids = {e.event_id for e in to_a + later_a}
            id_of: dict[bytes | None, str] = {e.value: e.event_id for e in to_a + later_a}
            letters = await asyncio.to_thread(read_all, bootstrap, dlq, len(later_a))
            assert set(reasons(letters)) == {"account_halted"}
            parked = [id_of[m.value()] for m in letters]
            assert len(parked) == len(set(parked))  # each parked once
            assert delivered_a | set(parked) == a_ids and not delivered_a & set(parked)
            assert {e.event_id for e in later_a} <= set(parked) and once(seen_a)
            assert granted_before >= 2
            counted = await refreshes(relay)
            assert counted.get("ok", 0) >= 2 and counted.get("invalid_grant", 0) >= 1
            halt_line = relay.line_with("account halted")
            assert halt_line is not None and '"account":"a"' in halt_line
            assert "invalid_grant" in halt_line and "uninstalled" in halt_line
            assert "pk_b" not in relay.log_text()
            assert secrets_in(relay, *issued) == []
        finally:
            assert relay.stop(grace=30) == 0


async def _halted_is(relay: RelayProcess, wanted: dict[str, float]) -> bool:
    return await halted_by_account(relay) == wanted
