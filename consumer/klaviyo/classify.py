"""An HTTP answer (or the lack of one) → :data:`~consumer.klaviyo.outcomes.Outcome`.

Pure functions of status, headers and body bytes: the client does the I/O, this module decides
what the answer means. Klaviyo's JSON:API ``errors`` are parsed into :class:`KlaviyoError` so the
pipeline can dead-letter with Klaviyo's own code and pointer.

Klaviyo sits behind Cloudflare, and proxies may sit in between: a 401/403 halts the relay only
when it is Klaviyo's own JSON:API auth error. Anything else with those statuses (an HTML bot
challenge, an empty or foreign body) is the edge's and is retried like a 503.

Headers are read case-insensitively whatever mapping is passed (aiohttp's already is).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from consumer.klaviyo.outcomes import (
    AUTH_ERROR_CODES,
    AUTH_STATUSES,
    RETRYABLE_STATUSES,
    Accepted,
    Fatal,
    KlaviyoError,
    Outcome,
    Permanent,
    Retryable,
)

PARTIAL_FAILURE_HEADER = "X-Klaviyo-Partial-Failure"

# Names a partial-failure header may report, as metric labels: profile and event attributes the
# relay sends. Anything else is "other", so a label can never carry a value (an email, a name).
PARTIAL_FAILURE_FIELDS = frozenset(
    {
        "address1",
        "address2",
        "anonymous_id",
        "city",
        "country",
        "email",
        "external_id",
        "first_name",
        "image",
        "ip",
        "last_name",
        "latitude",
        "locale",
        "location",
        "longitude",
        "metric",
        "organization",
        "phone_number",
        "properties",
        "region",
        "time",
        "timezone",
        "title",
        "unique_id",
        "value",
        "value_currency",
        "zip",
    }
)
_FIELD_SEPARATORS = re.compile(r"[\s,;]+")
_PATH_SEPARATORS = re.compile(r"[/.]")


def classify_response(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    """What an HTTP answer means for the request that got it."""
    if 200 <= status < 300:
        dropped = partial_failure_fields(header(headers, PARTIAL_FAILURE_HEADER))
        return Accepted(status=status, body=parse_json(body), dropped_fields=dropped)
    if status in AUTH_STATUSES:
        errors = parse_errors(status, body) if _is_json(headers) else ()
        if any(error.code in AUTH_ERROR_CODES for error in errors):
            return Fatal(status=status, errors=errors)
        kind = edge_kind(headers)
        return Retryable(
            status=status,
            reason=f"edge_{kind}",
            retry_after=parse_retry_after(header(headers, "Retry-After")),
            edge_kind=kind,
        )
    # Listed retryable statuses first; then any other 5xx is the server's trouble, not ours.
    if status in RETRYABLE_STATUSES or status >= 500:
        return Retryable(
            status=status,
            reason=f"http_{status}",
            retry_after=parse_retry_after(header(headers, "Retry-After")),
        )
    # 400/404/405/409/410/413/415/422 and any other 4xx (or odd 1xx/3xx): resending won't help.
    return Permanent(status=status, errors=parse_errors(status, body))


def edge_kind(headers: Mapping[str, str]) -> str:
    """What answered instead of Klaviyo, as a bounded label: ``challenge`` (Cloudflare's bot
    challenge, ``cf-mitigated: challenge``), ``html`` (some other page) or ``other``."""
    if (header(headers, "cf-mitigated") or "").strip().lower() == "challenge":
        return "challenge"
    if _media_type(headers) == "text/html":
        return "html"
    return "other"


def partial_failure_fields(value: str | None) -> tuple[str, ...]:
    """The fields an ``X-Klaviyo-Partial-Failure`` header names, as bounded labels.

    Documented only by example (``phone_number``), so the value is treated as opaque: split on
    commas/spaces, each part reduced to its last path segment (a JSON pointer or dotted path
    names the same field), kept when it is a known attribute name, otherwise ``other``.
    """
    if value is None:
        return ()
    fields: list[str] = []
    for part in _FIELD_SEPARATORS.split(value.strip()):
        if not part:
            continue
        name = _PATH_SEPARATORS.split(part.strip("/"))[-1].lower()
        field = name if name in PARTIAL_FAILURE_FIELDS else "other"
        if field not in fields:
            fields.append(field)
    return tuple(fields) or ("other",)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """``headers[name]`` looked up case-insensitively."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def _media_type(headers: Mapping[str, str]) -> str:
    return (header(headers, "Content-Type") or "").split(";", 1)[0].strip().lower()


def _is_json(headers: Mapping[str, str]) -> bool:
    media = _media_type(headers)
    return media == "application/json" or media.endswith("+json")


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
