"""schemas/: one file per named type, fields as the contract says, fingerprints as Avro defines."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastavro.schema import parse_schema, to_parsing_canonical_form

import consumer.schemas
from consumer.codec import Decoder, Encoder
from consumer.plain_json import from_plain_json, to_plain_json
from consumer.schemas import (
    SchemaError,
    SchemaStore,
    default_schemas_dir,
    fingerprint_of,
    load_store,
)
from consumer.settings import Settings
from consumer.topics import CONTRACT_TOPICS
from tests.fixtures.contract import RECORDS, example

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
SHARED = ["PostalAddress", "ContactAddress", "Customer", "LineItem", "Order", "FieldChange"]


@pytest.fixture(scope="module")
def store() -> SchemaStore:
    return SchemaStore.load(SCHEMAS)


def _files() -> dict[str, Any]:
    return {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.avsc")}


def _defined_names(node: Any, namespace: str = "") -> list[str]:
    """Full names of the named types a JSON schema defines (not the ones it refers to)."""
    if isinstance(node, list):
        return [n for branch in node for n in _defined_names(branch, namespace)]
    if not isinstance(node, dict):
        return []
    names = []
    if node.get("type") in ("record", "enum", "fixed"):
        namespace = node.get("namespace", namespace)
        names.append(f"{namespace}.{node['name']}")
    for child in [node.get("type"), node.get("items"), node.get("values")]:
        if isinstance(child, dict | list):
            names += _defined_names(child, namespace)
    for f in node.get("fields", []):
        names += _defined_names(f["type"], namespace)
    return names


def test_one_file_per_named_type_each_defined_once() -> None:
    defined = {name: _defined_names(doc) for name, doc in _files().items()}
    expected = {f"shop.events.{n}" for n in [*SHARED, "ShipmentStatus", *RECORDS]}
    assert {f"{n}.avsc" for n in expected} == set(defined)
    for file, names in defined.items():
        assert names == [file.removesuffix(".avsc")], f"{file} defines {names}"


def test_every_schema_loads_with_current_name(store: SchemaStore) -> None:
    assert store.names() == sorted(
        f"shop.events.{n}" for n in [*SHARED, "ShipmentStatus", *RECORDS]
    )
    assert sorted(CONTRACT_TOPICS.values()) == sorted(f"shop.events.{n}" for n in RECORDS)


@pytest.mark.parametrize("event", RECORDS)
def test_events_start_with_id_and_time(event: str) -> None:
    fields = json.loads((SCHEMAS / f"shop.events.{event}.avsc").read_text())["fields"]
    assert fields[0] == {
        **fields[0],
        "name": "event_id",
        "type": {"type": "string", "logicalType": "uuid"},
    }
    assert fields[1]["name"] == "occurred_at"
    assert fields[1]["type"] == {"type": "long", "logicalType": "timestamp-millis"}


def _types(node: Any) -> list[Any]:
    found = [node]
    if isinstance(node, list):
        return [t for branch in node for t in _types(branch)]
    if isinstance(node, dict):
        for key in ("type", "items", "values"):
            if isinstance(node.get(key), dict | list):
                found += _types(node[key])
        for f in node.get("fields", []):
            found += _types(f["type"])
    return found


def test_decimals_are_bytes_12_2_and_expiry_is_nullable_timestamp() -> None:
    decimals = [
        t
        for doc in _files().values()
        for t in _types(doc)
        if isinstance(t, dict) and t.get("logicalType") == "decimal"
    ]
    assert len(decimals) == 4  # unit_price, row_total, discount_value, total
    assert all(
        t == {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}
        for t in decimals
    )
    reset = json.loads((SCHEMAS / "shop.events.PasswordResetRequested.avsc").read_text())
    expires = next(f for f in reset["fields"] if f["name"] == "expires_at")
    assert expires["type"] == ["null", {"type": "long", "logicalType": "timestamp-millis"}]


def test_nullable_fields_default_to_null() -> None:
    for name, doc in _files().items():
        for f in doc.get("fields", []):
            if (
                isinstance(f["type"], list)
                and f["type"][0] == "null"
                and f["name"]
                not in (
                    "old_value",
                    "new_value",
                )
            ):
                assert f.get("default", "missing") is None, f"{name}: {f['name']}"


# LeadCaptured written out by hand with every named type inline, as a producer in another
# language would hold it (Customer in full at its first use, by name at its second);
# independent of the loader's reference expansion.
_LEAD_CAPTURED_INLINE = {
    "type": "record",
    "name": "LeadCaptured",
    "namespace": "shop.events",
    "fields": [
        {"name": "event_id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {
            "name": "lead",
            "type": {
                "type": "record",
                "name": "Customer",
                "fields": [
                    {"name": "customer_id", "type": "string"},
                    {"name": "klaviyo_profile_id", "type": ["null", "string"]},
                    {"name": "email", "type": ["null", "string"]},
                    {"name": "phone_number", "type": ["null", "string"]},
                    {"name": "first_name", "type": ["null", "string"]},
                    {"name": "last_name", "type": ["null", "string"]},
                    {
                        "name": "address",
                        "type": [
                            "null",
                            {
                                "type": "record",
                                "name": "PostalAddress",
                                "fields": [
                                    {"name": n, "type": ["null", "string"]}
                                    for n in [
                                        "address1",
                                        "address2",
                                        "city",
                                        "region",
                                        "country",
                                        "zip",
                                    ]
                                ],
                            },
                        ],
                    },
                ],
            },
        },
        {"name": "action", "type": "string"},
        {"name": "lead_source", "type": "string"},
        {"name": "representative", "type": ["null", "Customer"]},
    ],
}


def _crc64_avro(data: bytes) -> int:
    """The Avro specification's 64-bit Rabin fingerprint, written out from the spec."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_fingerprint_matches_a_fully_inlined_schema(store: SchemaStore) -> None:
    canonical = to_parsing_canonical_form(_LEAD_CAPTURED_INLINE)
    expected = _crc64_avro(canonical.encode()).to_bytes(8, "little")
    schema = store.current("shop.events.LeadCaptured")
    assert schema.canonical == canonical
    assert schema.fingerprint == expected
    # The trap the contract warns about: fastavro's canonical form of the schema as parsed with
    # cross-file references leaves Customer as a bare name and would give another fingerprint.
    assert fingerprint_of(schema.parsed)[1] != expected


def test_spec_fingerprint_of_int() -> None:
    # Keeps the test's own CRC honest: fastavro's digest of "int" must agree with it.
    assert fingerprint_of("int")[1] == _crc64_avro(b'"int"').to_bytes(8, "little")


def test_expanded_schema_is_a_valid_self_contained_schema(store: SchemaStore) -> None:
    for name in store.names():
        schema = store.current(name)
        reparsed = parse_schema(json.loads(schema.to_json()))  # no named_schemas given
        assert fingerprint_of(reparsed)[1] == schema.fingerprint


def test_history_version_is_a_distinct_writer(store: SchemaStore) -> None:
    writers = [w for w in store.writers() if w.name == "shop.events.AccountCreated"]
    assert len(writers) == 2
    old = next(w for w in writers if "history" in w.origin)
    assert "signup_source" not in old.canonical
    assert store.by_fingerprint(old.fingerprint) is old
    assert store.current("shop.events.AccountCreated").fingerprint != old.fingerprint


@pytest.mark.parametrize("topic", sorted(CONTRACT_TOPICS))
def test_contract_example_round_trips(topic: str, store: SchemaStore) -> None:
    plain = example(topic)
    record = CONTRACT_TOPICS[topic]
    datum = from_plain_json(record, plain, store)
    value = Encoder(store).encode(record, datum)
    decoded = Decoder(store).decode(value)
    assert decoded.record_name == record
    assert decoded.datum == datum
    assert to_plain_json(decoded.datum) == plain


def test_default_dir_is_the_checkout_and_settings_override(tmp_path: Path) -> None:
    assert default_schemas_dir() == SCHEMAS
    copy = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, copy)
    (copy / "history" / "shop.events.AccountCreated.v1.avsc").unlink()
    store = SchemaStore.from_settings(Settings(schemas_dir=copy))
    assert len(store.writers()) == len(load_store(SCHEMAS).writers()) - 1


def test_unknown_reference_and_duplicates_are_reported(tmp_path: Path) -> None:
    shutil.copy(SCHEMAS / "shop.events.AccountCreated.avsc", tmp_path)
    with pytest.raises(SchemaError, match=re.escape("unknown type 'shop.events.Customer'")):
        SchemaStore.load(tmp_path)
    for name in ["Customer", "PostalAddress"]:
        shutil.copy(SCHEMAS / f"shop.events.{name}.avsc", tmp_path)
    assert SchemaStore.load(tmp_path).names() == [
        "shop.events.AccountCreated",
        "shop.events.Customer",
        "shop.events.PostalAddress",
    ]
    shutil.copy(SCHEMAS / "shop.events.Customer.avsc", tmp_path / "again.avsc")
    with pytest.raises(SchemaError, match="also defined"):
        SchemaStore.load(tmp_path)


def test_packaged_copy_is_this_folder() -> None:
    # The wheel ships consumer/_schemas; in the checkout it must be these very files.
    packaged = Path(consumer.schemas.__file__).resolve().parent / "_schemas"
    assert packaged.resolve() == SCHEMAS
