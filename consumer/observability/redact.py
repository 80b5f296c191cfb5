"""Masking of secrets and personal data in anything that is about to be logged.

Two nets, because either alone leaks: a field *named* like a secret or a contact detail is
masked whatever its value looks like, and every string anywhere (messages, exception text,
nested values) is scanned for emails, phone numbers, Klaviyo keys, bearer tokens and URLs
carrying tokens (password-reset links). Integers are left alone: offsets and partitions are
numbers, and a phone number is never logged as one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretBytes, SecretStr

MASK = "[redacted]"

# Field names whose value is masked outright: any snake-case word of these.
_SENSITIVE_KEY = re.compile(
    r"(?:^|_)(?:e?mail|email_address|phone|phone_number|password|passwd|secret|api_key|apikey"
    r"|authorization|auth|token|cookie|reset_link|reset_url|credentials?)(?:$|_)",
    re.IGNORECASE,
)

# Local part: every character RFC 5322 allows unquoted, not only the usual ones.
_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
# Klaviyo private keys (pk_...), OAuth bearer tokens and whole Authorization header values.
_KLAVIYO_KEY = re.compile(r"\bpk_[A-Za-z0-9_]{4,}")
_AUTH_HEADER = re.compile(r"\b(Bearer|Klaviyo-API-Key|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s\"'<>]+", re.IGNORECASE)
# International numbers (E.164 or formatted: "+1 (555) 010-2030", "+44 20 7946 0958").
_PHONE_INTERNATIONAL = re.compile(r"(?<![\w+])\+[1-9](?:[\s.()-]{0,2}\d){6,14}(?!\d)")
# National formats: digit groups with single separators ("(555) 010-2030", "555.010.2030",
# "07911 123456") or a bare run; kept only when 9-15 digits long (see _mask_national).
_PHONE_NATIONAL = re.compile(
    r"(?<![\w.:/+-])(?:\(\d{2,5}\)\s?\d{2,8}|\d{9,15}|\d{2,8})(?:[\s.-]\d{2,8}){0,4}(?![\w.:/-])"
)
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
# A path is kept only under the roots of the APIs the relay itself calls (Klaviyo's ``/api`` and
# ``/oauth``, a schema registry's ``/schemas`` and ``/subjects``, the operations port) and only
# when every segment is a plain lowercase word ("api", "event-bulk-create-jobs", "v2"). Judging
# by shape alone leaks: a shop's reset link ``/r/a00000000000000-a000`` looks like a word.
_KEPT_PATH_ROOTS = frozenset(
    {"api", "oauth", "schemas", "subjects", "metrics", "healthz", "readyz", "_sandbox"}
)
_PLAIN_SEGMENT = re.compile(r"[a-z][a-z0-9]{0,14}(?:[-_.][a-z][a-z0-9]{0,14})*")
_SENSITIVE_PATH = re.compile(
    r"reset|passw|token|auth|login|magic|verify|confirm|unsubscribe|invite", re.IGNORECASE
)


def _mask_url(match: re.Match[str]) -> str:
    """Keep ``scheme://host/path`` when the path is plain; drop user info, query and fragment."""
    url = match.group(0)
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return MASK
    path = parts.path
    segments = [seg for seg in path.split("/") if seg]
    if segments and (
        segments[0] not in _KEPT_PATH_ROOTS
        or _SENSITIVE_PATH.search(path)
        or not all(_PLAIN_SEGMENT.fullmatch(seg) for seg in segments)
    ):
        path = "/" + MASK
    suffix = "?" + MASK if parts.query or parts.fragment else ""
    return f"{parts.scheme}://{host}{port}{path}{suffix}"


def _mask_national(match: re.Match[str]) -> str:
    """A phone number has 9-15 digits; shorter groups are sizes, dates, counts; IPs stay."""
    found = match.group(0)
    digits = sum(ch.isdigit() for ch in found)
    if not 9 <= digits <= 15 or _IPV4.fullmatch(found):
        return found
    return "[phone]"


def redact_text(text: str) -> str:
    """Mask every email, phone number, key, bearer token and tokenised URL in ``text``."""
    # URLs first: a reset link's query may itself hold an email or a long digit run.
    text = _URL.sub(_mask_url, text)
    text = _EMAIL.sub("[email]", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _KLAVIYO_KEY.sub("pk_" + MASK, text)
    text = _PHONE_INTERNATIONAL.sub("[phone]", text)
    return _PHONE_NATIONAL.sub(_mask_national, text)


def redact_value(value: Any, key: str | None = None) -> Any:
    """Redact one logged value (recursing through mappings and sequences)."""
    if isinstance(value, SecretStr | SecretBytes):
        return MASK
    if key is not None and value is not None and _SENSITIVE_KEY.search(key):
        return MASK if not isinstance(value, bool) else value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {k: redact_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Anything else (exceptions, paths, dataclasses) is logged through its text.
    return redact_text(str(value))


def redact_event_dict(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> dict[str, Any]:
    """structlog processor: redact every field of the log entry."""
    return {key: redact_value(value, key) for key, value in event_dict.items()}
