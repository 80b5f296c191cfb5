"""Decoding and encoding of message values: both framings, evolution, every kind of bad value."""

from __future__ import annotations

import io
import json
import shutil
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.schema_registry import (
    Schema,
    SchemaReference,
    SchemaRegistryClient,
    SchemaRegistryError,
)
from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import consumer.schemas
from consumer.codec import Decoder, Encoder
from consumer.errors import (
    BadMagic,
    DecodeError,
    IncompatibleSchema,
    InvalidBody,
    RegistryUnavailable,
    TruncatedBody,
    UnknownSchema,
)
from consumer.plain_json import from_plain_json, to_plain_json
from consumer.schemas import SchemaStore
from consumer.settings import Settings
from tests.fixtures.contract import EVENT_ID, OCCURRED, RECORDS, account_created, datums

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.fixture(scope="module")
def store() -> SchemaStore:
    return SchemaStore.load(SCHEMAS)


# --- Hand-written Avro binary, independent of fastavro's writer -------------------------------


def _long(n: int) -> bytes:
    zigzag = (n << 1) ^ (n >> 63)
    out = bytearray()
    while zigzag > 0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def _string(raw: bytes) -> bytes:
    return _long(len(raw)) + raw


def _email_changed_body(customer_id: bytes = b"c1", union_index: int = 0) -> bytes:
    """AccountEmailChanged: event_id, occurred_at, customer_id, klaviyo_profile_id (null), ..."""
    return (
        _string(EVENT_ID.encode())
        + _long(1_700_000_000_000)
        + _string(customer_id)
        + _long(union_index)
        + _string(b"old@shopmail.io")
        + _string(b"new@shopmail.io")
    )


def _single_object(store: SchemaStore, record: str, body: bytes) -> bytes:
    return b"\xc3\x01" + store.current(record).fingerprint + body


def test_hand_written_body_decodes(store: SchemaStore) -> None:
    value = _single_object(store, "shop.events.AccountEmailChanged", _email_changed_body())
    event = Decoder(store).decode(value)
    assert event.record_name == "shop.events.AccountEmailChanged"
    assert event.datum == {
        "event_id": EVENT_ID,
        "occurred_at": datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
        "customer_id": "c1",
        "klaviyo_profile_id": None,
        "old_email": "old@shopmail.io",
        "new_email": "new@shopmail.io",
    }
    assert type(event.datum["event_id"]) is str


def test_single_object_header(store: SchemaStore) -> None:
    value = Encoder(store).encode("shop.events.AccountCreated", account_created())
    schema = store.current("shop.events.AccountCreated")
    assert value[:2] == b"\xc3\x01"
    assert value[2:10] == schema.fingerprint
    assert struct.unpack("<Q", value[2:10])[0] == int.from_bytes(schema.fingerprint, "little")


# --- Evolution --------------------------------------------------------------------------------


def test_v1_writer_is_read_with_the_current_schema(store: SchemaStore) -> None:
    old = next(w for w in store.writers() if "AccountCreated.v1" in w.origin)
    body = io.BytesIO()
    schemaless_writer(body, old.parsed, account_created())
    event = Decoder(store).decode(b"\xc3\x01" + old.fingerprint + body.getvalue())
    assert event.record_name == "shop.events.AccountCreated"
    assert event.datum == account_created(signup_source=None)
    assert type(event.datum["event_id"]) is str


def test_incompatible_writer_is_an_unknown_schema(tmp_path: Path) -> None:
    shutil.copytree(SCHEMAS, tmp_path / "schemas")
    doc = json.loads((SCHEMAS / "shop.events.AccountEmailChanged.avsc").read_text())
    doc["fields"] = [f for f in doc["fields"] if f["name"] != "old_email"]  # no default
    (tmp_path / "schemas" / "history" / "old.avsc").write_text(json.dumps(doc))
    store = SchemaStore.load(tmp_path / "schemas")
    old = next(w for w in store.writers() if w.origin.endswith("old.avsc"))
    body = io.BytesIO()
    datum = {"event_id": EVENT_ID, "occurred_at": OCCURRED, "customer_id": "c", "new_email": "n"}
    schemaless_writer(body, old.parsed, datum)
    with pytest.raises(IncompatibleSchema) as caught:
        Decoder(store).decode(b"\xc3\x01" + old.fingerprint + body.getvalue())
    assert caught.value.reason == "unknown_schema"


# --- Every kind of bad value ------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"", b"\x01", b"\xc3\x02" + bytes(8), b'{"json": 1}'])
def test_bad_magic(store: SchemaStore, value: bytes) -> None:
    with pytest.raises(BadMagic) as caught:
        Decoder(store).decode(value)
    assert caught.value.reason == "bad_magic"


def test_confluent_frame_without_registry_is_bad_magic(store: SchemaStore) -> None:
    with pytest.raises(BadMagic, match="SCHEMA_REGISTRY_URL"):
        Decoder(store).decode(b"\x00\x00\x00\x00\x01" + _email_changed_body())


def test_unknown_fingerprint(store: SchemaStore) -> None:
    with pytest.raises(UnknownSchema) as caught:
        Decoder(store).decode(b"\xc3\x01" + bytes(8) + _email_changed_body())
    assert caught.value.reason == "unknown_schema"
    assert "0000000000000000" in str(caught.value)


def test_every_cut_is_truncated(store: SchemaStore) -> None:
    value = Encoder(store).encode(
        "shop.events.AccountCreated", account_created(signup_source="Checkout")
    )
    decoder = Decoder(store)
    for cut in range(2, len(value)):
        with pytest.raises(TruncatedBody) as caught:
            decoder.decode(value[:cut])
        assert caught.value.reason == "truncated"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (_email_changed_body(union_index=5), "IndexError"),
        (_email_changed_body(customer_id=b"\xff\xfe"), "UnicodeDecodeError"),
        (_email_changed_body() + b"\x00", "after the end"),
    ],
    ids=["union-index", "utf8", "trailing"],
)
def test_invalid_body(store: SchemaStore, body: bytes, problem: str) -> None:
    value = _single_object(store, "shop.events.AccountEmailChanged", body)
    with pytest.raises(InvalidBody, match=problem) as caught:
        Decoder(store).decode(value)
    assert caught.value.reason == "invalid_body"
    assert isinstance(caught.value, DecodeError)


def test_decoding_never_parses_schemas(store: SchemaStore, monkeypatch: pytest.MonkeyPatch) -> None:
    value = Encoder(store).encode("shop.events.AccountCreated", account_created())
    old = next(w for w in store.writers() if "AccountCreated.v1" in w.origin)
    body = io.BytesIO()
    schemaless_writer(body, old.parsed, account_created())
    decoder = Decoder(store)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("schema parsed while decoding")

    monkeypatch.setattr(consumer.schemas, "parse_schema", forbidden)
    decoder.decode(value)
    decoder.decode(b"\xc3\x01" + old.fingerprint + body.getvalue())


# --- Confluent framing with a schema registry -------------------------------------------------


def _mock_registry(name: str) -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": f"mock://{name}"})


def test_confluent_round_trip(store: SchemaStore) -> None:
    registry = _mock_registry("round-trip")
    datum = account_created(signup_source="Checkout")
    value = Encoder(store, registry).encode("shop.events.AccountCreated", datum, topic="t")
    assert value[0] == 0
    schema_id = int.from_bytes(value[1:5], "big")
    assert registry.get_latest_version("t-value").schema_id == schema_id
    event = Decoder(store, registry).decode(value)
    assert (event.record_name, event.datum) == ("shop.events.AccountCreated", datum)


def test_registry_writer_is_resolved_to_the_current_schema(store: SchemaStore) -> None:
    registry = _mock_registry("old-writer")
    old = next(w for w in store.writers() if "AccountCreated.v1" in w.origin)
    schema_id = registry.register_schema("accounts-value", Schema(old.to_json(), "AVRO"))
    body = io.BytesIO()
    schemaless_writer(body, old.parsed, account_created())
    value = b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()
    event = Decoder(store, registry).decode(value)
    assert event.record_name == "shop.events.AccountCreated"
    assert event.datum == account_created(signup_source=None)


def test_registry_schema_with_references(store: SchemaStore) -> None:
    registry = _mock_registry("references")

    def register(name: str, refs: list[SchemaReference]) -> int:
        text = (SCHEMAS / f"shop.events.{name}.avsc").read_text()
        return registry.register_schema(name, Schema(text, "AVRO", refs))

    register("PostalAddress", [])
    register("Customer", [SchemaReference("shop.events.PostalAddress", "PostalAddress", 1)])
    schema_id = register("AccountCreated", [SchemaReference("shop.events.Customer", "Customer", 1)])
    body = Encoder(store).encode("shop.events.AccountCreated", account_created())[10:]
    event = Decoder(store, registry).decode(b"\x00" + schema_id.to_bytes(4, "big") + body)
    assert event.datum == account_created(signup_source=None)


class _CountingRegistry:
    def __init__(self, inner: SchemaRegistryClient) -> None:
        self.inner = inner
        self.calls = 0

    def get_schema(self, schema_id: int) -> Any:
        self.calls += 1
        return self.inner.get_schema(schema_id)


def test_registry_writers_are_cached(store: SchemaStore) -> None:
    registry = _mock_registry("cache")
    value = Encoder(store, registry).encode("shop.events.AccountCreated", account_created())
    counting = _CountingRegistry(registry)
    decoder = Decoder(store, counting)  # type: ignore[arg-type]
    assert decoder.decode(value).datum == decoder.decode(value).datum
    assert counting.calls == 1


def test_unknown_registry_id(store: SchemaStore) -> None:
    with pytest.raises(UnknownSchema, match="id 4242"):
        Decoder(store, _mock_registry("empty")).decode(b"\x00" + (4242).to_bytes(4, "big"))


class _BrokenRegistry:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_schema(self, schema_id: int) -> Any:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [ConnectionRefusedError("refused"), SchemaRegistryError(503, 50301, "overloaded")],
    ids=["unreachable", "server-error"],
)
def test_registry_unavailable(store: SchemaStore, error: Exception) -> None:
    decoder = Decoder(store, _BrokenRegistry(error))  # type: ignore[arg-type]
    with pytest.raises(RegistryUnavailable) as caught:
        decoder.decode(b"\x00\x00\x00\x00\x07" + _email_changed_body())
    assert caught.value.reason == "registry_unavailable"


def test_from_settings_share_one_registry_client() -> None:
    config = Settings(schema_registry_url="mock://from-settings")
    datum = account_created(signup_source=None)
    value = Encoder.from_settings(config).encode("shop.events.AccountCreated", datum, topic="x")
    assert value[0] == 0
    assert Decoder.from_settings(config).decode(value).datum == datum


def test_single_object_still_accepted_with_a_registry(store: SchemaStore) -> None:
    value = Encoder(store).encode("shop.events.AccountCreated", account_created())
    event = Decoder(store, _mock_registry("both")).decode(value)
    assert event.datum == account_created(signup_source=None)


# --- Property: any valid datum survives both the wire and the plain JSON form ----------------


@pytest.mark.parametrize("record", RECORDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_datum_round_trips(store: SchemaStore, record: str, data: st.DataObject) -> None:
    name = f"shop.events.{record}"
    datum = data.draw(datums(store.current(name)))
    value = Encoder(store).encode(name, datum)
    assert Decoder(store).decode(value).datum == datum
    plain = orjson.loads(orjson.dumps(to_plain_json(datum)))
    assert from_plain_json(name, plain, store) == datum
