"""Why a record is not delivered: the reason codes and the exceptions that carry them.

A :class:`Reason` is the bounded code the relay counts (``reason`` metric labels), writes in
the ``klaviyo-relay.reason`` header of a dead letter and lets ``dlq inspect/replay --reason``
select by. Its values are the strings dead letters already on the topic carry: never rename one.

Every rejection of a record is a :class:`Rejected`, with a ``reason`` and, when one field is to
blame, ``field`` (its name or JSON pointer). Messages name fields, never their values (they may
be personal data)::

    Rejected
    ├── DecodeError ............ the value is not an event the relay can read (stage decode)
    │   ├── BadMagic
    │   ├── UnknownSchema
    │   │   ├── SchemaNotFound
    │   │   └── IncompatibleSchema
    │   ├── TruncatedBody
    │   ├── InvalidBody
    │   ├── EmptyRecord
    │   └── RegistryUnavailable  transient: the relay retries it, never parks it
    └── EventRejected .......... the event cannot become Klaviyo requests (stage handle)
        ├── MalformedEvent
        ├── LimitViolation
        ├── ExpiredEvent
        ├── NoIdentifier
        └── UnknownRecord

Klaviyo's own refusals are not exceptions: they are ``Permanent`` outcomes
(:mod:`consumer.klaviyo.outcomes`), parked with :attr:`Reason.KLAVIYO_REJECTED`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class Reason(StrEnum):
    """Why a record was parked on the dead-letter topic (or, for one, why it waits)."""

    # decode: the bytes
    BAD_MAGIC = "bad_magic"
    TRUNCATED = "truncated"
    INVALID_BODY = "invalid_body"
    UNKNOWN_SCHEMA = "unknown_schema"
    REGISTRY_UNAVAILABLE = "registry_unavailable"
    # handle: the event
    UNKNOWN_RECORD = "unknown_record"
    INVALID_EVENT = "invalid_event"
    NO_IDENTIFIER = "no_identifier"
    LIMIT_EXCEEDED = "limit_exceeded"
    EXPIRED = "expired"
    # send: Klaviyo
    KLAVIYO_REJECTED = "klaviyo_rejected"
    # the dead-letter writer: the record did not fit the topic and was parked as a marker
    TOO_LARGE = "too_large"
    # routing to an account (consumer.accounts): named none the relay serves, or its key was
    # refused while other accounts keep relaying (replay routes it back the same way)
    UNKNOWN_ACCOUNT = "unknown_account"
    ACCOUNT_HALTED = "account_halted"


# The record's bytes or its deadline: the same record fails the same way however often it is
# sent, so ``dlq replay`` skips these unless asked. The other reasons can succeed after a fix
# elsewhere (a schema deployed, TOPIC_HANDLERS, the registry back, a relay upgrade, Klaviyo's
# account settings).
UNFIXABLE_BY_REPLAY = frozenset(
    {Reason.BAD_MAGIC, Reason.TRUNCATED, Reason.INVALID_BODY, Reason.EXPIRED}
)


class Rejected(Exception):
    """A record the relay will not deliver as it is; sending it again will not help, except
    for :class:`RegistryUnavailable`."""

    # A Reason. Typed str only while consumer/pipeline/relay.py still declares its own
    # EmptyRecord with a literal (being rewritten on another branch): tighten to Reason then.
    reason: ClassVar[str]

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# --- decode: the Kafka message value (consumer.codec) -----------------------------------------


class DecodeError(Rejected):
    """A message value that cannot be decoded."""

    reason: ClassVar[str] = Reason.INVALID_BODY


class BadMagic(DecodeError):
    """Neither framing: not a single-object nor (with a registry) a Confluent value."""

    reason = Reason.BAD_MAGIC


class UnknownSchema(DecodeError):
    reason = Reason.UNKNOWN_SCHEMA


class SchemaNotFound(UnknownSchema):
    """The registry answered that it does not know the id (404, error code 40403)."""


class IncompatibleSchema(UnknownSchema):
    """The writer schema is known but cannot be read as the current schema of its record."""


class TruncatedBody(DecodeError):
    reason = Reason.TRUNCATED


class InvalidBody(DecodeError):
    reason = Reason.INVALID_BODY


class EmptyRecord(DecodeError):
    """A record with no value (a tombstone): there is no event to read."""

    reason = Reason.INVALID_BODY


class RegistryUnavailable(DecodeError):
    """Transient: the registry could not answer. The message is not bad; try again later."""

    reason = Reason.REGISTRY_UNAVAILABLE


# --- handle: the decoded event (consumer.handlers) --------------------------------------------


class EventRejected(Rejected):
    """The event cannot become Klaviyo requests; resending it will not help."""

    reason = Reason.INVALID_EVENT


class MalformedEvent(EventRejected):
    """The datum lacks a field its record requires, or holds a value JSON cannot carry."""

    reason = Reason.INVALID_EVENT


class LimitViolation(EventRejected):
    """A request would break one of Klaviyo's documented limits; ``field`` is its JSON pointer."""

    reason = Reason.LIMIT_EXCEEDED


class ExpiredEvent(EventRejected):
    """The event is no longer meaningful (a password reset whose link has expired)."""

    reason = Reason.EXPIRED


class NoIdentifier(EventRejected):
    """A profile would carry no identifier at all (no id, email, phone number or external id)."""

    reason = Reason.NO_IDENTIFIER


class UnknownRecord(EventRejected):
    """No handler for this topic, or for this record type on this topic."""

    reason = Reason.UNKNOWN_RECORD
