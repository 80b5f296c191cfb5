"""An HTTP answer (or the lack of one) → :data:`~consumer.klaviyo.outcomes.Outcome`.

Pure functions of status, headers and body bytes: the client does the I/O, this module decides
what the answer means. Klaviyo's JSON:API ``errors`` are parsed into :class:`KlaviyoError` so the
pipeline can dead-letter with Klaviyo's own code and pointer.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from consumer.klaviyo.outcomes import (
    FATAL_STATUSES,
    RETRYABLE_STATUSES,
    Accepted,
    Fatal,
    KlaviyoError,
    Outcome,
    Permanent,
    Retryable,
)


def classify_response(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    """What an HTTP answer means for the request that got it."""
    if 200 <= status < 300:
        return Accepted(status=status, body=parse_json(body))
    if status in FATAL_STATUSES:
        return Fatal(status=status, errors=parse_errors(status, body))
    # Listed retryable statuses first; then any other 5xx is the server's trouble, not ours.
    if status in RETRYABLE_STATUSES or status >= 500:
        return Retryable(
            status=status,
            reason=f"http_{status}",
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    # 400/404/405/409/410/413/415/422 and any other 4xx (or odd 1xx/3xx): resending won't help.
    return Permanent(status=status, errors=parse_errors(status, body))


def timeout_outcome() -> Retryable:
    return Retryable(status=None, reason="timeout")


def connection_error_outcome() -> Retryable:
    return Retryable(status=None, reason="connection")


def parse_json(body: bytes) -> Any:
    """The JSON document in ``body``, or None when it is empty or not JSON."""
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def parse_errors(status: int, body: bytes) -> tuple[KlaviyoError, ...]:
    """Klaviyo's ``{"errors": [...]}`` entries; empty when the body is not that shape."""
    document = parse_json(body)
    if not isinstance(document, dict) or not isinstance(document.get("errors"), list):
        return ()
    return tuple(_error(status, entry) for entry in document["errors"] if isinstance(entry, dict))


def _error(status: int, entry: dict[str, Any]) -> KlaviyoError:
    source = _dict_or_empty(entry.get("source"))
    meta = _dict_or_empty(entry.get("meta"))
    return KlaviyoError(
        status=_int_or(entry.get("status"), status),
        code=_str_or_none(entry.get("code")),
        title=_str_or_none(entry.get("title")),
        detail=_str_or_none(entry.get("detail")),
        pointer=_str_or_none(source.get("pointer")),
        parameter=_str_or_none(source.get("parameter")),
        meta=meta,
    )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _dict_or_empty(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
