"""What became of a request, as a typed result the pipeline can act on.

- :class:`Accepted`: 2xx. Klaviyo has it.
- :class:`Retryable`: 429, 5xx, timeouts, connection errors. Try again later; never dead-letter.
- :class:`Permanent`: 4xx that resending will not fix. Dead-letter this event only.
- :class:`Fatal`: 401/403. The key is wrong or lacks a scope; every event would fail alike,
  so the relay stops dispatching.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
FATAL_STATUSES = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class KlaviyoError:
    """One entry of a JSON:API ``errors`` array."""

    status: int
    code: str | None = None
    title: str | None = None
    detail: str | None = None
    pointer: str | None = None
    parameter: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Accepted:
    status: int
    body: Any = None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class Retryable:
    status: int | None  # None for timeouts and connection errors
    reason: str
    retry_after: float | None = None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class Permanent:
    status: int
    errors: tuple[KlaviyoError, ...] = ()
    attempts: int = 1

    @property
    def first(self) -> KlaviyoError | None:
        return self.errors[0] if self.errors else None


@dataclass(frozen=True, slots=True)
class Fatal:
    status: int
    errors: tuple[KlaviyoError, ...] = ()
    attempts: int = 1


Outcome = Accepted | Retryable | Permanent | Fatal
