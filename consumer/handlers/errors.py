"""Why a domain event is not sent: typed, with a bounded reason code the pipeline counts and
dead-letters by. Messages name fields, never their values (they may be personal data)."""

from __future__ import annotations


class EventRejected(Exception):
    """The event cannot become Klaviyo requests; resending it will not help."""

    reason: str = "invalid_event"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class MalformedEvent(EventRejected):
    """The datum lacks a field its record requires, or holds a value JSON cannot carry."""

    reason = "invalid_event"


class LimitViolation(EventRejected):
    """A request would break one of Klaviyo's documented limits; ``field`` is its JSON pointer."""

    reason = "limit_exceeded"


class ExpiredEvent(EventRejected):
    """The event is no longer meaningful (a password reset whose link has expired)."""

    reason = "expired"


class NoIdentifier(EventRejected):
    """A profile would carry no identifier at all (no id, email, phone number or external id)."""

    reason = "no_identifier"


class UnknownRecord(EventRejected):
    """No handler for this topic, or for this record type on this topic."""

    reason = "unknown_record"
