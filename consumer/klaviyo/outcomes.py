"""What became of a request, as a typed result the pipeline can act on.

- :class:`Accepted`: 2xx. Klaviyo has it.
- :class:`Retryable`: 408, 425, 429, 5xx, timeouts, connection errors, and a 401/403 that is not
  Klaviyo's own JSON:API auth error (an edge such as Cloudflare answering a bot challenge).
  Try again later; never dead-letter.
- :class:`Permanent`: 4xx that resending will not fix. Dead-letter this event only.
- :class:`Fatal`: a 401/403 whose JSON:API body carries an auth code. The key is wrong or lacks
  a scope; every event would fail alike, so the relay stops dispatching.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# 408 (a proxy's request timeout) and 425 (too early) come from the path to Klaviyo, not from
# the request: the same bytes succeed later.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})
# Klaviyo's own codes for a wrong key or a missing scope (DRF's, which its API is built on).
AUTH_ERROR_CODES = frozenset({"authentication_failed", "not_authenticated", "permission_denied"})


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
    # Fields Klaviyo accepted the request without (``X-Klaviyo-Partial-Failure``), as bounded
    # names (see ``classify.partial_failure_fields``); never the values.
    dropped_fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Retryable:
    status: int | None  # None for timeouts and connection errors
    reason: str
    retry_after: float | None = None
    attempts: int = 1
    # Set when a 401/403 came from something in front of Klaviyo: challenge, html or other.
    edge_kind: str | None = None


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
