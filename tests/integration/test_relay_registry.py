"""A schema registry that accepts connections and never answers holds the Confluent-framed
events (nothing dead-lettered, nothing committed past them) while the relay stays responsive:
/healthz answers, an id it already knows is still delivered, SIGTERM exits 0. When the registry
answers, the events are delivered. An id the registry does not know yet (a lagging replica) is
asked again and delivered, not dead-lettered.

Real broker, the sandbox, the relay as a subprocess, a registry stand-in in this test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from consumer.schemas import default_schemas_dir, load_store
from consumer.topics import CONTRACT_TOPICS
from dev.kafka_broker import KafkaBroker
from klaviyo_sandbox import RunningSandbox, SandboxOptions, running_sandbox
from tests.conftest import TopicFactory
from tests.fixtures.relay_harness import (
    Event,
    EventFactory,
    RelayProcess,
    committed_offsets,
    end_offsets,
    metrics_port,
    produce,
    relay_env,
    wait_for,
)

pytestmark = pytest.mark.kafka

HANDLER_TOPIC = "shop.account.created"
SINGLE_OBJECT_HEADER = 10


class RegistryStandIn:
    """``GET /schemas/ids/{id}`` of a Confluent schema registry, every id the current schema
    of the record. ``silent``: accept and never answer. ``not_found[id]``: answer 404 (error
    code 40403) that many times first."""

    def __init__(self) -> None:
        self.schema = load_store(default_schemas_dir()).current(CONTRACT_TOPICS[HANDLER_TOPIC])
        self.requests = 0
        self.not_found: dict[int, int] = {}
        self._answering = asyncio.Event()
        self._answering.set()

    def go_silent(self) -> None:
        self._answering.clear()

    def answer(self) -> None:
        self._answering.set()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        await self._answering.wait()
        schema_id = int(request.match_info["id"])
        if self.not_found.get(schema_id, 0) > 0:
            self.not_found[schema_id] -= 1
            body = {"error_code": 40403, "message": f"Schema {schema_id} not found"}
            return web.json_response(body, status=404)
        return web.json_response({"schema": self.schema.to_json()})


@asynccontextmanager
async def running_registry(registry: RegistryStandIn) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/schemas/ids/{id}", registry.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        registry.answer()
        await runner.cleanup()


def confluent(event: Event, schema_id: int) -> tuple[str, bytes, bytes]:
    body = event.value[SINGLE_OBJECT_HEADER:]
    return event.topic, event.key.encode(), b"\x00" + schema_id.to_bytes(4, "big") + body


async def healthz(port: int) -> int:
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        return response.status


def delivered_ids(events: list[dict[str, object]]) -> set[str]:
    return {str(e["unique_id"]) for e in events}


async def committed(bootstrap: str, group: str, topic: str) -> dict[tuple[str, int], int]:
    # Off this loop: the registry stand-in answers on it.
    return await asyncio.to_thread(committed_offsets, bootstrap, group, [topic])


def committed_at(
    bootstrap: str, group: str, topic: str, ends: dict[tuple[str, int], int]
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await committed(bootstrap, group, topic) == ends

    return check


@dataclass
class Scenario:
    bootstrap: str
    topic: str
    dlq: str
    group: str
    sandbox: RunningSandbox
    env: dict[str, str]


@asynccontextmanager
async def scenario(
    kafka_broker: KafkaBroker,
    topic_factory: TopicFactory,
    registry: RegistryStandIn,
    **overrides: str,
) -> AsyncIterator[Scenario]:
    """Fresh topics and group, the registry stand-in and the sandbox running, the relay's env."""
    bootstrap = kafka_broker.bootstrap_servers
    topic = topic_factory("sr")
    dlq = topic_factory("dlq")
    group = f"relay-{uuid.uuid4().hex[:8]}"
    async with (
        running_registry(registry) as registry_url,
        running_sandbox(SandboxOptions(rate_limits=None)) as sandbox,
    ):
        env = relay_env(
            bootstrap,
            sandbox.base_url,
            {topic: HANDLER_TOPIC},
            group,
            dlq,
            SCHEMA_REGISTRY_URL=registry_url,
            **overrides,
        )
        yield Scenario(bootstrap, topic, dlq, group, sandbox, env)


async def test_silent_registry_holds_events_and_the_relay_stays_responsive(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    factory = EventFactory()
    registry = RegistryStandIn()
    registry.go_silent()
    async with scenario(
        kafka_broker,
        topic_factory,
        registry,
        SCHEMA_REGISTRY_TIMEOUT_SECONDS="1",
        DRAIN_TIMEOUT_SECONDS="5",
    ) as s:
        bootstrap, topic, group, sandbox = s.bootstrap, s.topic, s.group, s.sandbox
        held = [factory.event(topic, HANDLER_TOPIC, f"held-{n}", n) for n in range(4)]
        produce(bootstrap, [confluent(e, 1) for e in held])
        relay = RelayProcess(s.env, tmp_path / "relay.log")
        try:
            await wait_for(lambda: metrics_port(relay) is not None, what="relay started")
            port = metrics_port(relay)
            assert port is not None

            async def asked_again_while_healthy() -> bool:
                assert await healthz(port) == 200
                # The first lookup gave up (client timeout, retries) and the event asked again.
                return registry.requests > 3

            await wait_for(asked_again_while_healthy, what="the registry asked again")
            assert await healthz(port) == 200
            assert sum(end_offsets(bootstrap, [s.dlq]).values()) == 0
            assert set((await committed(bootstrap, group, topic)).values()) <= {-1001, 0}

            registry.answer()
            ends = end_offsets(bootstrap, [topic])
            await wait_for(
                committed_at(bootstrap, group, topic, ends), what="held events committed"
            )
            assert delivered_ids(sandbox.state.events) == {e.event_id for e in held}

            # Silent again, and a new schema id: its event waits; a known id still flows.
            registry.go_silent()
            asked = registry.requests
            waiting = factory.event(topic, HANDLER_TOPIC, "waiting", 10)
            known = factory.event(topic, HANDLER_TOPIC, "known", 11)
            produce(bootstrap, [confluent(waiting, 2), confluent(known, 1)])
            await wait_for(
                lambda: known.event_id in delivered_ids(sandbox.state.events),
                what="the event of a known schema id delivered",
            )
            await wait_for(lambda: registry.requests > asked, what="the new id looked up")
            assert await healthz(port) == 200

            relay.terminate()
            assert await relay.wait_exit() == 0
        finally:
            relay.stop()
        assert waiting.event_id not in delivered_ids(sandbox.state.events)
        assert sum(end_offsets(bootstrap, [s.dlq]).values()) == 0
    assert not relay.logged("event dead-lettered")


async def test_id_the_registry_does_not_know_yet_is_delivered(
    kafka_broker: KafkaBroker, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    factory = EventFactory()
    registry = RegistryStandIn()
    registry.not_found[7] = 2  # a replica that has not caught up yet
    async with scenario(kafka_broker, topic_factory, registry) as s:
        events = [factory.event(s.topic, HANDLER_TOPIC, f"lag-{n}", n) for n in range(3)]
        produce(s.bootstrap, [confluent(e, 7) for e in events])
        ends = end_offsets(s.bootstrap, [s.topic])
        relay = RelayProcess(s.env, tmp_path / "relay.log")
        try:
            await wait_for(committed_at(s.bootstrap, s.group, s.topic, ends), what="committed")
            relay.terminate()
            assert await relay.wait_exit() == 0
        finally:
            relay.stop()
        assert delivered_ids(s.sandbox.state.events) == {e.event_id for e in events}
        assert sum(end_offsets(s.bootstrap, [s.dlq]).values()) == 0
    assert registry.not_found[7] == 0
