"""Personal data shown to an operator, masked but still recognisable.

Logs drop personal data outright (``consumer.observability.redact``); an operator looking at a
dead-lettered event needs to tell one customer from another without reading their details, so
here values keep a hint: ``john.smith@shopmail.io`` → ``j***@s***.io``, ``(617) 555-0188`` →
``(***) ***-**88``, a reset link keeps its host only. Fields are recognised by name; every other
string still goes through the log redaction as a safety net.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from consumer.observability.redact import redact_text

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")

# Field names (snake case, as in the contract) and what their values are.
_EMAIL_FIELDS = re.compile(r"(?:^|_)e?mail(?:$|_)")
_PHONE_FIELDS = re.compile(r"(?:^|_)phone(?:$|_)")
_URL_FIELDS = re.compile(r"(?:^|_)(?:url|link)$")
_NAME_FIELDS = frozenset(
    {"first_name", "last_name", "address1", "address2", "city", "zip", "tracking_number"}
)


def mask_email(value: str) -> str:
    """``john.smith@shopmail.io`` → ``j***@s***.io``: first letters and the top-level domain."""
    if not _EMAIL.match(value):
        return _mask_word(value)
    local, domain = value.rsplit("@", 1)
    labels = domain.split(".")
    tld = "." + labels[-1] if len(labels) > 1 else ""
    return f"{local[:1]}***@{labels[0][:1]}***{tld}"


def mask_phone(value: str) -> str:
    """Every digit but the last two becomes ``*``; the layout stays (``+1 555…`` → ``+* ***…``)."""
    digits = sum(ch.isdigit() for ch in value)
    shown = 2 if digits > 4 else 0
    out = []
    for ch in value:
        if ch.isdigit():
            out.append(ch if digits <= shown else "*")
            digits -= 1
        else:
            out.append(ch)
    return "".join(out)


def mask_url(value: str) -> str:
    """Scheme and host only: a path or query may carry a token (reset links, tracking)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return "***"
    if not parts.scheme or not parts.hostname:
        return _mask_word(value)
    rest = "/***" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{parts.hostname}{rest}"


def _mask_word(value: str) -> str:
    return f"{value[:1]}***" if value else value


def mask_field(key: str, value: str) -> str:
    """Mask one string by the name of the field that holds it."""
    name = key.lower()
    if _EMAIL_FIELDS.search(name):
        return mask_email(value)
    if _PHONE_FIELDS.search(name):
        return mask_phone(value)
    if _URL_FIELDS.search(name):
        return mask_url(value)
    if name in _NAME_FIELDS:
        return _mask_word(value)
    return redact_text(value)


def mask_event(value: Any, key: str = "") -> Any:
    """A plain-JSON event (or any part of it) with its personal data masked.

    A ``FieldChange`` (``{"field": ..., "old_value": ..., "new_value": ...}``) is masked by the
    name of the field it changes, so an email change does not leak through ``old_value``.
    """
    if isinstance(value, Mapping):
        changed = value.get("field") if {"old_value", "new_value"} <= value.keys() else None
        out: dict[str, Any] = {}
        for k, v in value.items():
            name = str(changed) if changed and k in ("old_value", "new_value") else str(k)
            out[str(k)] = mask_event(v, name)
        return out
    if isinstance(value, list | tuple):
        return [mask_event(v, key) for v in value]
    if isinstance(value, str):
        return mask_field(key, value)
    return value
