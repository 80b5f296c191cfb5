"""What Klaviyo publishes, as the sandbox serves it: operations, paths, limits, revisions.

Written from Klaviyo's own documents (``../shared/klaviyo/README.md`` and the OpenAPI spec of
revision 2026-07-15 beside it), never from the relay's code: the sandbox is the relay's
opponent in tests, so a wrong limit or path in the client must meet Klaviyo's value here, not
its own mirror. ``tests/unit/sandbox/test_sandbox_facts.py`` checks this table against those
documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt

# The newest revision the sandbox knows; older well-formed revisions are accepted too.
LATEST_REVISION = "2026-07-15"

# A Create Event accepted with the phone number ignored names the dropped field here.
PARTIAL_FAILURE_HEADER = "X-Klaviyo-Partial-Failure"

# Window lengths of every published limit: a 1 s burst window and a 60 s steady one.
BURST_SECONDS = 1.0
STEADY_SECONDS = 60.0


class Operation(StrEnum):
    """A Klaviyo operation the sandbox serves (the spec's ``operationId``)."""

    CREATE_EVENT = "create_event"
    BULK_CREATE_EVENTS = "bulk_create_events"
    UPDATE_PROFILE = "update_profile"
    CREATE_OR_UPDATE_PROFILE = "create_or_update_profile"
    GET_PROFILES = "get_profiles"


class Window(BaseModel):
    """One fixed window: at most ``requests`` per ``seconds``."""

    model_config = ConfigDict(frozen=True)

    requests: PositiveInt
    seconds: PositiveFloat


class Limit(BaseModel):
    """An operation's two fixed windows, both of which must have room to admit a request."""

    model_config = ConfigDict(frozen=True)

    burst: Window
    steady: Window


def _published(burst: int, steady: int) -> Limit:
    return Limit(
        burst=Window(requests=burst, seconds=BURST_SECONDS),
        steady=Window(requests=steady, seconds=STEADY_SECONDS),
    )


@dataclass(frozen=True, slots=True)
class OperationFacts:
    method: str
    path: str  # aiohttp's route syntax: ``{id}`` is a path parameter
    success: frozenset[int]
    limit: Limit


OPERATIONS: dict[Operation, OperationFacts] = {
    Operation.CREATE_EVENT: OperationFacts(
        "POST", "/api/events", frozenset({202}), _published(350, 3500)
    ),
    Operation.BULK_CREATE_EVENTS: OperationFacts(
        "POST", "/api/event-bulk-create-jobs", frozenset({202}), _published(10, 150)
    ),
    Operation.UPDATE_PROFILE: OperationFacts(
        "PATCH", "/api/profiles/{id}", frozenset({200}), _published(75, 750)
    ),
    Operation.CREATE_OR_UPDATE_PROFILE: OperationFacts(
        "POST", "/api/profile-import", frozenset({200, 201}), _published(75, 750)
    ),
    Operation.GET_PROFILES: OperationFacts(
        "GET", "/api/profiles", frozenset({200}), _published(75, 750)
    ),
}

# The limits ``--rate-limits default`` enforces, by operation name.
PUBLISHED_LIMITS: dict[str, Limit] = {str(op): facts.limit for op, facts in OPERATIONS.items()}
