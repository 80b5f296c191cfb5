"""Dead-letter records as an operator sees them: why, where from, and how to send them again.

Pure: a :class:`ParkedRecord` is built from a record's coordinates, key, value, timestamp and
headers (the headers the pipeline writes, Kafka Connect's ``__connect.errors.*`` plus the
relay's ``klaviyo-relay.*``), so everything here is tested without a broker.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from consumer.accounts.config import Accounts
from consumer.accounts.routing import route
from consumer.headers import (
    CONNECT_PREFIX,
    H_BACKFILL,
    H_CODE,
    H_FIRST_FAILURE,
    H_MESSAGE,
    H_OFFSET,
    H_OMITTED,
    H_ORIGINAL_REASON,
    H_ORIGINAL_SIZE,
    H_ORIGINAL_TIMESTAMP,
    H_PARTITION,
    H_REASON,
    H_REPLAY_OF,
    H_STAGE,
    H_STATUS,
    H_TOPIC,
    H_VALUE_SHA256,
    H_VALUE_TRUNCATED,
    RELAY_PREFIX,
    Headers,
)
from consumer.rfc3339 import parse_rfc3339


@dataclass(frozen=True, slots=True)
class ParkedRecord:
    """One record read back from the dead-letter topic (written as a
    :class:`consumer.pipeline.deadletter.OutgoingDeadLetter`)."""

    partition: int  # on the dead-letter topic
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: datetime | None  # when it was parked (older relays: the source record's time)
    headers: Headers

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` as text (the writer's values are UTF-8)."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value.decode("utf-8", "replace") if value is not None else None
        return found

    @property
    def source_topic(self) -> str | None:
        return self.header(H_TOPIC)

    @property
    def source_partition(self) -> int | None:
        return _int(self.header(H_PARTITION))

    @property
    def source_offset(self) -> int | None:
        return _int(self.header(H_OFFSET))

    @property
    def source(self) -> str:
        """``topic/partition/offset`` of the original record."""
        partition, offset = _text(self.source_partition), _text(self.source_offset)
        return f"{self.source_topic or '?'}/{partition}/{offset}"

    @property
    def stage(self) -> str:
        return self.header(H_STAGE) or "?"

    @property
    def reason(self) -> str:
        return self.header(H_REASON) or "unknown"

    @property
    def message(self) -> str:
        return self.header(H_MESSAGE) or ""

    @property
    def klaviyo_status(self) -> int | None:
        return _int(self.header(H_STATUS))

    @property
    def klaviyo_code(self) -> str | None:
        return self.header(H_CODE)

    @property
    def first_failure(self) -> datetime | None:
        return _time(self.header(H_FIRST_FAILURE))

    @property
    def failed_at(self) -> datetime | None:
        """When it failed, or (for a writer that did not say) the record's own timestamp."""
        return self.first_failure or self.timestamp

    @property
    def original_timestamp(self) -> datetime | None:
        """The source record's timestamp. Relays before the ``original-timestamp`` header kept
        it as the dead letter's own timestamp."""
        return _time(self.header(H_ORIGINAL_TIMESTAMP)) or self.timestamp

    def age(self, now: datetime) -> timedelta | None:
        """How old the original event is: its record's timestamp to ``now``."""
        born = self.original_timestamp or self.first_failure
        return now - born if born is not None else None

    # A too_large marker: the record was over the size limit and parked incomplete.
    @property
    def original_reason(self) -> str | None:
        return self.header(H_ORIGINAL_REASON)

    @property
    def original_size(self) -> int | None:
        return _int(self.header(H_ORIGINAL_SIZE))

    @property
    def value_sha256(self) -> str | None:
        return self.header(H_VALUE_SHA256)

    @property
    def value_truncated(self) -> str | None:
        """``prefix`` (the value holds its first bytes) or ``dropped``; None: complete."""
        return self.header(H_VALUE_TRUNCATED)

    @property
    def omitted(self) -> list[str]:
        """Other parts of the record a marker left out (``headers``, ``key``)."""
        text = self.header(H_OMITTED)
        return [part for part in text.split(",") if part] if text else []

    @property
    def incomplete(self) -> str | None:
        """What is missing from the original record, said in one phrase; None: nothing."""
        missing = []
        if self.value_truncated:
            kept = len(self.value or b"")
            missing.append(f"value truncated ({kept} of {_text(self.original_size)} bytes kept)")
        missing += [f"{part} left out" for part in self.omitted]
        return ", ".join(missing) or None

    def original_headers(self) -> Headers:
        """The source record's own headers: the error headers and any earlier replay's removed."""
        return tuple(
            (key, value)
            for key, value in self.headers
            if not key.startswith(CONNECT_PREFIX) and not key.startswith(RELAY_PREFIX)
        )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _text(number: int | None) -> str:
    return "?" if number is None else str(number)


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_rfc3339(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a command works on; an empty field selects everything."""

    reasons: frozenset[str] = frozenset()
    topics: frozenset[str] = frozenset()
    since: datetime | None = None
    # Klaviyo accounts, and how the relay routes events to them: the original record's account
    # header and topic are in the dead letter, so it is routed exactly as the relay did.
    accounts: frozenset[str] = frozenset()
    routing: Accounts | None = None

    def matches(self, letter: ParkedRecord) -> bool:
        if self.reasons and letter.reason not in self.reasons:
            return False
        if self.topics and letter.source_topic not in self.topics:
            return False
        if self.accounts and self.routing is not None:
            account = route(self.routing, letter.source_topic or "", letter.headers)
            if account not in self.accounts:
                return False
        if self.since is not None:
            failed = letter.failed_at
            return failed is not None and failed >= self.since
        return True


@dataclass(frozen=True, slots=True)
class Replay:
    """Where and how one dead letter is published again."""

    letter: ParkedRecord
    topic: str
    partition: int | None  # the original partition, so per-key order holds; None: by key
    headers: Headers
    backfill: bool


class NotReplayable(ValueError):
    """The record does not say where it came from (not written by the relay), or is a
    ``too_large`` marker that does not hold the whole original record."""


def plan_replay(letter: ParkedRecord, now: datetime, backfill_after: timedelta) -> Replay:
    """The replay of ``letter``: original key, value and headers back on the source topic,
    marked ``replay-of`` and, when the event is older than ``backfill_after``, ``backfill``
    (Klaviyo then records it without firing flows a second time)."""
    topic = letter.source_topic
    if not topic:
        raise NotReplayable(f"dead letter at offset {letter.offset} has no {H_TOPIC} header")
    if letter.incomplete:
        raise NotReplayable(
            f"{letter.source} was parked as a too_large marker, {letter.incomplete}:"
            f" the original record (sha256 {letter.value_sha256}) must be republished from its"
            " source topic while retained, or by its producer"
        )
    age = letter.age(now)
    backfill = age is not None and age > backfill_after
    headers = (*letter.original_headers(), (H_REPLAY_OF, letter.source.encode()))
    if backfill:
        headers = (*headers, (H_BACKFILL, b"true"))
    return Replay(letter, topic, letter.source_partition, headers, backfill)


_DURATION = re.compile(r"(\d+)\s*([smhdw])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime) -> datetime:
    """A point in time from ``--since``: RFC 3339 / ISO 8601 (UTC when no offset is given), or a
    duration back from ``now`` such as ``90s``, ``15m``, ``2h``, ``1d12h``."""
    cleaned = text.strip()
    compact = cleaned.replace(" ", "")
    if compact and _DURATION.sub("", compact) == "" and _DURATION.match(compact):
        seconds = sum(
            int(amount) * _UNIT_SECONDS[unit.lower()] for amount, unit in _DURATION.findall(compact)
        )
        return now - timedelta(seconds=seconds)
    moment = _time(cleaned)
    if moment is None:
        raise ValueError(
            f"{text!r} is neither a time (2024-05-01T12:00:00Z) nor a duration (90m, 2h, 1d)"
        )
    return moment


def format_duration(delta: timedelta | None) -> str:
    """``3d4h``, ``2h5m``, ``42s``: the two largest units, for one-line output."""
    if delta is None:
        return "?"
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return sign + "".join(parts[:2])


def count_by(letters: Iterable[ParkedRecord], *, field: str = "reason") -> dict[str, int]:
    """How many dead letters per reason (or per ``source_topic`` / ``stage``), most first."""
    counts: dict[str, int] = {}
    for letter in letters:
        value = getattr(letter, field) or "?"
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def newest(letters: Sequence[ParkedRecord], limit: int | None) -> list[ParkedRecord]:
    """The ``limit`` most recently failed letters, oldest first (all when ``limit`` is None)."""
    ordered = sorted(
        letters,
        key=lambda dl: (dl.failed_at or datetime.min.replace(tzinfo=UTC), dl.partition, dl.offset),
    )
    return ordered if limit is None else ordered[max(0, len(ordered) - limit) :]
