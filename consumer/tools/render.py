"""One dead letter as a line of text (``dlq inspect``) or a JSON object (``--json``).

The original event is shown only through :func:`consumer.tools.masking.mask_event`, and the
error message through the log redaction: what the terminal shows may end up in a ticket.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from consumer.headers import (
    H_REPLAY_OF,
)
from consumer.observability.redact import redact_text
from consumer.rfc3339 import format_rfc3339
from consumer.tools.deadletters import (
    ParkedRecord,
    format_duration,
)


@dataclass(frozen=True, slots=True)
class Original:
    """What could be made of a dead letter's value."""

    record: str | None = None  # full record name when it decoded
    event: dict[str, Any] | None = None  # plain JSON, personal data masked
    undecodable: str | None = None  # why not, when it did not

    def summary(self) -> str:
        if self.event is None or self.record is None:
            return f"undecodable ({self.undecodable or 'no value'})"
        parts = [self.record.rsplit(".", 1)[-1], f"event_id={self.event.get('event_id', '?')}"]
        who = _contact(self.event)
        if who:
            parts.append(who)
        order = self.event.get("order")
        if isinstance(order, Mapping) and order.get("order_id"):
            parts.append(f"order={order['order_id']}")
        return " ".join(parts)


def _contact(event: Mapping[str, Any]) -> str | None:
    """The (masked) email of the person the event is about."""
    for holder in ("customer", "lead"):
        person = event.get(holder)
        if isinstance(person, Mapping) and person.get("email"):
            return f"email={person['email']}"
    if event.get("old_email"):
        return f"email={event['old_email']}"
    return None


def klaviyo_text(letter: ParkedRecord) -> str:
    status, code = letter.klaviyo_status, letter.klaviyo_code
    if status is None:
        return "-"
    return f"{status}/{code}" if code else str(status)


def inspect_line(letter: ParkedRecord, original: Original, now: datetime, *, replayed: bool) -> str:
    """``source stage reason klaviyo age | event | message [notes]`` on one line."""
    key = letter.key.decode("utf-8", "replace") if letter.key is not None else "-"
    notes = []
    if replayed:
        notes.append("replayed")
    if letter.header(H_REPLAY_OF):
        notes.append("failed again after a replay")
    if letter.incomplete:
        notes.append(f"{letter.incomplete}, sha256 {letter.value_sha256}; not replayable")
    reason = letter.reason
    if letter.original_reason:
        reason += f" (was {letter.original_reason})"
    created = letter.original_timestamp
    text = (
        f"{letter.source}  stage={letter.stage} reason={reason}"
        f" klaviyo={klaviyo_text(letter)} age={format_duration(letter.age(now))}"
        f" created={_iso(created)}  key={redact_text(key)} {original.summary()}"
    )
    if letter.message:
        text += f"  | {redact_text(letter.message)}"
    if notes:
        text += f"  [{', '.join(notes)}]"
    return text


def inspect_json(
    letter: ParkedRecord, original: Original, now: datetime, *, replayed: bool
) -> dict[str, Any]:
    age = letter.age(now)
    return {
        "dlq_partition": letter.partition,
        "dlq_offset": letter.offset,
        "source": letter.source,
        "stage": letter.stage,
        "reason": letter.reason,
        "message": redact_text(letter.message),
        "klaviyo_status": letter.klaviyo_status,
        "klaviyo_code": letter.klaviyo_code,
        "first_failure": _iso(letter.first_failure),
        "original_timestamp": _iso(letter.original_timestamp),
        "parked_at": _iso(letter.timestamp),
        "original_reason": letter.original_reason,
        "original_size": letter.original_size,
        "value_sha256": letter.value_sha256,
        "value_truncated": letter.value_truncated,
        "omitted": letter.omitted,
        "age_seconds": round(age.total_seconds(), 3) if age is not None else None,
        "replayed": replayed,
        "replay_of": letter.header(H_REPLAY_OF),
        "record": original.record,
        "event": original.event,
        "undecodable": original.undecodable,
    }


def _iso(moment: datetime | None) -> str | None:
    return format_rfc3339(moment) if moment is not None else None
