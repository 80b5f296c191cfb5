"""The Avro schemas of the domain events: loading, named-type expansion and fingerprints.

``schemas/`` holds one ``.avsc`` per named type (``shop.events.<Name>.avsc``); records refer to
each other by full name. ``schemas/history/`` keeps older versions of event records so that
events written with them stay decodable. Every schema gets the CRC-64-AVRO fingerprint of its
*parsing canonical form* with every named type written out in full at its first use, which is
what the Avro libraries of other languages compute: fastavro's own canonical form leaves a
cross-file reference as a bare name, which would give a different fingerprint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastavro.schema import (
    SchemaParseException,
    UnknownType,
    fingerprint,
    parse_schema,
    to_parsing_canonical_form,
)

from consumer.settings import Settings

FINGERPRINT_ALGORITHM = "CRC-64-AVRO"
HISTORY_DIR = "history"

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED_KINDS = frozenset({"record", "error", "enum", "fixed"})
_KINDS = _PRIMITIVES | _NAMED_KINDS | {"array", "map"}
_PACKAGE_DIR = Path(__file__).resolve().parent


class SchemaError(Exception):
    """A schema file (or a registry schema) cannot be parsed or refers to an unknown type."""


def default_schemas_dir() -> Path:
    """The repository's ``schemas/`` in a source checkout, else the copy packaged in the wheel."""
    checkout = _PACKAGE_DIR.parent
    # pyproject.toml tells a checkout apart from site-packages, where a foreign "schemas"
    # folder could sit next to the installed package.
    if (checkout / "pyproject.toml").is_file() and (checkout / "schemas").is_dir():
        return checkout / "schemas"
    return _PACKAGE_DIR / "_schemas"


@dataclass(frozen=True)
class AvroSchema:
    """One parsed schema, ready for fastavro and identified by its fingerprint."""

    name: str  # full name of the top-level named type, e.g. "shop.events.OrderPlaced"
    parsed: Any = field(repr=False)  # fastavro's parsed form; read/write use it as is
    named: Mapping[str, Any] = field(repr=False)  # parsed named types it may refer to
    expanded: dict[str, Any] = field(repr=False)  # self-contained: named types inline once
    canonical: str = field(repr=False)  # parsing canonical form of ``expanded``
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO of ``canonical``
    origin: str  # file path or "registry id N", for messages
    uuid_fields: tuple[str, ...] = ()  # top-level uuid fields (fastavro reads uuid.UUID)

    def to_json(self) -> str:
        """The self-contained schema text (what a registry gets)."""
        return json.dumps(self.expanded, separators=(",", ":"))


def expand_named_types(schema: Any, named: Mapping[str, Any]) -> Any:
    """``schema`` with every named type in full at its first use and by name afterwards.

    The walk is depth-first in field order, as the Avro specification's canonical form is.
    Attributes (logical types, defaults, docs) are kept; fastavro's private keys are dropped.
    """
    seen: set[str] = set()

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            if node in _PRIMITIVES or node in seen:
                return node
            if node not in named:
                raise SchemaError(f"unknown named type {node!r}")
            return walk(named[node])
        if isinstance(node, list):
            return [walk(branch) for branch in node]
        out = {k: v for k, v in node.items() if not k.startswith("__")}
        kind = out["type"]
        if not isinstance(kind, str) or kind not in _KINDS:
            return walk(kind)  # {"type": <schema>} wrapper
        if kind in _NAMED_KINDS:
            seen.add(out["name"])  # before the fields: a record may refer to itself
        if kind in ("record", "error"):
            out["fields"] = [{**f, "type": walk(f["type"])} for f in out["fields"]]
        elif kind == "array":
            out["items"] = walk(out["items"])
        elif kind == "map":
            out["values"] = walk(out["values"])
        return out

    return walk(schema)


def fingerprint_of(expanded: Any) -> tuple[str, bytes]:
    """Parsing canonical form and its 8-byte CRC-64-AVRO fingerprint (little-endian)."""
    canonical = to_parsing_canonical_form(expanded)
    # fastavro renders the 64-bit value as the hex of its little-endian bytes.
    return canonical, bytes.fromhex(fingerprint(canonical, FINGERPRINT_ALGORITHM))


def _make(parsed: Any, named: Mapping[str, Any], origin: str) -> AvroSchema:
    if not isinstance(parsed, dict) or parsed.get("type") not in _NAMED_KINDS:
        raise SchemaError(f"{origin}: the top level must be a named type")
    expanded = expand_named_types(parsed, named)
    canonical, fp = fingerprint_of(expanded)
    uuid_fields = tuple(
        f["name"]
        for f in parsed.get("fields", ())
        if isinstance(f["type"], dict) and f["type"].get("logicalType") == "uuid"
    )
    return AvroSchema(parsed["name"], parsed, named, expanded, canonical, fp, origin, uuid_fields)


@dataclass(frozen=True)
class _Document:
    doc: Any
    origin: str


def _full_name(doc: Any, origin: str) -> str:
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise SchemaError(f"{origin}: the top level must be a named type")
    name: str = doc["name"]
    namespace = doc.get("namespace")
    return f"{namespace}.{name}" if namespace and "." not in name else name


class _Parser:
    """Parses documents into one namespace of named types, pulling in referenced ones on demand."""

    def __init__(self, documents: Mapping[str, _Document]) -> None:
        self.named: dict[str, Any] = {}
        self._documents = documents
        self._done: dict[str, Any] = {}
        self._active: set[str] = set()

    def parse_name(self, name: str) -> Any:
        if name not in self._done:
            if name in self._active:
                raise SchemaError(f"circular reference through {name!r}")
            self._active.add(name)
            try:
                self._done[name] = self.parse(self._documents[name])
            finally:
                self._active.discard(name)
        return self._done[name]

    def parse(self, document: _Document) -> Any:
        while True:
            try:
                return parse_schema(document.doc, self.named)
            except UnknownType as exc:
                missing = exc.name
                if missing not in self._documents or missing in self._done:
                    raise SchemaError(f"{document.origin}: unknown type {missing!r}") from None
                self.parse_name(missing)
            except (SchemaParseException, ValueError, TypeError, KeyError) as exc:
                raise SchemaError(f"{document.origin}: {exc}") from None


def _read(path: Path) -> _Document:
    try:
        return _Document(json.loads(path.read_text(encoding="utf-8")), str(path))
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path}: {exc}") from None


def parse_document_set(doc: Any, references: Iterable[Any], origin: str) -> AvroSchema:
    """One schema given as JSON, with the schemas it refers to (as a registry hands them out)."""
    documents: dict[str, _Document] = {}
    for ref in references:
        documents[_full_name(ref, origin)] = _Document(ref, origin)
    parser = _Parser(documents)
    return _make(parser.parse(_Document(doc, origin)), parser.named, origin)


class SchemaStore:
    """Current schemas by name and every known writer schema by fingerprint."""

    def __init__(self, current: Iterable[AvroSchema], history: Iterable[AvroSchema] = ()) -> None:
        self._current = {schema.name: schema for schema in current}
        self._by_fingerprint = {schema.fingerprint: schema for schema in history}
        # A history file identical to the current one (same canonical form) resolves to the
        # current schema, so decoding skips schema resolution.
        self._by_fingerprint.update((s.fingerprint, s) for s in self._current.values())

    @classmethod
    def load(cls, root: Path) -> SchemaStore:
        documents: dict[str, _Document] = {}
        for path in sorted(root.glob("*.avsc")):
            document = _read(path)
            name = _full_name(document.doc, document.origin)
            if name in documents:
                raise SchemaError(f"{path}: {name} is also defined in {documents[name].origin}")
            documents[name] = document
        if not documents:
            raise SchemaError(f"no .avsc files in {root}")
        parser = _Parser(documents)
        current = [
            _make(parser.parse_name(n), parser.named, d.origin) for n, d in documents.items()
        ]
        history = []
        for path in sorted((root / HISTORY_DIR).glob("*.avsc")):
            # A fresh namespace per old version: it may define an old shape of a shared type
            # that must not replace the current one.
            old = _Parser(documents)
            history.append(_make(old.parse(_read(path)), old.named, str(path)))
        return cls(current, history)

    @classmethod
    def from_settings(cls, settings: Settings) -> SchemaStore:
        return load_store(settings.schemas_dir or default_schemas_dir())

    def current(self, name: str) -> AvroSchema:
        """The current schema of a full name; KeyError when there is none."""
        return self._current[name]

    def find_current(self, name: str) -> AvroSchema | None:
        return self._current.get(name)

    def by_fingerprint(self, fp: bytes) -> AvroSchema | None:
        return self._by_fingerprint.get(fp)

    def names(self) -> list[str]:
        return sorted(self._current)

    def writers(self) -> list[AvroSchema]:
        """Every known writer schema, current and historical."""
        return list(self._by_fingerprint.values())


@lru_cache(maxsize=8)
def load_store(root: Path) -> SchemaStore:
    """The store of a folder, parsed once per process."""
    return SchemaStore.load(root.resolve())
