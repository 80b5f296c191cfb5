"""JSON values as Klaviyo wants them: decimals as numbers, no nulls (times: consumer.rfc3339,
whose ``Z`` is the offset the schema's ``date-time`` requires and the guide's examples omit)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from consumer.klaviyo.requests import JSONObject


def number(value: Decimal) -> float:
    """A decimal as a JSON number: Klaviyo's ``value`` is a number; segments compare numbers."""
    return float(value)


def compact(mapping: Mapping[str, Any]) -> JSONObject:
    """The mapping without its null values: Klaviyo gets absent fields, never ``null``."""
    return {key: value for key, value in mapping.items() if value is not None}
