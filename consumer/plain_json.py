"""The plain JSON form of an event (contract: "Plain JSON form of an event") ↔ fastavro datums.

Plain JSON: a nullable field is its value or null (no union wrapping), ``timestamp-millis`` is
an RFC 3339 string with an offset, ``decimal`` a JSON number or string, an enum its symbol, a
``uuid`` its canonical string. A datum is what fastavro writes and reads: aware ``datetime``,
``Decimal``, plain values for unions.
"""

from __future__ import annotations

import copy
import math
import uuid
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from fastavro.validation import ValidationError, validate

from consumer.rfc3339 import format_rfc3339
from consumer.schemas import SchemaStore, default_schemas_dir, load_store

_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_TIMESTAMPS = frozenset({"timestamp-millis", "timestamp-micros"})


class InvalidEvent(ValueError):
    """A plain-JSON event does not fit its schema; the message is one line naming the field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _fail(path: str, problem: str) -> InvalidEvent:
    return InvalidEvent(f"{path or '(event)'}: {problem}", path or None)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Converter:
    """Walks a parsed schema alongside the JSON value, building the datum."""

    def __init__(self, named: Mapping[str, Any]) -> None:
        self._named = named

    def value(self, schema: Any, value: Any, path: str) -> Any:
        if isinstance(schema, str):
            if schema in self._named:
                return self.value(self._named[schema], value, path)
            return _primitive(schema, value, path)
        if isinstance(schema, list):
            return self._union(schema, value, path)
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical in _TIMESTAMPS and kind == "long":
            return _timestamp(value, path)
        if logical == "decimal" and kind == "bytes":
            return _decimal(value, schema, path)
        if logical == "uuid" and kind == "string":
            return _uuid(value, path)
        if kind in ("record", "error"):
            return self._record(schema, value, path)
        if kind == "enum":
            if not isinstance(value, str) or value not in schema["symbols"]:
                raise _fail(path, f"{_shown(value)} is not one of {', '.join(schema['symbols'])}")
            return value
        if kind == "array":
            if not isinstance(value, list):
                raise _fail(path, f"expected an array, got {_shown(value)}")
            return [self.value(schema["items"], v, f"{path}[{i}]") for i, v in enumerate(value)]
        if kind == "map":
            if not isinstance(value, dict):
                raise _fail(path, f"expected an object, got {_shown(value)}")
            return {k: self.value(schema["values"], v, f"{path}.{k}") for k, v in value.items()}
        if kind == "fixed":
            raise _fail(path, "fixed types have no plain JSON form")
        return self.value(kind, value, path)  # {"type": "string"} and similar wrappers

    def _record(self, schema: Mapping[str, Any], value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _fail(path, f"expected an object, got {_shown(value)}")
        known = {f["name"] for f in schema["fields"]}
        unknown = sorted(set(value) - known)
        if unknown:
            # Strict: a misspelt optional field would otherwise vanish silently.
            raise _fail(_join(path, unknown[0]), f"not a field of {schema['name']}")
        datum: dict[str, Any] = {}
        for f in schema["fields"]:
            name = f["name"]
            if name in value:
                datum[name] = self.value(f["type"], value[name], _join(path, name))
            elif "default" in f:
                datum[name] = copy.deepcopy(f["default"])
            else:
                raise _fail(_join(path, name), "required field is missing")
        return datum

    def _union(self, branches: list[Any], value: Any, path: str) -> Any:
        if value is None:
            if "null" in branches:
                return None
            raise _fail(path, "must not be null")
        candidates = [b for b in branches if b != "null"]
        if len(candidates) == 1:
            return self.value(candidates[0], value, path)
        for branch in candidates:  # first fitting branch, in schema order
            try:
                return self.value(branch, value, path)
            except InvalidEvent:
                continue
        raise _fail(path, f"{_shown(value)} fits none of the union's types")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _primitive(kind: str, value: Any, path: str) -> Any:
    ok: bool
    if kind == "null":
        ok = value is None
    elif kind == "boolean":
        ok = isinstance(value, bool)
    elif kind in _INT_RANGE:
        low, high = _INT_RANGE[kind]
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    elif kind in ("float", "double"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind == "string":
        ok = isinstance(value, str)
    elif kind == "bytes":
        # Avro's JSON encoding of bytes: one code point 0-255 per byte.
        ok = isinstance(value, str) and all(ord(c) < 256 for c in value)
        value = value.encode("latin-1") if ok else value
    else:
        raise _fail(path, f"unknown type {kind!r}")
    if not ok:
        raise _fail(path, f"expected {kind}, got {_shown(value)}")
    return value


def _timestamp(value: Any, path: str) -> datetime:
    if not isinstance(value, str):
        raise _fail(path, f"expected an RFC 3339 timestamp string, got {_shown(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(path, f"{_shown(value)} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise _fail(path, f"{_shown(value)} needs a UTC offset or Z")
    return parsed


def _decimal(value: Any, schema: Mapping[str, Any], path: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _fail(path, f"expected a decimal number or string, got {_shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(path, f"{_shown(value)} is not a finite number")
    try:
        # repr() of a float is its shortest exact-looking form (9.99, not 9.9900000000000002).
        number = Decimal(repr(value) if isinstance(value, float) else str(value))
    except InvalidOperation:
        raise _fail(path, f"{_shown(value)} is not a decimal number") from None
    if not number.is_finite():
        raise _fail(path, f"{_shown(value)} is not a finite number")
    scale, precision = schema.get("scale", 0), schema["precision"]
    try:
        quantized = number.quantize(Decimal(1).scaleb(-scale))
    except InvalidOperation:
        raise _fail(path, f"{_shown(value)} has more than {precision} digits") from None
    if quantized != number:
        raise _fail(path, f"{_shown(value)} has more than {scale} decimal places")
    if len(quantized.as_tuple().digits) > precision:
        raise _fail(path, f"{_shown(value)} has more than {precision} digits")
    return quantized


def _uuid(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"expected a UUID string, got {_shown(value)}")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise _fail(path, f"{_shown(value)} is not a UUID") from None


def from_plain_json(
    record_name: str, obj: dict[str, Any], store: SchemaStore | None = None
) -> dict[str, Any]:
    """The datum of a plain-JSON event, validated against the current schema of ``record_name``.

    Missing fields with a default take it. Raises :class:`InvalidEvent`.
    """
    store = store or load_store(default_schemas_dir())
    schema = store.find_current(record_name)
    if schema is None:
        raise InvalidEvent(f"no schema named {record_name!r}")
    datum: dict[str, Any] = _Converter(schema.named).value(schema.parsed, obj, "")
    # fastavro checks the result too, so anything the walk above lets through still stops here.
    try:
        validate(datum, schema.parsed, raise_errors=True)
    except ValidationError as exc:
        first = exc.errors[0] if exc.errors else None
        where = getattr(first, "field", None) or "(event)"
        raise InvalidEvent(f"{where}: does not fit {record_name}", where) from None
    return datum


def to_plain_json(datum: Any) -> Any:
    """The plain JSON form of a datum (or of any value inside one)."""
    if isinstance(datum, dict):
        return {k: to_plain_json(v) for k, v in datum.items()}
    if isinstance(datum, list | tuple):
        return [to_plain_json(v) for v in datum]
    if isinstance(datum, datetime):
        return format_rfc3339(datum)
    if isinstance(datum, Decimal):
        return format(datum, "f")  # a string keeps every digit; never exponent notation
    if isinstance(datum, uuid.UUID):
        return str(datum)
    if isinstance(datum, bytes):
        return datum.decode("latin-1")
    return datum
