"""OAuth on the real broker and the sandbox: access tokens that expire every two seconds, a
refresh token rotated at every refresh, and a SIGKILL mid-run. Nothing is lost or doubled, the
relay never halts, and every refresh is counted. A revoked grant (the app uninstalled) halts
the relay with a reason that says so."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from consumer.settings import DEFAULT_RATE_LIMITS, EndpointLimit, WindowLimit
from dev.harness import rate_limits_json
from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import SandboxOptions, running_sandbox
from klaviyo_sandbox.oauth import OAuthOptions
from tests.conftest import TopicFactory
from tests.fixtures.relay_harness import (
    EventFactory,
    RelayProcess,
    make_events,
    metrics_port,
    produce_events,
    readiness,
    relay_env,
    wait_committed_to_end,
    wait_for,
)
from tests.integration.test_relay_lifecycle import delivered_ids

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CLIENT_ID, CLIENT_SECRET, FIRST_REFRESH_TOKEN = "relay-app", "cs_sandbox_secret", "rt_first"
PACED = {
    name: EndpointLimit(
        burst=WindowLimit(requests=150, seconds=1), steady=WindowLimit(requests=9000, seconds=60)
    )
    for name in DEFAULT_RATE_LIMITS
}


def oauth_sandbox(lifetime: int, *, rotate: bool) -> SandboxOptions:
    return SandboxOptions(
        api_keys=(),  # no private key works: only the tokens the token endpoint issued
        rate_limits=None,
        latency_ms=(1, 4),
        oauth=OAuthOptions(
            clients={CLIENT_ID: CLIENT_SECRET},
            refresh_tokens=(FIRST_REFRESH_TOKEN,),
            token_lifetime=lifetime,
            rotate=rotate,
        ),
    )


def oauth_relay_env(
    bootstrap: str,
    base_url: str,
    topics: dict[str, str],
    group: str,
    dlq: str,
    *,
    store: Path,
    **more: str,
) -> dict[str, str]:
    """The relay's environment with the sandbox's OAuth app instead of a private key."""
    return relay_env(
        bootstrap,
        base_url,
        topics,
        group,
        dlq,
        SEND_MODE="realtime",
        KLAVIYO_API_KEY="",
        KLAVIYO_OAUTH_CLIENT_ID=CLIENT_ID,
        KLAVIYO_OAUTH_CLIENT_SECRET=CLIENT_SECRET,
        KLAVIYO_OAUTH_REFRESH_TOKEN=FIRST_REFRESH_TOKEN,
        KLAVIYO_OAUTH_TOKEN_URL=f"{base_url}/oauth/token",
        KLAVIYO_OAUTH_TOKEN_STORE=str(store),
        **more,
    )


async def refreshes(relay: RelayProcess) -> dict[str, float]:
    """``klaviyo_relay_oauth_refreshes_total`` by result, scraped from the relay."""
    return await relay.metric_by("klaviyo_relay_oauth_refreshes_total", "result")


def secrets_in(relay: RelayProcess, *tokens: str) -> list[str]:
    """Which of the client secret, the first refresh token and ``tokens`` the log shows."""
    text = relay.log_text()
    return [s for s in (CLIENT_SECRET, FIRST_REFRESH_TOKEN, *tokens) if s in text]


async def test_short_lived_rotating_tokens_and_a_crash_lose_nothing(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topics = {
        topic_factory("oauth-orders", partitions=3): "shop.order.placed",
        topic_factory("oauth-accounts", partitions=2): "shop.account.updated",
    }
    dlq = topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    events = make_events(EventFactory(), topics, 3000, 150, seed=16)
    produce_events(bootstrap, events)
    wanted = {e.event_id for e in events}
    store = tmp_path / "refresh-token"

    async with running_sandbox(oauth_sandbox(2, rotate=True)) as sandbox:
        oauth = sandbox.sandbox.oauth
        assert oauth is not None
        env = oauth_relay_env(
            bootstrap,
            sandbox.base_url,
            topics,
            group,
            dlq,
            store=store,
            MAX_IN_FLIGHT="100",
            # Paced, so the run outlasts many token lifetimes on any machine (an idle relay
            # has no reason to refresh).
            RATE_LIMITS=rate_limits_json(PACED),
        )
        first = RelayProcess(env, tmp_path / "relay-first.log")
        try:
            # Past a few token lifetimes and rotations before the crash.
            await wait_for(
                lambda: (
                    oauth.counts.rotated >= 3
                    and len(delivered_ids(sandbox.state.events)) >= 0.3 * len(wanted)
                ),
                what="30% delivered and three rotations",
            )
            first.kill()
        finally:
            first.stop()
        granted_before = oauth.counts.granted
        last = RelayProcess(env, tmp_path / "relay-last.log")
        try:
            # Off the loop: the sandbox serves on it, and a stalled Klaviyo ages tokens.
            await wait_committed_to_end(bootstrap, group, topics, len(events))
            port = metrics_port(last)
            assert port is not None
            # Every grant the sandbox made to this process is counted once as "ok".
            counted: dict[str, float] = {}

            async def every_grant_counted() -> bool:
                counted.update(await refreshes(last))
                return counted.get("ok", 0) == oauth.counts.granted - granted_before

            await wait_for(every_grant_counted, what="the relay's refreshes match the grants")
            body = await readiness(port)
            assert body["halted"] is False, body
            last.terminate()
            assert await last.wait_exit() == 0
        finally:
            last.stop()
        accepted = list(sandbox.state.events)
    assert delivered_ids(accepted) == wanted
    identities = [(e["metric"], e["unique_id"]) for e in accepted]
    assert len(identities) == len(set(identities))  # resends were deduplicated, not doubled
    assert counted.get("ok", 0) >= 2  # the restarted relay itself went through refreshes
    assert counted.get("invalid_grant", 0) == 0
    assert oauth.counts.invalid_grant == 0  # the restart used the rotated token from the store
    assert oauth.counts.rotated >= 5
    for relay in (first, last):
        assert "halted" not in relay.log_text(), relay.tail()
        assert secrets_in(relay, *oauth.refresh_tokens, *oauth.access_tokens) == []


async def test_a_revoked_grant_halts_with_the_reason(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = topic_factory("oauth-revoked")
    topics = {topic: "shop.order.placed"}
    dlq = topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    factory = EventFactory()
    before = make_events(factory, topics, 20, 5, seed=1)
    produce_events(bootstrap, before)

    async with running_sandbox(oauth_sandbox(3600, rotate=False)) as sandbox:
        oauth = sandbox.sandbox.oauth
        assert oauth is not None
        env = oauth_relay_env(
            bootstrap, sandbox.base_url, topics, group, dlq, store=tmp_path / "rt"
        )
        relay = RelayProcess(env, tmp_path / "relay.log")
        try:
            await wait_for(
                lambda: delivered_ids(sandbox.state.events) == {e.event_id for e in before},
                what="the first events delivered",
            )
            issued = [*oauth.refresh_tokens, *oauth.access_tokens]
            oauth.update({"revoke": True})  # the merchant uninstalled the app
            after = [factory.event(topic, topics[topic], "cust-1", 100 + n) for n in range(5)]
            produce_events(bootstrap, after)
            port = metrics_port(relay)
            assert port is not None
            body: dict[str, object] = {}

            async def halted() -> bool:
                body.update(await readiness(port))
                return body["halted"] is True

            await wait_for(halted, what="the relay halted")
            assert body["status"] == 503
            missing = body["missing"]
            assert isinstance(missing, list)
            assert any("uninstalled" in reason for reason in missing), body
            assert (await refreshes(relay)).get("invalid_grant") == 1
            line = relay.line_with("invalid_grant")
            assert line is not None and json.loads(line)["level"] == "error"
            assert not delivered_ids(sandbox.state.events) & {e.event_id for e in after}
            assert secrets_in(relay, *issued) == []
        finally:
            relay.stop()
