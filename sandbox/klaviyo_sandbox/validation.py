"""Request-body checks the way Klaviyo makes them, in straight code.

Two layers, run in this order:

1. **Shape**: the request schemas Klaviyo publishes (``klaviyo/request-schemas.json``, revision
   2026-07-15) written out below as small spec objects: required members, JSON types, the
   ``type`` constants, and no unknown members (Klaviyo answers 400 "... is not a valid field for
   the resource ..."; it is also how a profile's ``properties`` put beside ``attributes`` is
   caught). No jsonschema at run time: this runs on every request of a benchmark.
2. **Limits**: what the schema cannot say (events API overview, spec descriptions): a profile
   identifier, E.164 phone numbers, RFC 3339 times *with* an offset between 1990 and now + 1 year,
   metric names < 128 characters, ≤ 400 event properties, strings ≤ 100 KB, arrays ≤ 4,000
   items, nesting ≤ 10, ``unique_id`` 1-255 characters, ≤ 1,000 events per bulk request, and
   no ``unique_id`` repeated for the same profile and metric within one bulk request (the spec:
   "the request will fail and no events will be processed").
   They run only on a body whose shape is right, so they may assume it.

Every check returns :class:`Problem` s whose ``path`` is the JSON pointer Klaviyo puts in
``source.pointer``; bulk problems point inside the bulk body.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

PathPart = str | int

MAX_EVENT_PROPERTIES = 400
MAX_STRING_BYTES = 100 * 1024
MAX_ARRAY_ITEMS = 4000
MAX_NESTING = 10
MAX_METRIC_NAME = 127  # "must be less than 128 characters"
MAX_UNIQUE_ID = 255
MAX_EMAIL = 99  # events API troubleshooting: emails under 100 characters
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_BULK_EVENTS = 1000
EVENT_PAYLOAD_BYTES = 5 * 1024 * 1024
PROFILE_PAYLOAD_BYTES = 100 * 1024
MIN_YEAR = 1990

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
BULK_ENTRIES: tuple[PathPart, ...] = ("data", "attributes", "events-bulk-create", "data")


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason to reject a body: where (path of members) and why."""

    path: tuple[PathPart, ...]
    detail: str

    @property
    def pointer(self) -> str:
        """RFC 6901 JSON pointer of :attr:`path` (``/`` for the whole body)."""
        escaped = (str(p).replace("~", "~0").replace("/", "~1") for p in self.path)
        return "/" + "/".join(escaped)


# --- shape -------------------------------------------------------------------------------------


class Spec:
    """A node of a request schema."""

    nullable: bool = False


@dataclass(frozen=True)
class Scalar(Spec):
    types: tuple[type, ...]
    described: str  # "a string", for the error detail
    nullable: bool = False


@dataclass(frozen=True)
class Const(Spec):
    value: str


@dataclass(frozen=True)
class FreeObject(Spec):
    """An object the spec leaves open (event/profile ``properties``, patch operations)."""

    nullable: bool = False


@dataclass(frozen=True)
class StrOrStrList(Spec):
    nullable: bool = True


@dataclass(frozen=True)
class Obj(Spec):
    resource: str  # named in the error detail, as Klaviyo does
    fields: Mapping[str, Spec]
    required: frozenset[str] = field(default_factory=frozenset)
    nullable: bool = False


@dataclass(frozen=True)
class ArrayOf(Spec):
    items: Spec


STR = Scalar((str,), "a string")
STR_N = Scalar((str,), "a string", nullable=True)
NUM_N = Scalar((int, float), "a number", nullable=True)
BOOL_N = Scalar((bool,), "a boolean", nullable=True)
STR_OR_NUM_N = Scalar((str, int, float), "a string or a number", nullable=True)


def _obj(resource: str, required: tuple[str, ...] = (), /, **fields: Spec) -> Obj:
    return Obj(resource, fields, frozenset(required))


def _nullable(spec: Obj) -> Obj:
    return Obj(spec.resource, spec.fields, spec.required, nullable=True)


_LOCATION = _nullable(
    _obj(
        "location",
        **{k: STR_N for k in ("address1", "address2", "city", "country", "region", "zip")},
        latitude=STR_OR_NUM_N,
        longitude=STR_OR_NUM_N,
        timezone=STR_N,
        ip=STR_N,
    )
)
_PATCH_META = _nullable(
    _obj(
        "meta",
        patch_properties=_nullable(
            _obj(
                "patch_properties",
                append=FreeObject(nullable=True),
                unappend=FreeObject(nullable=True),
                unset=StrOrStrList(),
            )
        ),
        patch_identifiers=_nullable(
            _obj("patch_identifiers", append=FreeObject(), unappend=FreeObject())
        ),
    )
)
_PERSON = ("first_name", "last_name", "organization", "locale", "title", "image")


def _profile_attributes(identifiers: tuple[str, ...], meta: bool) -> Obj:
    fields: dict[str, Spec] = {k: STR_N for k in (*identifiers, *_PERSON)}
    fields["location"] = _LOCATION
    fields["properties"] = FreeObject(nullable=True)
    if meta:
        fields["meta"] = _PATCH_META
    return Obj("profile", fields)


_EVENT_IDS = ("email", "phone_number", "external_id", "anonymous_id", "_kx")
# Create Event's schema has the profile's ``meta`` inside ``attributes``; the other operations
# have it beside ``attributes``. Both as published.
_EVENT_PROFILE = _obj(
    "event",
    ("data",),
    data=_obj(
        "profile",
        ("type", "attributes"),
        type=Const("profile"),
        id=STR_N,
        attributes=_profile_attributes(_EVENT_IDS, meta=True),
    ),
)
_BULK_PROFILE = _obj(
    "event-bulk-create",
    ("data",),
    data=_obj(
        "profile",
        ("type", "attributes"),
        type=Const("profile"),
        id=STR_N,
        attributes=_profile_attributes(_EVENT_IDS, meta=False),
        meta=_PATCH_META,
    ),
)
_METRIC = _obj(
    "event",
    ("data",),
    data=_obj(
        "metric",
        ("type", "attributes"),
        type=Const("metric"),
        attributes=_obj("metric", ("name",), name=STR, service=STR_N),
    ),
)
_EVENT_FIELDS: dict[str, Spec] = {
    "properties": FreeObject(),
    "time": STR_N,
    "value": NUM_N,
    "value_currency": STR_N,
    "unique_id": STR_N,
    "backfill": BOOL_N,
    "metric": _METRIC,
}

CREATE_EVENT = _obj(
    "request",
    ("data",),
    data=_obj(
        "event",
        ("type", "attributes"),
        type=Const("event"),
        attributes=Obj(
            "event",
            {**_EVENT_FIELDS, "profile": _EVENT_PROFILE},
            frozenset({"properties", "metric", "profile"}),
        ),
    ),
)

BULK_CREATE_EVENTS = _obj(
    "request",
    ("data",),
    data=_obj(
        "event-bulk-create-job",
        ("type", "attributes"),
        type=Const("event-bulk-create-job"),
        attributes=_obj(
            "event-bulk-create-job",
            ("events-bulk-create",),
            **{
                "events-bulk-create": _obj(
                    "event-bulk-create-job",
                    ("data",),
                    data=ArrayOf(
                        _obj(
                            "event-bulk-create",
                            ("type", "attributes"),
                            type=Const("event-bulk-create"),
                            attributes=_obj(
                                "event-bulk-create",
                                ("profile", "events"),
                                backfill=BOOL_N,
                                profile=_BULK_PROFILE,
                                events=_obj(
                                    "event-bulk-create",
                                    ("data",),
                                    data=ArrayOf(
                                        _obj(
                                            "event",
                                            ("type", "attributes"),
                                            type=Const("event"),
                                            attributes=Obj(
                                                "event",
                                                _EVENT_FIELDS,
                                                frozenset({"properties", "metric"}),
                                            ),
                                        )
                                    ),
                                ),
                            ),
                        )
                    ),
                )
            },
        ),
    ),
)

UPDATE_PROFILE = _obj(
    "request",
    ("data",),
    data=_obj(
        "profile",
        ("type", "id", "attributes"),
        type=Const("profile"),
        id=STR,
        attributes=_profile_attributes(("email", "phone_number", "external_id"), meta=False),
        meta=_PATCH_META,
    ),
)

PROFILE_IMPORT = _obj(
    "request",
    ("data",),
    data=_obj(
        "profile",
        ("type", "attributes"),
        type=Const("profile"),
        id=STR_N,
        attributes=_profile_attributes(("email", "phone_number", "external_id", "_kx"), False),
        meta=_PATCH_META,
    ),
)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


Checker = Callable[[Any, tuple[PathPart, ...], list[Problem]], None]


def check_shape(spec: Spec, value: Any, path: tuple[PathPart, ...], out: list[Problem]) -> None:
    """Append to ``out`` every way ``value`` departs from ``spec``."""
    _compiled(spec)(value, path, out)


def _compiled(spec: Spec) -> Checker:
    checker = _CHECKERS.get(id(spec))
    if checker is None:
        checker = _CHECKERS[id(spec)] = _compile(spec)
        _KEEP.append(spec)  # ids stay valid only while the spec lives
    return checker


_CHECKERS: dict[int, Checker] = {}
_KEEP: list[Spec] = []


def _null(path: tuple[PathPart, ...], out: list[Problem]) -> None:
    out.append(Problem(path, f"{_name(path)} may not be null."))


def _wrong(
    path: tuple[PathPart, ...], out: list[Problem], value: Any, nullable: bool, expected: str
) -> None:
    """``value`` is not the object or array ``expected`` names."""
    if value is None:
        if not nullable:
            _null(path, out)
    else:
        out.append(Problem(path, f"{_name(path)} must be {expected}, not {_type_name(value)}."))


def _compile(spec: Spec) -> Checker:
    """A closure checking one spec node: the hot path pays no dispatch on the spec's kind.

    orjson gives exact types (``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``), so
    ``type(v) in ...`` is right and keeps a JSON ``true`` from passing as a number.
    """
    if isinstance(spec, Obj):
        return _object_checker(spec)
    if isinstance(spec, ArrayOf):
        return _array_checker(spec)
    nullable = spec.nullable
    if isinstance(spec, Scalar):
        types = frozenset(spec.types)
        described = spec.described

        def scalar(value: Any, path: tuple[PathPart, ...], out: list[Problem]) -> None:
            if type(value) not in types:
                if value is None:
                    if not nullable:
                        _null(path, out)
                else:
                    out.append(Problem(path, f"{_name(path)} must be {described}."))

        return scalar
    if isinstance(spec, Const):
        expected = spec.value

        def const(value: Any, path: tuple[PathPart, ...], out: list[Problem]) -> None:
            if value != expected:
                detail = f"'{value}' is not a valid value; expected '{expected}'."
                out.append(Problem(path, detail))

        return const
    if isinstance(spec, FreeObject):

        def free(value: Any, path: tuple[PathPart, ...], out: list[Problem]) -> None:
            if type(value) is not dict:
                _wrong(path, out, value, nullable, "an object")

        return free
    assert isinstance(spec, StrOrStrList)

    def str_or_list(value: Any, path: tuple[PathPart, ...], out: list[Problem]) -> None:
        if value is None or type(value) is str:
            return
        if type(value) is list and all(type(v) is str for v in value):
            return
        out.append(Problem(path, f"{_name(path)} must be a string or an array of strings."))

    return str_or_list


def _array_checker(spec: ArrayOf) -> Checker:
    item = _compiled(spec.items)

    def array(value: Any, path: tuple[PathPart, ...], out: list[Problem]) -> None:
        if type(value) is not list:
            _wrong(path, out, value, False, "an array")
            return
        for i, member in enumerate(value):
            item(member, (*path, i), out)

    return array


def _object_checker(spec: Obj) -> Checker:
    fields = {key: _compiled(sub) for key, sub in spec.fields.items()}
    required = tuple(spec.required)
    resource = spec.resource
    nullable = spec.nullable

    def obj(value: Any, path: tuple[PathPart, ...], out: list[Problem]) -> None:
        if type(value) is not dict:
            _wrong(path, out, value, nullable, "an object")
            return
        for key, member in value.items():
            check = fields.get(key)
            if check is None:
                detail = f"'{key}' is not a valid field for the resource '{resource}'."
                out.append(Problem((*path, key), detail))
            else:
                check(member, (*path, key), out)
        for key in required:
            if key not in value:
                detail = f"'{key}' is a required field for the resource '{resource}'."
                out.append(Problem((*path, key), detail))

    return obj


def _name(path: tuple[PathPart, ...]) -> str:
    return f"'{path[-1]}'" if path else "The request body"


# --- limits ------------------------------------------------------------------------------------


def parse_time(value: str) -> datetime | None:
    """An RFC 3339 date-time with an offset, or None (no offset, or not a date-time at all)."""
    if not _RFC3339.match(value):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


_LONGEST_SAFE = MAX_STRING_BYTES // 4  # UTF-8 takes at most 4 bytes a character


def _walk_limits(node: Any, depth: int, path: tuple[PathPart, ...], out: list[Problem]) -> None:
    """Strings, arrays and nesting inside free-form properties.

    ``node`` is a dict or list ``depth`` containers deep (the properties object itself is 0).
    """
    if type(node) is list:
        if len(node) > MAX_ARRAY_ITEMS:
            out.append(Problem(path, f"Arrays may hold at most {MAX_ARRAY_ITEMS} items."))
            return
        items: Any = enumerate(node)
    else:
        items = node.items()
    for key, value in items:
        kind = type(value)
        if kind is str:
            if len(value) > _LONGEST_SAFE and len(value.encode()) > MAX_STRING_BYTES:
                out.append(Problem((*path, key), "Strings may be at most 100 KB."))
        elif kind is dict or kind is list:
            if depth >= MAX_NESTING:
                out.append(Problem((*path, key), f"Nesting may be at most {MAX_NESTING} levels."))
                return
            _walk_limits(value, depth + 1, (*path, key), out)


def _event_limits(
    attrs: dict[str, Any], path: tuple[PathPart, ...], now: datetime, out: list[Problem]
) -> None:
    props = attrs["properties"]
    if len(props) > MAX_EVENT_PROPERTIES:
        out.append(
            Problem(
                (*path, "properties"), f"Events may have at most {MAX_EVENT_PROPERTIES} properties."
            )
        )
    _walk_limits(props, 0, (*path, "properties"), out)
    name = attrs["metric"]["data"]["attributes"]["name"]
    if not name.strip() or len(name) > MAX_METRIC_NAME:
        out.append(
            Problem(
                (*path, "metric", "data", "attributes", "name"),
                "Metric name must be 1 to 127 characters.",
            )
        )
    unique_id = attrs.get("unique_id")
    if unique_id is not None and not 1 <= len(unique_id) <= MAX_UNIQUE_ID:
        out.append(Problem((*path, "unique_id"), "unique_id must be 1 to 255 characters."))
    value = attrs.get("value")
    if isinstance(value, float) and not math.isfinite(value):
        out.append(Problem((*path, "value"), "value must be a finite number."))
    time = attrs.get("time")
    if time is not None:
        parsed = parse_time(time)
        if parsed is None:
            out.append(
                Problem(
                    (*path, "time"),
                    f"'{time}' is not a valid RFC 3339 date-time with a UTC offset.",
                )
            )
        elif parsed.year < MIN_YEAR or parsed > now + timedelta(days=365):
            out.append(
                Problem(
                    (*path, "time"),
                    "time must be after 1990 and at most 1 year in the future.",
                )
            )


def _profile_limits(
    data: dict[str, Any], path: tuple[PathPart, ...], need_identifier: bool, out: list[Problem]
) -> None:
    attrs = data.get("attributes") or {}
    if need_identifier and not data.get("id") and not any(attrs.get(k) for k in _EVENT_IDS):
        out.append(
            Problem(
                path,
                "A profile needs at least one identifier: id, email, phone_number or external_id.",
            )
        )
    phone = attrs.get("phone_number")
    if phone is not None and not _E164.match(phone):
        out.append(
            Problem(
                (*path, "attributes", "phone_number"),
                "Invalid phone number format (Example of a valid format: +12345678901)",
            )
        )
    email = attrs.get("email")
    # The documented length, plus the shape check Klaviyo's API applies ("Invalid email address"
    # 400): the relay forwards producers' emails unvalidated, so this is a 400 it can really meet.
    if email is not None and len(email) > MAX_EMAIL:
        out.append(Problem((*path, "attributes", "email"), "Emails must be under 100 characters."))
    elif email is not None and not _EMAIL.match(email):
        out.append(Problem((*path, "attributes", "email"), "Invalid email address"))
    props = attrs.get("properties")
    if props:
        _walk_limits(props, 0, (*path, "attributes", "properties"), out)


# --- per operation -----------------------------------------------------------------------------


def validate_create_event(body: Any, now: datetime | None = None) -> list[Problem]:
    out: list[Problem] = []
    check_shape(CREATE_EVENT, body, (), out)
    if out:
        return out
    attrs = body["data"]["attributes"]
    base = ("data", "attributes")
    _event_limits(attrs, base, now or datetime.now(UTC), out)
    _profile_limits(attrs["profile"]["data"], (*base, "profile", "data"), True, out)
    return out


def validate_bulk_create_events(body: Any, now: datetime | None = None) -> list[Problem]:
    out: list[Problem] = []
    check_shape(BULK_CREATE_EVENTS, body, (), out)
    if out:
        return out
    moment = now or datetime.now(UTC)
    entries = body["data"]["attributes"]["events-bulk-create"]["data"]
    total = 0
    seen: dict[tuple[str, str, str, str], tuple[PathPart, ...]] = {}
    for i, entry in enumerate(entries):
        base = (*BULK_ENTRIES, i, "attributes")
        attrs = entry["attributes"]
        profile = attrs["profile"]["data"]
        _profile_limits(profile, (*base, "profile", "data"), True, out)
        events = attrs["events"]["data"]
        if not events:
            out.append(
                Problem((*base, "events", "data"), "A profile entry needs at least one event.")
            )
        total += len(events)
        identities = _profile_identities(profile)
        for j, event in enumerate(events):
            path = (*base, "events", "data", j, "attributes")
            _event_limits(event["attributes"], path, moment, out)
            _repeated_unique_id(event["attributes"], identities, path, seen, out)
    if total == 0:
        out.append(Problem(BULK_ENTRIES, "A bulk request needs at least one event."))
    elif total > MAX_BULK_EVENTS:
        out.append(
            Problem(BULK_ENTRIES, f"A bulk request may hold at most {MAX_BULK_EVENTS} events.")
        )
    return out


def _profile_identities(profile: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What makes two profile entries the same profile: any identifier they share."""
    attrs = profile.get("attributes") or {}
    found = [("id", profile["id"])] if isinstance(profile.get("id"), str) else []
    for name in _EVENT_IDS:
        value = attrs.get(name)
        if isinstance(value, str) and value:
            found.append((name, value.lower() if name == "email" else value))
    return found


def _repeated_unique_id(
    event: Mapping[str, Any],
    identities: list[tuple[str, str]],
    path: tuple[PathPart, ...],
    seen: dict[tuple[str, str, str, str], tuple[PathPart, ...]],
    out: list[Problem],
) -> None:
    unique_id = event.get("unique_id")
    if not isinstance(unique_id, str):
        return  # without one Klaviyo dedups on time; nothing to repeat
    metric = event["metric"]["data"]["attributes"]["name"]
    keys = [(metric, unique_id, name, value) for name, value in identities]
    first = next((seen[k] for k in keys if k in seen), None)
    if first is not None:
        detail = (
            f"unique_id is repeated for the same profile and metric (first at "
            f"{Problem(first, '').pointer}); the request failed and no events were processed."
        )
        out.append(Problem((*path, "unique_id"), detail))
        return
    for key in keys:
        seen.setdefault(key, (*path, "unique_id"))


def validate_update_profile(body: Any) -> list[Problem]:
    # A PATCH names its profile by id in the path, so it needs no identifier attribute.
    return _validate_profile_body(UPDATE_PROFILE, body, need_identifier=False)


def validate_profile_import(body: Any) -> list[Problem]:
    return _validate_profile_body(PROFILE_IMPORT, body, need_identifier=True)


def _validate_profile_body(shape: Spec, body: Any, *, need_identifier: bool) -> list[Problem]:
    out: list[Problem] = []
    check_shape(shape, body, (), out)
    if not out:
        _profile_limits(body["data"], ("data",), need_identifier, out)
    return out
