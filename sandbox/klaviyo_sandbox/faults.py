"""Fault injection: the outages, slowness and hangs a client must survive.

Set from :class:`~klaviyo_sandbox.app.SandboxOptions` at start and changed live with
``POST /_sandbox/faults`` (a partial update, validated as a whole before it applies). Faults
hit ``/api/*`` only, before anything else happens to the request, so a faulted request is
neither authenticated, counted against the quota nor recorded: it is an outage in front of
Klaviyo.

``challenge_rate`` is Cloudflare in front of Klaviyo answering a bot challenge (403, HTML,
``cf-mitigated: challenge``). ``partial_failure_rate`` is Klaviyo accepting a Create Event while
dropping a field, said only in the ``X-Klaviyo-Partial-Failure`` header: unlike the others it
applies to a request that otherwise succeeds (and is recorded). ``fail_matching`` answers a
chosen status to every request whose body contains a given text (an event's ``unique_id``, a
profile's email): one event held back while the others pass. API only (``{"text": status}``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

# Statuses that make sense to inject: what Klaviyo (or its edge) answers when it is unwell.
INJECTABLE = frozenset({400, 401, 403, 404, 408, 409, 425, 429, 500, 502, 503, 504})
_KEYS = frozenset(
    {
        "error_rates",
        "latency_ms",
        "timeout_rate",
        "fail_auth",
        "challenge_rate",
        "partial_failure_rate",
        "fail_matching",
    }
)
_RATES = ("timeout_rate", "challenge_rate", "partial_failure_rate")


class FaultError(ValueError):
    """A fault setting that cannot be applied; the message says which and why."""


def _probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise FaultError(f"{name} must be a probability between 0 and 1")
    return float(value)


def parse_error_rates(raw: Any) -> dict[int, float]:
    """``{"503": 0.2}`` (or int keys) → ``{503: 0.2}``; the rates may add up to 1 at most."""
    if not isinstance(raw, dict):
        raise FaultError("error_rates must be an object of status → probability")
    rates: dict[int, float] = {}
    for key, value in raw.items():
        try:
            status = int(key)
        except (TypeError, ValueError):
            raise FaultError(f"error_rates: {key!r} is not an HTTP status") from None
        if status not in INJECTABLE:
            raise FaultError(f"error_rates: status {status} is not one of {sorted(INJECTABLE)}")
        rate = _probability(f"error_rates[{status}]", value)
        if rate > 0:
            rates[status] = rate
    if sum(rates.values()) > 1 + 1e-9:
        raise FaultError("error_rates add up to more than 1")
    return rates


def parse_fail_matching(raw: Any) -> dict[bytes, int]:
    """``{"<text>": 503}`` → ``{b"<text>": 503}``."""
    if not isinstance(raw, dict):
        raise FaultError("fail_matching must be an object of text → HTTP status")
    out: dict[bytes, int] = {}
    for text, status in raw.items():
        if not isinstance(text, str) or not text:
            raise FaultError("fail_matching: texts must be non-empty strings")
        if isinstance(status, bool) or status not in INJECTABLE:
            raise FaultError(f"fail_matching: status {status!r} is not one of {sorted(INJECTABLE)}")
        out[text.encode()] = status
    return out


def parse_latency(raw: Any) -> tuple[float, float]:
    """``[min, max]`` milliseconds (a single number means a fixed latency)."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        raw = [raw, raw]
    if (
        not isinstance(raw, list | tuple)
        or len(raw) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw)
        or not 0 <= raw[0] <= raw[1]
    ):
        raise FaultError("latency_ms must be [min, max] with 0 <= min <= max")
    return float(raw[0]), float(raw[1])


@dataclass
class Faults:
    error_rates: dict[int, float] = field(default_factory=dict)
    latency_ms: tuple[float, float] = (0.0, 0.0)
    timeout_rate: float = 0.0
    fail_auth: bool = False
    challenge_rate: float = 0.0
    partial_failure_rate: float = 0.0
    fail_matching: dict[bytes, int] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Whether any fault is set in front of the API: the hot path skips all of this when
        not. (``partial_failure_rate`` acts after the API; it is checked where it applies.)"""
        return bool(
            self.error_rates
            or self.latency_ms[1] > 0
            or self.timeout_rate
            or self.fail_auth
            or self.challenge_rate
            or self.fail_matching
        )

    def update(self, patch: Any) -> None:
        """Apply a partial update from ``POST /_sandbox/faults``, all or nothing."""
        if not isinstance(patch, dict):
            raise FaultError("the body must be a JSON object")
        unknown = set(patch) - _KEYS
        if unknown:
            raise FaultError(f"unknown fault(s): {sorted(unknown)}")
        rates = parse_error_rates(patch["error_rates"]) if "error_rates" in patch else None
        latency = parse_latency(patch["latency_ms"]) if "latency_ms" in patch else None
        matching = parse_fail_matching(patch["fail_matching"]) if "fail_matching" in patch else None
        probabilities = {name: _probability(name, patch[name]) for name in _RATES if name in patch}
        fail_auth = patch.get("fail_auth", self.fail_auth)
        if not isinstance(fail_auth, bool):
            raise FaultError("fail_auth must be true or false")
        if rates is not None:
            self.error_rates = rates
        if latency is not None:
            self.latency_ms = latency
        if matching is not None:
            self.fail_matching = matching
        for name, value in probabilities.items():
            setattr(self, name, value)
        self.fail_auth = fail_auth

    def draw_error(self, rng: random.Random) -> int | None:
        """The status to inject for this request, if any (one draw over all rates)."""
        if not self.error_rates:
            return None
        draw = rng.random()
        for status, rate in self.error_rates.items():
            if draw < rate:
                return status
            draw -= rate
        return None

    def matching(self, body: bytes) -> int | None:
        """The status ``fail_matching`` answers to this request body, if any."""
        for text, status in self.fail_matching.items():
            if text in body:
                return status
        return None

    def draw_latency(self, rng: random.Random) -> float:
        """Seconds to wait before answering."""
        low, high = self.latency_ms
        return (low if low == high else rng.uniform(low, high)) / 1000.0

    def to_json(self) -> dict[str, Any]:
        return {
            "error_rates": {str(k): v for k, v in self.error_rates.items()},
            "latency_ms": list(self.latency_ms),
            "timeout_rate": self.timeout_rate,
            "fail_auth": self.fail_auth,
            "challenge_rate": self.challenge_rate,
            "partial_failure_rate": self.partial_failure_rate,
            "fail_matching": {k.decode(): v for k, v in self.fail_matching.items()},
        }
