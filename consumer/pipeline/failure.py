"""Why a record goes to the dead-letter topic: the :class:`Failure` value the stages and the
delivery build, and the masking of what it says (an unexpected exception's text may quote
personal data; a dead-letter header is read by people)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from consumer.errors import Reason, Rejected
from consumer.klaviyo.outcomes import KlaviyoError, Permanent
from consumer.observability.redact import redact_text

STAGE_DECODE = "decode"
STAGE_HANDLE = "handle"
STAGE_SEND = "send"

_MAX_MESSAGE = 500
# An unexpected exception's text may quote data: words with a capital or a digit (names,
# streets, numbers) and anything in quotes are masked; plain lowercase words stay.
_QUOTED = re.compile("'[^']*'|\"[^\"]*\"")
_DATA_WORD = re.compile(r"""[^\s'"]*[A-Z0-9][^\s'"]*""")


def class_name(obj: object) -> str:
    """``module.Class`` of an exception or outcome, as Connect's ``class.name`` header wants."""
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _one_line(text: str) -> str:
    flat = " ".join(redact_text(text).split())
    return flat if len(flat) <= _MAX_MESSAGE else flat[: _MAX_MESSAGE - 1] + "…"


def _mask_word(match: re.Match[str]) -> str:
    word = match.group(0)
    return f"{word[:1]}***" if word[:1].isalpha() else "***"


def masked_exception_text(exc: BaseException) -> str:
    """What an unexpected exception says, safe for a log line or a header: personal data in
    any form is masked (``KeyError: 'John Smith'`` → ``KeyError: '***'``)."""
    text = _QUOTED.sub(lambda m: f"{m.group(0)[0]}***{m.group(0)[0]}", str(exc))
    text = redact_text(text)
    return f"{type(exc).__name__}: {_DATA_WORD.sub(_mask_word, text)}"


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a record goes to the dead-letter topic."""

    stage: str  # decode | handle | send
    reason: str  # a consumer.errors.Reason
    class_name: str
    message: str
    first_failure: datetime
    attempts: int = 1
    klaviyo_status: int | None = None
    klaviyo_code: str | None = None
    klaviyo_pointer: str | None = None
    endpoint: str | None = None

    @classmethod
    def from_exception(cls, stage: str, reason: str, exc: BaseException, now: datetime) -> Failure:
        """A decode error or a handler's rejection (their messages name fields, not values)."""
        field = exc.field if isinstance(exc, Rejected) else None
        text = f"{reason}: {exc}"
        if field and field not in text:
            text += f" (field {field})"
        return cls(stage, reason, class_name(exc), _one_line(text), now)

    @classmethod
    def unexpected(cls, stage: str, reason: str, exc: BaseException, now: datetime) -> Failure:
        """A bug's exception: its text is masked (:func:`masked_exception_text`), never raw."""
        text = f"{reason}: {masked_exception_text(exc)}"
        return cls(stage, reason, class_name(exc), _one_line(text), now)

    @classmethod
    def from_klaviyo(
        cls,
        outcome: Permanent,
        endpoint: str,
        now: datetime,
        error: KlaviyoError | None = None,
    ) -> Failure:
        """Klaviyo refused the request (4xx); ``error`` picks one item's error of a bulk job."""
        error = error if error is not None else outcome.first
        status = error.status if error is not None and error.status else outcome.status
        parts = [f"Klaviyo {status}"]
        if error is not None:
            # Code and title are Klaviyo's fixed vocabulary; ``detail`` may quote the payload.
            parts += [p for p in (error.code, error.title) if p]
            if error.pointer:
                parts.append(f"at {error.pointer}")
            elif error.parameter:
                parts.append(f"parameter {error.parameter}")
        return cls(
            stage=STAGE_SEND,
            reason=Reason.KLAVIYO_REJECTED,
            class_name=class_name(outcome),
            message=_one_line(" ".join(parts)),
            first_failure=now,
            attempts=outcome.attempts,
            klaviyo_status=status,
            klaviyo_code=error.code if error is not None else None,
            klaviyo_pointer=error.pointer if error is not None else None,
            endpoint=endpoint,
        )


def account_halted(now: datetime) -> Failure:
    """The event's account halted (its key or OAuth grant refused) while others relay on."""
    reason = Reason.ACCOUNT_HALTED
    message = f"{reason}: its Klaviyo account's key or OAuth grant was refused; replay once fixed"
    return Failure(STAGE_SEND, reason, "consumer.pipeline.sending.AccountHalted", message, now)


def unknown_account(now: datetime, named: str | None) -> Failure:
    """The event names no account the relay serves (``named``: the header's value, if any)."""
    reason = Reason.UNKNOWN_ACCOUNT
    # The name is the operator's own configuration vocabulary, not personal data; kept short.
    told = f"account header {named[:40]!r} is not served" if named else "no account for it"
    message = _one_line(f"{reason}: {told}")
    return Failure(STAGE_SEND, reason, "consumer.accounts.UnknownAccount", message, now)
