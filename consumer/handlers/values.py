"""JSON values as Klaviyo wants them: times with an offset, decimals as numbers, no nulls."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from consumer.klaviyo.requests import JSONObject


def rfc3339(moment: datetime) -> str:
    """``2023-10-15T00:00:00+00:00``: RFC 3339 in UTC with an explicit offset.

    The guide's examples omit the offset; the schema's ``date-time`` requires one.
    """
    if moment.tzinfo is None:  # fastavro's timestamp-millis is UTC; say so if it came untagged
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def number(value: Decimal) -> float:
    """A decimal as a JSON number: Klaviyo's ``value`` is a number; segments compare numbers."""
    return float(value)


def compact(mapping: Mapping[str, Any]) -> JSONObject:
    """The mapping without its null values: Klaviyo gets absent fields, never ``null``."""
    return {key: value for key, value in mapping.items() if value is not None}
