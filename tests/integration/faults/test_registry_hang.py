"""A schema registry that accepts connections and never answers, with Confluent-framed events:
the events wait (nothing dead-lettered, nothing delivered out of turn), the relay stays
responsive (/healthz, SIGTERM); once the registry answers, everything is delivered."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from consumer.schemas import default_schemas_dir, load_store
from consumer.topics import CONTRACT_TOPICS
from dev.kafka_broker import KafkaBroker
from tests.fixtures.relay_harness import Event, metrics_port, read_all, sandbox_stats
from tests.integration.faults.scenario import RECORD_TYPES, Poison, Scenario

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

SINGLE_OBJECT_HEADER = 10  # c3 01 + the 8-byte fingerprint
# Schema id per record type, as a registry would have handed them out.
SCHEMA_IDS = {record_type: n for n, record_type in enumerate(RECORD_TYPES, start=101)}


class SilentRegistry:
    """``GET /schemas/ids/{id}`` of a Confluent registry; until :meth:`answer`, every request is
    accepted and left unanswered."""

    def __init__(self) -> None:
        store = load_store(default_schemas_dir())
        self.schemas = {
            schema_id: store.current(CONTRACT_TOPICS[record_type]).to_json()
            for record_type, schema_id in SCHEMA_IDS.items()
        }
        self.requests = 0
        self._answering = asyncio.Event()

    def answer(self) -> None:
        self._answering.set()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        await self._answering.wait()
        return web.json_response({"schema": self.schemas[int(request.match_info["id"])]})


@asynccontextmanager
async def serving(registry: SilentRegistry) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/schemas/ids/{id}", registry.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        registry.answer()
        await runner.cleanup()


def confluent(event: Event) -> Event:
    """The same event in Confluent framing: 00, the schema id, the Avro body."""
    schema_id = SCHEMA_IDS[event.handler_topic].to_bytes(4, "big")
    body = event.value[SINGLE_OBJECT_HEADER:]
    return dataclasses.replace(event, value=b"\x00" + schema_id + body)


async def healthz(port: int) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        return response.status


async def test_a_registry_that_never_answers(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    registry = SilentRegistry()
    async with serving(registry) as registry_url:
        with Scenario(kafka_broker, tmp_path, partitions=2) as scenario:
            scenario.produce([confluent(e) for e in scenario.events(100)])
            await scenario.start_sandbox()
            env = {"SCHEMA_REGISTRY_URL": registry_url, "SCHEMA_REGISTRY_TIMEOUT_SECONDS": "1"}
            relay = scenario.start_relay(**env)
            await scenario.wait(lambda: registry.requests > 0, "the relay to ask the registry")
            await scenario.wait(lambda: metrics_port(relay) is not None, "the relay to start")
            port = metrics_port(relay)
            assert port is not None
            # Responsive while its lookups hang: health answers, again and again.
            for _ in range(3):
                assert await healthz(port) == 200
            assert (await sandbox_stats(scenario.base_url))["events"] == 0  # all wait
            # Waiting is not failing: nothing is dead-lettered.
            assert await asyncio.to_thread(read_all, scenario.bootstrap, scenario.dlq, 0) == []
            # SIGTERM with lookups hanging: exit 0 (stop_relay asserts it).
            await scenario.stop_relay(relay)
            registry.answer()
            more = [confluent(e) for e in scenario.events(60)]
            scenario.produce([*more[:30], Poison("key-2"), *more[30:]])
            scenario.start_relay(**env)
            await scenario.verdict()
