"""Kafka message value ↔ Avro datum.

Two framings (contract "Wire format"):

- Avro single-object encoding: ``C3 01``, the writer schema's 8-byte CRC-64-AVRO fingerprint
  (little-endian), the body. The writer is looked up by fingerprint among ``schemas/`` and
  ``schemas/history/``.
- Confluent framing, when ``SCHEMA_REGISTRY_URL`` is set: ``00``, the 4-byte big-endian schema
  id, the body. The writer schema is fetched from the registry once per id. The relay decodes
  with :meth:`Decoder.decode_async`, which fetches in a worker thread (never on the event loop)
  and waits a few times on an id the registry does not know yet (replica lag, failover) before
  calling it unknown; a cached id is decoded right away.

Either way the datum is read with the *current* local schema of the writer's record name, so
handlers always see the current shape. With a registry configured both framings are accepted
(producers can move from one to the other without a flag day).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError

from consumer.errors import (
    BadMagic,
    IncompatibleSchema,
    InvalidBody,
    RegistryUnavailable,
    SchemaNotFound,
    TruncatedBody,
    UnknownSchema,
)
from consumer.schema_registry import in_daemon_thread, lookup_deadline, registry_client
from consumer.schemas import AvroSchema, SchemaError, SchemaStore, parse_document_set
from consumer.settings import Settings

# The decode errors live in consumer.errors.
__all__ = ["DecodedEvent", "Decoder", "EncodeError", "Encoder"]

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_SINGLE_OBJECT_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
_CONFLUENT_HEADER = len(CONFLUENT_MAGIC) + 4


@dataclass(frozen=True)
class DecodedEvent:
    record_name: str  # full name of the current schema it was read with
    datum: dict[str, Any]


class EncodeError(Exception):
    """An event could not be encoded or its schema not registered."""


# Waits before asking again about an id the registry does not know: a replica that has not
# caught up, or a failover, usually answers within seconds.
NOT_FOUND_DELAYS = (0.5, 1.0, 2.0, 4.0)


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

    def __init__(
        self,
        store: SchemaStore,
        registry: SchemaRegistryClient | None = None,
        *,
        lookup_deadline: float = 30.0,
        not_found_delays: Sequence[float] = NOT_FOUND_DELAYS,
    ) -> None:
        self._store = store
        self._registry = registry
        self._registry_writers: dict[int, AvroSchema] = {}
        self._lookups: dict[int, asyncio.Future[AvroSchema]] = {}  # in flight, one per id
        self._lookup_deadline = lookup_deadline
        self._not_found_delays = tuple(not_found_delays)

    @classmethod
    def from_settings(cls, settings: Settings) -> Decoder:
        return cls(
            SchemaStore.from_settings(settings),
            registry_client(settings),
            lookup_deadline=lookup_deadline(settings),
        )

    async def decode_async(self, value: bytes) -> DecodedEvent:
        """:meth:`decode` for the event loop: a registry lookup runs in a worker thread, a
        cached writer schema is used at once. :class:`RegistryUnavailable` when the registry
        does not answer within the lookup deadline (try again later)."""
        schema_id = self._registry_id(value)
        if schema_id is None or schema_id in self._registry_writers:
            return self.decode(value)
        writer = await self._registry_writer_async(schema_id)
        return self._read(writer, value[_CONFLUENT_HEADER:])

    def decode(self, value: bytes) -> DecodedEvent:
        if value[:2] == SINGLE_OBJECT_MAGIC:
            if len(value) < _SINGLE_OBJECT_HEADER:
                raise TruncatedBody(f"single-object header cut short ({len(value)} bytes)")
            fp = value[2:_SINGLE_OBJECT_HEADER]
            writer = self._store.by_fingerprint(fp)
            if writer is None:
                raise UnknownSchema(f"no schema has fingerprint {fp.hex()}")
            return self._read(writer, value[_SINGLE_OBJECT_HEADER:])
        schema_id = self._registry_id(value)
        if schema_id is not None:
            return self._read(self._registry_writer(schema_id), value[_CONFLUENT_HEADER:])
        if value[:1] == CONFLUENT_MAGIC:
            raise BadMagic("Confluent framing (magic 00) but SCHEMA_REGISTRY_URL is not set")
        raise BadMagic(f"value starts with {value[:2].hex() or 'nothing'}, expected c301")

    def _registry_id(self, value: bytes) -> int | None:
        """The schema id of a Confluent-framed value when a registry is configured."""
        if value[:1] != CONFLUENT_MAGIC or self._registry is None:
            return None
        if len(value) < _CONFLUENT_HEADER:
            raise TruncatedBody(f"Confluent header cut short ({len(value)} bytes)")
        return int.from_bytes(value[1:_CONFLUENT_HEADER], "big")

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
        """The writer schema of an id, fetched in this thread (tools, not the relay's loop)."""
        cached = self._registry_writers.get(schema_id)
        if cached is None:
            cached = self._registry_writers[schema_id] = self._fetch(schema_id)
        return cached

    async def _registry_writer_async(self, schema_id: int) -> AvroSchema:
        for delay in self._not_found_delays:
            with contextlib.suppress(SchemaNotFound):
                return await self._lookup(schema_id)
            await asyncio.sleep(delay)
        return await self._lookup(schema_id)

    async def _lookup(self, schema_id: int) -> AvroSchema:
        """One fetch of an id in a worker thread, shared by every event waiting for that id.
        The event waits at most the lookup deadline; a fetch still running then is waited on
        again by its next try rather than started twice."""
        lookup = self._lookups.get(schema_id)
        if lookup is None:
            fetch = functools.partial(self._fetch, schema_id)
            lookup = in_daemon_thread(fetch, name=f"schema-registry-{schema_id}")
            self._lookups[schema_id] = lookup
            lookup.add_done_callback(functools.partial(self._looked_up, schema_id))
        try:
            return await asyncio.wait_for(asyncio.shield(lookup), self._lookup_deadline)
        except TimeoutError:
            raise RegistryUnavailable(
                f"registry schema id {schema_id}: no answer within {self._lookup_deadline:g} s"
            ) from None

    def _looked_up(self, schema_id: int, lookup: asyncio.Future[AvroSchema]) -> None:
        del self._lookups[schema_id]
        # exception() also marks a failure seen when every waiter has given up on it.
        if not lookup.cancelled() and lookup.exception() is None:
            self._registry_writers[schema_id] = lookup.result()

    def _fetch(self, schema_id: int) -> AvroSchema:
        """Blocking: the writer schema of an id and every schema it refers to, parsed."""
        assert self._registry is not None
        origin = f"registry schema id {schema_id}"
        try:
            registered = self._registry.get_schema(schema_id)
            references = self._references(registered)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 or exc.error_code == 40403:
                raise SchemaNotFound(f"{origin} does not exist") from None
            raise RegistryUnavailable(f"{origin}: {exc}") from None
        except Exception as exc:  # transport errors of the HTTP client; never the URL (secrets)
            raise RegistryUnavailable(f"{origin}: {type(exc).__name__}") from None
        if (registered.schema_type or "AVRO") != "AVRO":
            raise UnknownSchema(f"{origin} is {registered.schema_type}, not Avro")
        try:
            return parse_document_set(json.loads(registered.schema_str or ""), references, origin)
        except (SchemaError, ValueError) as exc:
            raise UnknownSchema(f"{origin}: {exc}") from None

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
        return cls(SchemaStore.from_settings(settings), registry_client(settings))

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
