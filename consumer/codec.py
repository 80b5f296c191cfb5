"""Kafka message value ↔ Avro datum.

Two framings (contract "Wire format"):

- Avro single-object encoding: ``C3 01``, the writer schema's 8-byte CRC-64-AVRO fingerprint
  (little-endian), the body. The writer is looked up by fingerprint among ``schemas/`` and
  ``schemas/history/``.
- Confluent framing, when ``SCHEMA_REGISTRY_URL`` is set: ``00``, the 4-byte big-endian schema
  id, the body. The writer schema is fetched from the registry once per id.

Either way the datum is read with the *current* local schema of the writer's record name, so
handlers always see the current shape. With a registry configured both framings are accepted
(producers can move from one to the other without a flag day).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError

from consumer.plain_json import InvalidEvent, from_plain_json, to_plain_json
from consumer.schemas import AvroSchema, SchemaError, SchemaStore, parse_document_set
from consumer.settings import Settings

__all__ = [
    "BadMagic",
    "DecodeError",
    "DecodedEvent",
    "Decoder",
    "EncodeError",
    "Encoder",
    "IncompatibleSchema",
    "InvalidBody",
    "InvalidEvent",
    "RegistryUnavailable",
    "TruncatedBody",
    "UnknownSchema",
    "from_plain_json",
    "registry_client",
    "to_plain_json",
]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_SINGLE_OBJECT_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
_CONFLUENT_HEADER = len(CONFLUENT_MAGIC) + 4


@dataclass(frozen=True)
class DecodedEvent:
    record_name: str  # full name of the current schema it was read with
    datum: dict[str, Any]


class DecodeError(Exception):
    """A message value that cannot be decoded; ``reason`` is a bounded code for metrics/DLQ."""

    reason: ClassVar[str] = "invalid_body"


class BadMagic(DecodeError):
    reason = "bad_magic"


class UnknownSchema(DecodeError):
    reason = "unknown_schema"


class IncompatibleSchema(UnknownSchema):
    """The writer schema is known but cannot be read as the current schema of its record."""


class TruncatedBody(DecodeError):
    reason = "truncated"


class InvalidBody(DecodeError):
    reason = "invalid_body"


class RegistryUnavailable(DecodeError):
    """Transient: the registry could not answer. The message is not bad; try again later."""

    reason = "registry_unavailable"


class EncodeError(Exception):
    """An event could not be encoded or its schema not registered."""


@lru_cache(maxsize=4)
def registry_client(url: str) -> SchemaRegistryClient:
    """One client per registry URL and process (``mock://`` clients keep their state in it)."""
    return SchemaRegistryClient.new_client({"url": url})


class _Body(io.BytesIO):
    """A body that raises EOFError on a short read, so every truncation looks the same."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is not None and size >= 0 and len(data) < size:
            raise EOFError
        return data


# Everything fastavro raises for bytes that are not a valid body of the writer schema.
_BODY_ERRORS = (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError)


class Decoder:
    """Decodes message values; parsed schemas and registry answers are cached."""

    def __init__(self, store: SchemaStore, registry: SchemaRegistryClient | None = None) -> None:
        self._store = store
        self._registry = registry
        self._registry_writers: dict[int, AvroSchema] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Decoder:
        url = settings.schema_registry_url
        return cls(SchemaStore.from_settings(settings), registry_client(url) if url else None)

    def decode(self, value: bytes) -> DecodedEvent:
        if value[:2] == SINGLE_OBJECT_MAGIC:
            if len(value) < _SINGLE_OBJECT_HEADER:
                raise TruncatedBody(f"single-object header cut short ({len(value)} bytes)")
            fp = value[2:_SINGLE_OBJECT_HEADER]
            writer = self._store.by_fingerprint(fp)
            if writer is None:
                raise UnknownSchema(f"no schema has fingerprint {fp.hex()}")
            return self._read(writer, value[_SINGLE_OBJECT_HEADER:])
        if value[:1] == CONFLUENT_MAGIC and self._registry is not None:
            if len(value) < _CONFLUENT_HEADER:
                raise TruncatedBody(f"Confluent header cut short ({len(value)} bytes)")
            schema_id = int.from_bytes(value[1:_CONFLUENT_HEADER], "big")
            return self._read(self._registry_writer(schema_id), value[_CONFLUENT_HEADER:])
        if value[:1] == CONFLUENT_MAGIC:
            raise BadMagic("Confluent framing (magic 00) but SCHEMA_REGISTRY_URL is not set")
        raise BadMagic(f"value starts with {value[:2].hex() or 'nothing'}, expected c301")

    def _read(self, writer: AvroSchema, body: bytes) -> DecodedEvent:
        reader = self._store.find_current(writer.name) or writer
        # Same canonical form: same bytes on the wire, so skip fastavro's schema resolution.
        same = reader.fingerprint == writer.fingerprint
        schemas = (reader.parsed, None) if same else (writer.parsed, reader.parsed)
        stream = io.BytesIO(body)
        try:
            try:
                datum = schemaless_reader(stream, *schemas)
            except (EOFError, *_BODY_ERRORS):
                # fastavro reports a short body as EOFError or IndexError depending on where
                # it ends; read again with a stream that makes every short read an EOFError.
                # Twice as slow, so only for values already known to be bad.
                schemaless_reader(_Body(body), *schemas)
                raise
        except EOFError:
            raise TruncatedBody(f"{writer.name} body cut short ({len(body)} bytes)") from None
        except SchemaResolutionError as exc:
            raise IncompatibleSchema(
                f"{writer.origin} cannot be read as {reader.origin}: {exc}"
            ) from None
        except _BODY_ERRORS as exc:
            raise InvalidBody(f"not a {writer.name} body: {type(exc).__name__}: {exc}") from None
        extra = len(body) - stream.tell()
        if extra:
            raise InvalidBody(f"{extra} byte(s) after the end of the {writer.name} body")
        if not isinstance(datum, dict):
            raise InvalidBody(f"{writer.name} is not a record")
        for name in reader.uuid_fields:
            if datum.get(name) is not None:
                datum[name] = str(datum[name])
        return DecodedEvent(reader.name, datum)

    def _registry_writer(self, schema_id: int) -> AvroSchema:
        cached = self._registry_writers.get(schema_id)
        if cached is not None:
            return cached
        assert self._registry is not None
        origin = f"registry schema id {schema_id}"
        try:
            registered = self._registry.get_schema(schema_id)
            references = self._references(registered)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchema(f"{origin} does not exist") from None
            raise RegistryUnavailable(f"{origin}: {exc}") from None
        except Exception as exc:  # transport errors of the HTTP client; never the URL (secrets)
            raise RegistryUnavailable(f"{origin}: {type(exc).__name__}") from None
        if (registered.schema_type or "AVRO") != "AVRO":
            raise UnknownSchema(f"{origin} is {registered.schema_type}, not Avro")
        try:
            writer = parse_document_set(json.loads(registered.schema_str or ""), references, origin)
        except (SchemaError, ValueError) as exc:
            raise UnknownSchema(f"{origin}: {exc}") from None
        self._registry_writers[schema_id] = writer
        return writer

    def _references(self, schema: Schema) -> list[Any]:
        """Every schema a registry schema refers to, transitively, as JSON documents."""
        assert self._registry is not None
        documents: list[Any] = []
        seen: set[tuple[str, int]] = set()
        pending = list(schema.references or ())
        while pending:
            ref = pending.pop()
            if ref.subject is None or ref.version is None or (ref.subject, ref.version) in seen:
                continue
            seen.add((ref.subject, ref.version))
            referenced = self._registry.get_version(ref.subject, ref.version).schema
            documents.append(json.loads(referenced.schema_str or ""))
            pending.extend(referenced.references or ())
        return documents


class Encoder:
    """Encodes datums with the current schema: single-object, or Confluent with a registry."""

    def __init__(self, store: SchemaStore, registry: SchemaRegistryClient | None = None) -> None:
        self._store = store
        self._registry = registry
        self._ids: dict[tuple[str, str], int] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Encoder:
        url = settings.schema_registry_url
        return cls(SchemaStore.from_settings(settings), registry_client(url) if url else None)

    def encode(self, record_name: str, datum: dict[str, Any], *, topic: str | None = None) -> bytes:
        """The message value. With a registry the schema is registered (once) under
        ``<topic>-value`` (TopicNameStrategy), or under the record name without a topic."""
        schema = self._store.find_current(record_name)
        if schema is None:
            raise EncodeError(f"no schema named {record_name!r}")
        body = io.BytesIO()
        try:
            schemaless_writer(body, schema.parsed, datum)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"{record_name}: {type(exc).__name__}: {exc}") from None
        if self._registry is None:
            return SINGLE_OBJECT_MAGIC + schema.fingerprint + body.getvalue()
        schema_id = self._schema_id(schema, f"{topic}-value" if topic else record_name)
        return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big") + body.getvalue()

    def _schema_id(self, schema: AvroSchema, subject: str) -> int:
        key = (schema.name, subject)
        if key not in self._ids:
            assert self._registry is not None
            try:
                self._ids[key] = self._registry.register_schema(
                    subject, Schema(schema.to_json(), "AVRO")
                )
            except SchemaRegistryError as exc:
                raise EncodeError(f"registering {schema.name} under {subject}: {exc}") from None
            except Exception as exc:  # transport errors; never the URL (secrets)
                raise EncodeError(f"schema registry unreachable: {type(exc).__name__}") from None
        return self._ids[key]
