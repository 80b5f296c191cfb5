"""The request value: what a handler returns, what the client sends and what ``preview`` prints.

One shape, three uses. A handler's answer to a domain event is a :class:`Plan`: an ordered
tuple of :class:`KlaviyoRequest` steps (sent in that order) plus warnings to count. The one
event that needs a lookup first (an email change without a known profile id) stays data:

1. ``GET /api/profiles?filter=...`` with ``binds="profile_id"``: the id of the profile found
   is bound under that name;
2. ``PATCH /api/profiles/{profile_id}`` whose path uses the binding, with a ``fallback``
   request that is sent instead when the lookup found no profile;
3. the Create Event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

from consumer.priorities import DEFAULT_RANK

JSONObject = dict[str, Any]


class Endpoint(StrEnum):
    """A Klaviyo operation; also the name of its rate-limit bucket."""

    CREATE_EVENT = "create_event"
    BULK_CREATE_EVENTS = "bulk_create_events"
    UPDATE_PROFILE = "update_profile"
    PROFILE_IMPORT = "create_or_update_profile"
    GET_PROFILES = "get_profiles"


@dataclass(frozen=True, slots=True)
class KlaviyoRequest:
    endpoint: Endpoint
    method: str
    path: str
    body: JSONObject | None = None
    query: tuple[tuple[str, str], ...] = ()
    # A lookup binds the id it finds under this name for later steps' paths.
    binds: str | None = None
    # Sent instead of this request when a binding its path needs was not found.
    fallback: KlaviyoRequest | None = None
    # Its event's priority rank (consumer.priorities): the order in which it waits for the
    # quota. How urgent, not what is sent: left out of equality and of ``preview``.
    priority: int = field(default=DEFAULT_RANK, compare=False)
    # Within its priority class, the quota goes to the request of the event that started first
    # (0: not an event's, arrival order alone): an event whose first request was accepted gets
    # the rest before later events start theirs, so few events are ever cut part-way (a crash
    # resends such an event whole) and each finishes sooner. Left out of equality too.
    order: int = field(default=0, compare=False)

    @property
    def target(self) -> str:
        """Path and query string, as sent on the wire."""
        return f"{self.path}?{urlencode(self.query)}" if self.query else self.path

    def needs(self) -> tuple[str, ...]:
        """Names of bindings this request's path uses (``{profile_id}`` → ``profile_id``)."""
        return tuple(
            part[1:-1]
            for part in self.path.split("/")
            if part.startswith("{") and part.endswith("}")
        )

    def bind(self, bindings: Mapping[str, str]) -> KlaviyoRequest:
        """This request with its path placeholders filled from ``bindings``."""
        path = self.path
        for name in self.needs():
            path = path.replace("{" + name + "}", bindings[name])
        body = self.body
        if body is not None and "data" in body and isinstance(body["data"], dict):
            data = body["data"]
            if isinstance(data.get("id"), str) and data["id"].startswith("{"):
                body = {**body, "data": {**data, "id": bindings[data["id"][1:-1]]}}
        return KlaviyoRequest(
            self.endpoint,
            self.method,
            path,
            body,
            self.query,
            self.binds,
            priority=self.priority,
            order=self.order,
        )

    def at_priority(self, priority: int, order: int = 0) -> KlaviyoRequest:
        """This request (and its fallback) waiting for the quota at ``priority``, ``order``."""
        if priority == self.priority and order == self.order:
            return self
        fallback = None if self.fallback is None else self.fallback.at_priority(priority, order)
        # Every field named, not dataclasses.replace: this runs for every request of every
        # event, and replace() looks the fields up each time (3-4x the cost of the call).
        return KlaviyoRequest(
            self.endpoint,
            self.method,
            self.path,
            self.body,
            self.query,
            self.binds,
            fallback,
            priority,
            order,
        )

    def to_preview(self) -> JSONObject:
        """The JSON form ``preview`` prints: method, path (with query) and body."""
        out: JSONObject = {"method": self.method, "path": self.target}
        if self.body is not None:
            out["body"] = self.body
        if self.fallback is not None:
            out["fallback"] = self.fallback.to_preview()
        return out


@dataclass(frozen=True, slots=True)
class PlanWarning:
    """Something dropped on the way, counted by the pipeline (never carries personal data)."""

    code: str  # e.g. "phone_unparseable"
    field: str  # e.g. "customer.phone_number"


@dataclass(frozen=True, slots=True)
class Plan:
    """What one domain event becomes: requests in send order, and what was dropped."""

    requests: tuple[KlaviyoRequest, ...]
    warnings: tuple[PlanWarning, ...] = field(default=())

    def at_priority(self, priority: int, order: int = 0) -> Plan:
        """This plan with every request at ``priority`` (its event's topic's rank) and
        ``order`` (when its event started, see :attr:`KlaviyoRequest.order`)."""
        if all(r.priority == priority and r.order == order for r in self.requests):
            return self
        return Plan(tuple(r.at_priority(priority, order) for r in self.requests), self.warnings)

    def without_events(self, count: int) -> Plan:
        """This plan without its first ``count`` Create Event steps (accepted already, by a
        relay that crashed before the event finished); its other steps stay, in order."""
        if count <= 0:
            return self
        kept = []
        for request in self.requests:
            if count and request.endpoint is Endpoint.CREATE_EVENT:
                count -= 1
            else:
                kept.append(request)
        return Plan(tuple(kept), self.warnings)
