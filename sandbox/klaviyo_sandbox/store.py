"""The sandbox's memory: profiles, accepted events, dropped events, dedup.

Behaviour copied from Klaviyo where tests depend on it:

- An event's profile is resolved to one stored profile by ``id``, then email, phone number,
  external id, anonymous id, and created when none matches, so one person identified
  differently by two events is one profile. An ``id`` the sandbox has never seen is adopted
  (a profile with that id is created): it stands for a profile that already exists in the
  account, as the ids producers carry do. The same holds for ``PATCH /api/profiles/{id}`` and
  an import naming an ``id``, as long as the id has the shape of Klaviyo's (a 26-character ULID):
  producers learn ids from Klaviyo, so the profile is taken to exist already; an id of any other
  shape is unknown (404).
- Dedup: a repeated ``unique_id`` (or, without one, the same time to the second) for the same
  metric and profile is recorded once; the stored event's ``duplicate_count`` goes up.
- Events whose email is ``@example.com`` / ``@test.com`` are accepted and silently dropped: they
  go to :attr:`SandboxState.dropped`, never to :attr:`SandboxState.events`, and create no profile.
- Profile writes follow the spec: a null attribute clears it, an absent one leaves it; taking
  an identifier another profile holds is :class:`DuplicateProfile` (409 ``duplicate_profile``).
- The last :data:`REJECTED_KEPT` refused requests (any status ≥ 400, with their ``errors``)
  are kept in :attr:`SandboxState.rejected` for the inbox page.
"""

from __future__ import annotations

import random
import re
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

from klaviyo_sandbox.validation import parse_time

JSONObject = dict[str, Any]

# Klaviyo's profile ids are ULIDs: 26 characters of Crockford's base32.
_KLAVIYO_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")

# Identifiers in resolution order; emails match case-insensitively.
IDENTIFIERS = ("email", "phone_number", "external_id", "anonymous_id")
_NOT_STORED = frozenset({"_kx", "meta"})
_DROPPED_DOMAINS = ("@example.com", "@test.com")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Enough to see what went wrong lately; bounded so a long run against faults stays small.
REJECTED_KEPT = 200
# What a profile resource shows (``anonymous_id`` is write-only at Klaviyo).
_SHOWN_ATTRIBUTES = (
    "email",
    "phone_number",
    "external_id",
    "first_name",
    "last_name",
    "organization",
    "locale",
    "title",
    "image",
)


class EventFate(StrEnum):
    RECORDED = "recorded"
    DUPLICATE = "duplicate"
    DROPPED = "dropped"


class ProfileNotFound(Exception):
    pass


class DuplicateProfile(Exception):
    """The write would give a profile an identifier that ``profile_id`` already holds."""

    def __init__(self, profile_id: str, identifier: str) -> None:
        super().__init__(f"{identifier} is held by profile {profile_id}")
        self.profile_id = profile_id
        self.identifier = identifier


_stamp: list[Any] = [0, ""]  # one-entry cache: formatting the time costs more than the rest


def now_iso() -> str:
    """The current UTC time, RFC 3339 to the millisecond."""
    ms = time.time_ns() // 1_000_000
    if _stamp[0] != ms:
        moment = datetime.fromtimestamp(ms / 1000, UTC)
        _stamp[:] = [ms, moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")]
    return str(_stamp[1])


def _key(name: str, value: str) -> str:
    return value.lower() if name == "email" else value


@dataclass(slots=True)
class Profile:
    id: str
    attributes: JSONObject
    created: str
    updated: str
    last_event_date: str | None = None

    def resource(self, base_url: str = "") -> JSONObject:
        """The profile as Klaviyo's profile endpoints return it (``data`` member)."""
        attrs: JSONObject = {k: self.attributes.get(k) for k in _SHOWN_ATTRIBUTES}
        attrs["location"] = self.attributes.get("location") or {}
        attrs["properties"] = self.attributes.get("properties") or {}
        attrs["created"] = self.created
        attrs["updated"] = self.updated
        attrs["last_event_date"] = self.last_event_date
        return {
            "type": "profile",
            "id": self.id,
            "attributes": attrs,
            "links": {"self": f"{base_url}/api/profiles/{self.id}/"},
        }


@dataclass
class SandboxState:
    """Everything the sandbox has been told, in memory (reset by :meth:`reset`)."""

    rng: random.Random = field(default_factory=random.Random)
    # False: count events without keeping them (long benchmarks), dedup still exact.
    keep_events: bool = True
    events: list[JSONObject] = field(default_factory=list)
    dropped: list[JSONObject] = field(default_factory=list)
    profiles: dict[str, Profile] = field(default_factory=dict)
    accepted: int = 0
    dropped_count: int = 0
    duplicates: int = 0
    _index: dict[str, dict[str, str]] = field(
        default_factory=lambda: {name: {} for name in IDENTIFIERS}
    )
    _dedup: dict[tuple[str, str, str], JSONObject] = field(default_factory=dict)
    rejected: deque[JSONObject] = field(default_factory=lambda: deque(maxlen=REJECTED_KEPT))
    rejected_count: int = 0

    def reset(self) -> None:
        self.events.clear()
        self.dropped.clear()
        self.rejected.clear()
        self.rejected_count = 0
        self.profiles.clear()
        self.accepted = self.dropped_count = self.duplicates = 0
        for index in self._index.values():
            index.clear()
        self._dedup.clear()

    # --- profiles ----------------------------------------------------------------------------

    def new_profile_id(self) -> str:
        """A 26-character id in Klaviyo's (ULID) alphabet, from the seeded generator."""
        bits = self.rng.getrandbits(120)
        return "01" + "".join(_CROCKFORD[(bits >> (5 * i)) & 31] for i in range(24))

    def find(self, name: str, value: str) -> Profile | None:
        if name == "id":
            return self.profiles.get(value)
        profile_id = self._index[name].get(_key(name, value))
        return None if profile_id is None else self.profiles[profile_id]

    def _holder(self, attrs: JSONObject) -> Profile | None:
        """The one profile the identifiers in ``attrs`` point at, or DuplicateProfile."""
        found: Profile | None = None
        for name in IDENTIFIERS:
            value = attrs.get(name)
            if not value:
                continue
            profile = self.find(name, value)
            if profile is None:
                continue
            if found is not None and profile.id != found.id:
                raise DuplicateProfile(profile.id, name)
            found = profile
        return found

    def _create(self, profile_id: str | None) -> Profile:
        stamp = now_iso()
        profile = Profile(profile_id or self.new_profile_id(), {}, stamp, stamp)
        self.profiles[profile.id] = profile
        return profile

    def _apply(self, profile: Profile, attrs: JSONObject, *, clear_nulls: bool) -> None:
        """Write ``attrs`` onto ``profile`` (identifiers must already be checked free)."""
        for name, value in attrs.items():
            if name == "properties":
                if value is None:
                    if clear_nulls:
                        profile.attributes.pop("properties", None)
                    continue
                merged = dict(profile.attributes.get("properties") or {})
                merged.update(value)
                profile.attributes["properties"] = merged
                continue
            if name in IDENTIFIERS:
                old = profile.attributes.get(name)
                if old and old != value:
                    self._index[name].pop(_key(name, old), None)
                if value:
                    self._index[name][_key(name, value)] = profile.id
            if value is None:
                if clear_nulls:
                    profile.attributes.pop(name, None)
            else:
                profile.attributes[name] = value
        profile.updated = now_iso()

    def _check_free(self, profile_id: str, attrs: JSONObject) -> None:
        for name in IDENTIFIERS:
            value = attrs.get(name)
            if value:
                holder = self.find(name, value)
                if holder is not None and holder.id != profile_id:
                    raise DuplicateProfile(holder.id, name)

    @staticmethod
    def _patch_meta(profile: Profile, meta: JSONObject | None) -> None:
        ops = (meta or {}).get("patch_properties") or {}
        props = dict(profile.attributes.get("properties") or {})
        for key, value in (ops.get("append") or {}).items():
            current = props.get(key)
            props[key] = [*(current if isinstance(current, list) else []), value]
        for key, value in (ops.get("unappend") or {}).items():
            current = props.get(key)
            if isinstance(current, list):
                props[key] = [v for v in current if v != value]
        unset = ops.get("unset")
        for key in [unset] if isinstance(unset, str) else unset or []:
            props.pop(key, None)
        if ops:
            profile.attributes["properties"] = props

    def _existing(self, profile_id: str) -> Profile:
        """The profile ``profile_id`` names: stored, or adopted when it has Klaviyo's id shape."""
        profile = self.profiles.get(profile_id)
        if profile is None:
            if not _KLAVIYO_ID.match(profile_id):
                raise ProfileNotFound(profile_id)
            profile = self._create(profile_id)
        return profile

    def update_profile(self, profile_id: str, data: JSONObject) -> Profile:
        """PATCH /api/profiles/{id}: raises ProfileNotFound or DuplicateProfile."""
        profile = self._existing(profile_id)
        attrs = data.get("attributes") or {}
        self._check_free(profile.id, attrs)
        self._apply(profile, attrs, clear_nulls=True)
        self._patch_meta(profile, data.get("meta"))
        return profile

    def import_profile(self, data: JSONObject) -> tuple[Profile, bool]:
        """POST /api/profile-import: (profile, created); raises ProfileNotFound/DuplicateProfile."""
        attrs = {k: v for k, v in (data.get("attributes") or {}).items() if k != "_kx"}
        created = False
        if data.get("id"):
            profile = self._existing(data["id"])
            self._check_free(profile.id, attrs)
        else:
            holder = self._holder(attrs)
            created = holder is None
            profile = holder if holder is not None else self._create(None)
        self._apply(profile, attrs, clear_nulls=True)
        self._patch_meta(profile, data.get("meta"))
        return profile, created

    def _resolve_for_event(self, data: JSONObject) -> Profile:
        attrs = data.get("attributes") or {}
        wanted = data.get("id")
        profile = self.profiles.get(wanted) if wanted else None
        if profile is None:
            for name in IDENTIFIERS:
                value = attrs.get(name)
                if value and (profile := self.find(name, value)) is not None:
                    break
        if profile is None:
            profile = self._create(wanted)
        # An event updates its profile, but never takes another profile's identifier.
        stored = profile.attributes
        changes = {
            k: v
            for k, v in attrs.items()
            if v is not None and k not in _NOT_STORED and stored.get(k) != v
        }
        for name in IDENTIFIERS:
            value = changes.get(name)
            if value and (holder := self.find(name, value)) is not None and holder is not profile:
                del changes[name]
        if changes:
            self._apply(profile, changes, clear_nulls=False)
        return profile

    # --- events ------------------------------------------------------------------------------

    def record_event(
        self, endpoint: str, event: JSONObject, profile_data: JSONObject, backfill: bool = False
    ) -> EventFate:
        """Store one validated event (attributes of a Create Event, or of one bulk event)."""
        received = now_iso()
        attrs = profile_data.get("attributes") or {}
        sent_profile = {k: v for k, v in attrs.items() if k != "meta"}
        if profile_data.get("id"):
            sent_profile["id"] = profile_data["id"]
        metric = event["metric"]["data"]["attributes"]["name"]
        record: JSONObject = {
            "metric": metric,
            "unique_id": event.get("unique_id"),
            "profile": sent_profile,
            "properties": event["properties"],
            "time": event.get("time") or received,
            "value": event.get("value"),
            "value_currency": event.get("value_currency"),
            "backfill": bool(event.get("backfill", backfill)),
            "endpoint": endpoint,
            "received_at": received,
        }
        email = attrs.get("email")
        if isinstance(email, str) and email.lower().endswith(_DROPPED_DOMAINS):
            self.dropped_count += 1
            if self.keep_events:
                self.dropped.append(record)
            return EventFate.DROPPED
        profile = self._resolve_for_event(profile_data)
        key = (metric, profile.id, self._dedup_token(record))
        first = self._dedup.get(key)
        if first is not None:
            first["duplicate_count"] += 1
            self.duplicates += 1
            return EventFate.DUPLICATE
        record["profile_id"] = profile.id
        record["duplicate_count"] = 0
        self.accepted += 1
        if self.keep_events:
            self.events.append(record)
            self._dedup[key] = record
        else:
            self._dedup[key] = {"duplicate_count": 0}
        profile.last_event_date = record["time"]
        return EventFate.RECORDED

    @staticmethod
    def _dedup_token(record: JSONObject) -> str:
        """unique_id, or Klaviyo's default: the event time to the second."""
        if record["unique_id"]:
            return "u:" + str(record["unique_id"])
        moment = parse_time(record["time"])
        return f"t:{int(moment.timestamp()) if moment else record['time']}"

    # --- rejected requests -------------------------------------------------------------------

    def record_rejection(
        self, endpoint: str, method: str, path: str, status: int, body: bytes | None
    ) -> None:
        """Keep one refused request: its status and the ``errors`` of the JSON:API answer."""
        try:
            document = orjson.loads(body or b"{}")
        except orjson.JSONDecodeError:
            document = {}
        errors = document.get("errors") if isinstance(document, dict) else None
        self.rejected_count += 1
        self.rejected.append(
            {
                "received_at": now_iso(),
                "endpoint": endpoint,
                "method": method,
                "path": path,
                "status": status,
                "errors": [
                    {
                        "code": e.get("code"),
                        "detail": e.get("detail"),
                        "pointer": (e.get("source") or {}).get("pointer"),
                        "parameter": (e.get("source") or {}).get("parameter"),
                    }
                    for e in errors or []
                    if isinstance(e, dict)
                ],
            }
        )
