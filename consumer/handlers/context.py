"""What a handler may know besides the event: the clock and the phone region, passed in so
handlers stay pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class HandlerContext:
    # Only used to judge expiry; an event's ``time`` is always its own occurred_at.
    now: datetime
    # ISO 3166 region assumed for phone numbers written without a country code.
    default_region: str
    # A replayed old event (``dlq replay``): recorded in Klaviyo without triggering flows again.
    backfill: bool = False
