"""Times as text: RFC 3339 in UTC with ``Z``, the one form the relay writes everywhere (Klaviyo
request bodies, dead-letter headers, plain-JSON events, tool output).

A naive ``datetime`` is taken as UTC: fastavro hands ``timestamp-millis`` back aware, but a
caller that built one by hand means UTC too. Python 3.11's ``fromisoformat`` reads every form
written here (and ``+hh:mm`` offsets), so parsing needs no rewriting of ``Z``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

__all__ = ["format_rfc3339", "parse_rfc3339"]


def format_rfc3339(moment: datetime, *, timespec: Literal["auto", "milliseconds"] = "auto") -> str:
    """``2023-10-15T00:00:00Z``. ``auto``: the shortest exact form (seconds, milliseconds or
    microseconds); ``milliseconds``: always three digits, for fixed-width headers."""
    # Every event time is already UTC (fastavro reads timestamp-millis as UTC): no conversion,
    # and isoformat's "+00:00" cut off rather than a naive copy made (half the cost; this runs
    # for every Create Event).
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    if timespec == "auto":
        micros = moment.microsecond
        spec = "seconds" if not micros else "milliseconds" if micros % 1000 == 0 else "microseconds"
    else:
        spec = timespec
    return moment.isoformat(timespec=spec)[: -len("+00:00")] + "Z"


def parse_rfc3339(text: str) -> datetime:
    """An aware ``datetime`` (UTC when ``text`` has no offset); ValueError when not a time."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
