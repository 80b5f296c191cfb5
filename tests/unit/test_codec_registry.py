"""Schema registry lookups off the event loop: a worker thread per uncached id, a deadline, one
fetch shared by every waiting event, retries on an id the registry does not know yet, a client
with a timeout and credentials from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryError
from pydantic import SecretStr

import consumer.codec
from consumer.codec import Decoder, Encoder
from consumer.errors import RegistryUnavailable, SchemaNotFound, UnknownSchema
from consumer.schema_registry import client_config, registry_client
from consumer.schemas import SchemaStore
from consumer.settings import Settings, SettingsError, load_settings
from tests.fixtures.contract import account_created

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
RECORD = "shop.events.AccountCreated"
SCHEMA_ID = 7


@pytest.fixture(scope="module")
def store() -> SchemaStore:
    return SchemaStore.load(SCHEMAS)


def framed(store: SchemaStore, schema_id: int = SCHEMA_ID) -> bytes:
    body = Encoder(store).encode(RECORD, account_created())[10:]  # past the single-object header
    return b"\x00" + schema_id.to_bytes(4, "big") + body


class FakeRegistry:
    """Answers ``get_schema`` from a worker thread once ``gate`` is open; the first
    ``not_found`` calls answer 404 (a replica that has not caught up)."""

    def __init__(self, store: SchemaStore, *, not_found: int = 0, open_gate: bool = True) -> None:
        self.schema = Schema(store.current(RECORD).to_json(), "AVRO")
        self.not_found = not_found
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.calls = 0
        self.threads: set[str] = set()

    def get_schema(self, schema_id: int) -> Schema:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        self.gate.wait()
        if self.calls <= self.not_found:
            raise SchemaRegistryError(404, 40403, "Schema not found")
        return self.schema


def decoder(registry: FakeRegistry, **options: Any) -> Decoder:
    options.setdefault("not_found_delays", (0.01, 0.01, 0.01))
    return Decoder(SchemaStore.load(SCHEMAS), registry, **options)  # type: ignore[arg-type]


async def test_lookup_runs_off_the_loop_and_is_shared(store: SchemaStore) -> None:
    registry = FakeRegistry(store, open_gate=False)
    codec = decoder(registry)
    waiting = [asyncio.create_task(codec.decode_async(framed(store))) for _ in range(5)]
    # The loop goes on while the registry keeps them waiting (on the loop, this would hang).
    done, _ = await asyncio.wait(waiting, timeout=0.05)
    assert not done
    registry.gate.set()
    events = await asyncio.gather(*waiting)
    assert {e.datum["event_id"] for e in events} == {account_created()["event_id"]}
    assert registry.calls == 1
    assert threading.current_thread().name not in registry.threads


async def test_cached_id_is_decoded_without_a_thread(
    store: SchemaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = FakeRegistry(store)
    codec = decoder(registry)
    await codec.decode_async(framed(store))

    def no_thread(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a cached id must not go to a thread")

    monkeypatch.setattr(consumer.codec, "in_daemon_thread", no_thread)
    event = await codec.decode_async(framed(store))
    assert event.record_name == RECORD
    assert registry.calls == 1


async def test_silent_registry_is_unavailable_and_the_next_try_joins_the_same_fetch(
    store: SchemaStore,
) -> None:
    registry = FakeRegistry(store, open_gate=False)
    codec = decoder(registry, lookup_deadline=0.05)
    for _ in range(2):
        with pytest.raises(RegistryUnavailable, match="no answer within") as caught:
            await codec.decode_async(framed(store))
        assert caught.value.reason == "registry_unavailable"
    assert registry.calls == 1  # one fetch in flight, not one per try
    registry.gate.set()
    while True:  # as the relay does: try again until the registry answers
        with contextlib.suppress(RegistryUnavailable):
            assert (await codec.decode_async(framed(store))).record_name == RECORD
            break
    assert registry.calls == 1  # the fetch in flight answered the later try


async def test_unknown_id_is_asked_again_before_it_is_unknown(store: SchemaStore) -> None:
    registry = FakeRegistry(store, not_found=3)
    event = await decoder(registry).decode_async(framed(store))
    assert event.record_name == RECORD
    assert registry.calls == 4


async def test_id_never_found_is_unknown_schema(store: SchemaStore) -> None:
    registry = FakeRegistry(store, not_found=100)
    with pytest.raises(SchemaNotFound) as caught:
        await decoder(registry).decode_async(framed(store))
    assert isinstance(caught.value, UnknownSchema)
    assert caught.value.reason == "unknown_schema"
    assert registry.calls == 4  # the first try and one per delay


async def test_real_client_gives_up_on_a_silent_registry(store: SchemaStore) -> None:
    """The client built from the settings has a timeout: against a registry that accepts and
    never answers, a blocking lookup ends as RegistryUnavailable instead of hanging."""
    connected = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        connected.set()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = Settings(
        schema_registry_url=f"http://127.0.0.1:{port}", schema_registry_timeout_seconds=0.2
    )
    codec = Decoder.from_settings(settings)
    async with server:
        with pytest.raises(RegistryUnavailable, match="ReadTimeout"):
            # In a thread so that the server above keeps running on this loop.
            await asyncio.to_thread(codec.decode, framed(store))
        assert connected.is_set()
        for writer in held:
            writer.close()


def test_registry_credentials_reach_the_client_config() -> None:
    basic = Settings(
        schema_registry_url="https://sr.example",
        schema_registry_basic_auth_user_info=SecretStr("u:p"),
    )
    assert client_config(basic)["basic.auth.user.info"] == "u:p"
    assert client_config(basic)["timeout"] == 5.0
    bearer = Settings(
        schema_registry_url="https://sr.example",
        schema_registry_bearer_token=SecretStr("tok-3f9a"),
        schema_registry_logical_cluster="lsrc-1",
    )
    config = client_config(bearer)
    assert config["bearer.auth.credentials.source"] == "STATIC_TOKEN"
    assert (config["bearer.auth.token"], config["bearer.auth.logical.cluster"]) == (
        "tok-3f9a",
        "lsrc-1",
    )
    assert registry_client(bearer) is registry_client(bearer)
    assert registry_client(Settings()) is None
    assert "tok-3f9a" not in repr(bearer) and "u:p" not in repr(basic)


def test_basic_auth_and_bearer_token_are_exclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "user:hunter2")
    monkeypatch.setenv("SCHEMA_REGISTRY_BEARER_TOKEN", "sekrit-token")
    with pytest.raises(SettingsError, match="SCHEMA_REGISTRY_BEARER_TOKEN") as caught:
        load_settings()
    assert "hunter2" not in str(caught.value) and "sekrit" not in str(caught.value)


def test_secret_kafka_properties_merge_over_the_plain_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_EXTRA_CONFIG", '{"sasl.oauthbearer.client.secret": "x", "a": "1"}')
    monkeypatch.setenv("KAFKA_SECRET_EXTRA_CONFIG", '{"sasl.oauthbearer.client.secret": "s3"}')
    settings = load_settings()
    config = settings.kafka_client_config()
    assert config["sasl.oauthbearer.client.secret"] == "s3"
    assert config["a"] == "1"
    assert "s3" not in repr(settings)


def test_user_info_without_a_colon_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "hunter2-no-user")
    with pytest.raises(SettingsError, match="SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO") as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)
