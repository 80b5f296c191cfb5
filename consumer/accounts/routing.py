"""Which account an event goes to: a pure function of its header, its topic and the set-up.

The header (an account's exact name) wins, then the topic → account map, then the default
account. No account at all, or a header naming one the relay does not serve, gives None: the
event is dead-lettered ``unknown_account`` and nothing is sent (a typo must not send one
merchant's email with another's key).
"""

from __future__ import annotations

from consumer.accounts.config import Accounts
from consumer.headers import Headers


def route(accounts: Accounts, topic: str, headers: Headers) -> str | None:
    """The account of an event on ``topic`` with ``headers``, or None when it has none."""
    if not accounts.named:
        return accounts.default  # one account (no KLAVIYO_ACCOUNTS): every event is its own
    named = header_value(headers, accounts.header)
    if named is not None:
        return named if named in accounts.settings else None
    return accounts.topics.get(topic, accounts.default)


def header_value(headers: Headers, name: str) -> str | None:
    """The last value of header ``name`` (Kafka allows repeats; the last one set wins), decoded;
    None when absent. An undecodable value names no account."""
    found: bytes | None = None
    for key, value in headers:
        if key == name:
            found = value
    if found is None:
        return None
    try:
        return found.decode("utf-8").strip()
    except UnicodeDecodeError:
        return ""
