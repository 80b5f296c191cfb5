"""The Klaviyo client against small scripted HTTP servers on 127.0.0.1.

Each server answers a script of (status, headers, body) in order and records what arrived and
when (the loop's clock), so timing claims are measured where they matter: at the server.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from consumer.klaviyo.client import KlaviyoClient, encode_body, profile_id_from_lookup
from consumer.klaviyo.outcomes import Accepted, Fatal, KlaviyoError, Permanent, Retryable
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.observability.metrics import REGISTRY
from consumer.settings import Settings, load_settings

EVENT = KlaviyoRequest(
    Endpoint.CREATE_EVENT,
    "POST",
    "/api/events",
    {
        "data": {
            "type": "event",
            "attributes": {
                "properties": {"order_id": "o-1"},
                "metric": {"data": {"type": "metric", "attributes": {"name": "Order Placed"}}},
                "profile": {"data": {"type": "profile", "attributes": {"email": "a@x.io"}}},
            },
        }
    },
)


@dataclass
class Arrival:
    at: float
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # JSON-serialisable, or bytes as is
    hold: asyncio.Event | None = None  # wait for this before answering (a slow server)


@dataclass
class Scripted:
    url: str
    script: list[Answer]
    arrivals: list[Arrival] = field(default_factory=list)
    default: Answer = field(default_factory=lambda: Answer(202))


STATE = web.AppKey("state", Scripted)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Scripted]]:
    """``make(*answers, default=Answer(202))``: a server answering the script, then the default."""
    servers: list[TestServer] = []
    made: list[Scripted] = []

    async def handle(request: web.Request) -> web.Response:
        state = request.app[STATE]
        state.arrivals.append(
            Arrival(
                asyncio.get_running_loop().time(),
                request.method,
                request.path_qs,
                dict(request.headers),
                await request.read(),
            )
        )
        answer = state.script.pop(0) if state.script else state.default
        if answer.hold is not None:
            await answer.hold.wait()
        body = answer.body
        raw = body if isinstance(body, bytes) else (b"" if body is None else orjson.dumps(body))
        return web.Response(status=answer.status, headers=answer.headers, body=raw)

    async def make(*answers: Answer, default: Answer | None = None) -> Scripted:
        state = Scripted("", list(answers))
        if default is not None:
            state.default = default
        app = web.Application()
        app[STATE] = state
        app.router.add_route("*", "/{tail:.*}", handle)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        state.url = str(server.make_url("")).rstrip("/")
        made.append(state)
        return state

    yield make  # type: ignore[misc]
    for answer in (a for s in made for a in [*s.script, s.default]):
        if answer.hold is not None:
            answer.hold.set()
    for server in servers:
        await server.close()


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "klaviyo_api_key": "pk_test_123",
        "klaviyo_base_url": url,
        "retry_base_seconds": 0.01,
        "retry_cap_seconds": 0.05,
        "retry_max_attempts": 5,
        "retry_max_elapsed_seconds": 30.0,
    }
    values.update(overrides)
    return load_settings(**values)


STEADY_100 = {"requests": 100, "seconds": 60.0}
JSON_API_HEADERS = {"Content-Type": "application/vnd.api+json"}


def errors_body(*errors: dict[str, Any]) -> dict[str, Any]:
    return {"errors": list(errors)}


# --- the wire -----------------------------------------------------------------------------------


async def test_headers_and_body_on_the_wire(scripted: Callable[..., Any]) -> None:
    server = await scripted()
    async with KlaviyoClient(settings_for(server.url)) as client:
        outcome = await client.send(EVENT)
    assert outcome == Accepted(202, None, attempts=1)
    [arrival] = server.arrivals
    assert (arrival.method, arrival.path_qs) == ("POST", "/api/events")
    assert arrival.headers["Authorization"] == "Klaviyo-API-Key pk_test_123"
    assert arrival.headers["revision"] == "2026-07-15"
    assert arrival.headers["Content-Type"] == "application/vnd.api+json"
    assert arrival.headers["Accept"] == "application/vnd.api+json"
    assert orjson.loads(arrival.body) == EVENT.body


async def test_bearer_scheme_and_revision_from_settings(scripted: Callable[..., Any]) -> None:
    server = await scripted()
    settings = settings_for(server.url, klaviyo_auth_scheme="bearer", klaviyo_revision="2025-01-15")
    async with KlaviyoClient(settings) as client:
        await client.send(EVENT)
    assert server.arrivals[0].headers["Authorization"] == "Bearer pk_test_123"
    assert server.arrivals[0].headers["revision"] == "2025-01-15"


async def test_gzip_request_body(scripted: Callable[..., Any]) -> None:
    server = await scripted()
    assert EVENT.body is not None
    big = KlaviyoRequest(
        EVENT.endpoint, EVENT.method, EVENT.path, {**EVENT.body, "pad": "ab" * 500}
    )
    async with KlaviyoClient(settings_for(server.url, klaviyo_gzip=True)) as client:
        assert isinstance(await client.send(big), Accepted)
    [arrival] = server.arrivals
    assert arrival.headers["Content-Encoding"] == "gzip"
    # What travelled was compressed; aiohttp's server inflated it back to the same JSON.
    assert int(arrival.headers["Content-Length"]) < len(encode_body(big.body)) // 4
    assert orjson.loads(arrival.body) == big.body


async def test_a_missing_key_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="KLAVIYO_API_KEY"):
        KlaviyoClient(load_settings(klaviyo_api_key=None))


async def test_ping_is_an_authenticated_get_without_retries(scripted: Callable[..., Any]) -> None:
    server = await scripted(Answer(503))
    async with KlaviyoClient(settings_for(server.url)) as client:
        assert isinstance(await client.ping(), Retryable)
        assert isinstance(await client.ping(), Accepted)
    assert [(a.method, a.path_qs) for a in server.arrivals] == [
        ("GET", "/api/profiles?page%5Bsize%5D=1")
    ] * 2
    assert server.arrivals[0].headers["Authorization"] == "Klaviyo-API-Key pk_test_123"


def test_encode_body_handles_decimals_and_datetimes() -> None:
    from datetime import UTC, datetime
    from decimal import Decimal

    encoded = encode_body({"v": Decimal("12.50"), "t": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)})
    assert orjson.loads(encoded) == {"v": 12.5, "t": "2026-01-02T03:04:05+00:00"}


# --- outcome classes ----------------------------------------------------------------------------


async def test_accepted_carries_the_parsed_body(scripted: Callable[..., Any]) -> None:
    lookup = {"data": [{"type": "profile", "id": "01PROFILE"}]}
    server = await scripted(Answer(200, body=lookup))
    request = KlaviyoRequest(
        Endpoint.GET_PROFILES, "GET", "/api/profiles", query=(("filter", 'equals(email,"a@x.io")'),)
    )
    async with KlaviyoClient(settings_for(server.url)) as client:
        outcome = await client.send(request)
    assert outcome == Accepted(200, lookup, attempts=1)
    assert profile_id_from_lookup(outcome.body) == "01PROFILE"
    assert server.arrivals[0].path_qs.startswith("/api/profiles?filter=equals")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"data": [{"id": "A"}, {"id": "B"}]}, "A"),
        ({"data": []}, None),
        ({"data": [{"type": "profile"}]}, None),
        (None, None),
        ([], None),
    ],
)
def test_profile_id_from_lookup(body: Any, expected: str | None) -> None:
    assert profile_id_from_lookup(body) == expected


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 507])
async def test_retryable_statuses_are_retried(scripted: Callable[..., Any], status: int) -> None:
    server = await scripted(Answer(status, headers={"Retry-After": "0"}))
    async with KlaviyoClient(settings_for(server.url)) as client:
        outcome = await client.send(EVENT)
    assert outcome == Accepted(202, None, attempts=2)
    assert len(server.arrivals) == 2
    assert server.arrivals[0].body == server.arrivals[1].body  # same bytes resent


@pytest.mark.parametrize("status", [400, 404, 405, 409, 410, 413, 415, 422, 418])
async def test_permanent_statuses_return_at_once_with_errors(
    scripted: Callable[..., Any], status: int
) -> None:
    error = {
        "id": "e1",
        "status": status,
        "code": "invalid",
        "title": "Invalid input.",
        "detail": "The payload provided in the request is invalid.",
        "source": {"pointer": "/data/attributes/metric"},
    }
    server = await scripted(Answer(status, body=errors_body(error)))
    async with KlaviyoClient(settings_for(server.url)) as client:
        outcome = await client.send(EVENT)
    assert outcome == Permanent(
        status,
        (
            KlaviyoError(
                status,
                "invalid",
                "Invalid input.",
                "The payload provided in the request is invalid.",
                pointer="/data/attributes/metric",
            ),
        ),
        attempts=1,
    )
    assert len(server.arrivals) == 1


async def test_duplicate_profile_conflict_keeps_meta(scripted: Callable[..., Any]) -> None:
    error = {
        "status": "409",
        "code": "duplicate_profile",
        "title": "Conflict.",
        "detail": "A profile already exists with one of these identifiers.",
        "source": {"parameter": "email"},
        "meta": {"duplicate_profile_id": "01DUP"},
    }
    server = await scripted(Answer(409, body=errors_body(error)))
    request = KlaviyoRequest(
        Endpoint.UPDATE_PROFILE, "PATCH", "/api/profiles/01ME", {"data": {"id": "01ME"}}
    )
    async with KlaviyoClient(settings_for(server.url)) as client:
        outcome = await client.send(request)
    assert isinstance(outcome, Permanent) and outcome.first is not None
    assert outcome.first.code == "duplicate_profile"
    assert outcome.first.parameter == "email"
    assert outcome.first.meta == {"duplicate_profile_id": "01DUP"}


async def test_non_json_error_body_still_classifies(scripted: Callable[..., Any]) -> None:
    server = await scripted(Answer(400, body=b"<html>bad gateway config</html>"))
    async with KlaviyoClient(settings_for(server.url)) as client:
        assert await client.send(EVENT) == Permanent(400, (), attempts=1)


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failures_are_fatal_at_once(scripted: Callable[..., Any], status: int) -> None:
    error = {"status": status, "code": "not_authenticated", "title": "Not authenticated."}
    server = await scripted(Answer(status, headers=JSON_API_HEADERS, body=errors_body(error)))
    async with KlaviyoClient(settings_for(server.url, retry_max_attempts=8)) as client:
        outcome = await client.send(EVENT)
    assert isinstance(outcome, Fatal)
    assert (outcome.status, outcome.attempts) == (status, 1)
    assert outcome.errors[0].code == "not_authenticated"
    assert len(server.arrivals) == 1


async def test_timeouts_are_retryable(scripted: Callable[..., Any]) -> None:
    slow = asyncio.Event()  # never set while the client waits: the server does not answer
    server = await scripted(default=Answer(202, hold=slow))
    settings = settings_for(server.url, klaviyo_timeout_seconds=0.2, retry_max_attempts=2)
    async with KlaviyoClient(settings) as client:
        outcome = await client.send(EVENT)
    assert outcome == Retryable(None, "timeout", attempts=2)
    assert len(server.arrivals) == 2


async def test_connection_errors_are_retryable() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = settings_for(f"http://127.0.0.1:{port}", retry_max_attempts=3)
    async with KlaviyoClient(settings) as client:
        outcome = await client.send(EVENT)
    assert outcome == Retryable(None, "connection", attempts=3)


# --- retries: Retry-After, budgets --------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_never_arrives_before_retry_after(
    scripted: Callable[..., Any], status: int
) -> None:
    server = await scripted(Answer(status, headers={"Retry-After": "1"}))
    async with KlaviyoClient(settings_for(server.url)) as client:
        outcome = await client.send(EVENT)
    assert outcome == Accepted(202, None, attempts=2)
    first, second = server.arrivals
    assert second.at - first.at >= 1.0


async def test_429_pauses_the_endpoint_for_every_caller(scripted: Callable[..., Any]) -> None:
    server = await scripted(Answer(429, headers={"Retry-After": "1"}))
    async with KlaviyoClient(settings_for(server.url, retry_max_attempts=1)) as client:
        throttled = await client.send(EVENT)
        assert throttled == Retryable(429, "http_429", retry_after=1.0, attempts=1)
        others = await asyncio.gather(*(client.send(EVENT) for _ in range(5)))
    assert all(isinstance(o, Accepted) for o in others)
    first, *rest = server.arrivals
    assert len(rest) == 5
    assert min(a.at for a in rest) - first.at >= 1.0


async def test_a_permit_taken_with_try_acquire_is_used_by_the_first_attempt_only(
    scripted: Callable[..., Any],
) -> None:
    server = await scripted(Answer(503), default=Answer(202))
    limits = {"create_event": {"burst": {"requests": 1, "seconds": 0.3}, "steady": STEADY_100}}
    async with KlaviyoClient(settings_for(server.url, rate_limits=limits)) as client:
        permit = client.try_acquire(Endpoint.CREATE_EVENT)
        assert permit is not None
        assert client.try_acquire(Endpoint.CREATE_EVENT) is None  # the only place is taken
        # Had the first attempt not used the permit, it would wait for a place behind it.
        outcome = await asyncio.wait_for(client.send(EVENT, permit), timeout=10)
    assert outcome == Accepted(202, None, attempts=2)
    first, second = server.arrivals
    assert second.at - first.at >= 0.3  # the retry waited for a place of its own


async def test_attempt_budget(scripted: Callable[..., Any]) -> None:
    server = await scripted(default=Answer(503))
    async with KlaviyoClient(settings_for(server.url, retry_max_attempts=3)) as client:
        outcome = await client.send(EVENT)
    assert outcome == Retryable(503, "http_503", attempts=3)
    assert len(server.arrivals) == 3


async def test_elapsed_budget(scripted: Callable[..., Any]) -> None:
    server = await scripted(default=Answer(503))
    settings = settings_for(
        server.url,
        retry_max_attempts=1000,
        retry_base_seconds=0.1,
        retry_cap_seconds=0.1,
        retry_max_elapsed_seconds=0.6,
    )
    loop = asyncio.get_running_loop()
    async with KlaviyoClient(settings) as client:
        started = loop.time()
        outcome = await client.send(EVENT)
        elapsed = loop.time() - started
    assert isinstance(outcome, Retryable)
    assert outcome.attempts == len(server.arrivals) >= 2
    # No attempt leaves after the budget; what arrives late is only that attempt's own latency.
    latency_allowance = 0.5
    assert server.arrivals[-1].at <= started + 0.6 + latency_allowance
    assert elapsed < 0.6 + latency_allowance


class LongestWaits(random.Random):
    """Full jitter drawing its ceiling every time: each backoff is as long as it may be."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_a_served_answer_after_an_outage_ends_the_backoffs_of_failed_requests(
    scripted: Callable[..., Any],
) -> None:
    """Three requests backing off (10 minutes each here) from 503s over a second, Klaviyo
    failing: once another request is served they go again at once. A fourth whose 503 carried
    ``Retry-After`` keeps the wait Klaviyo asked for."""
    asked_for = Answer(503, headers={"Retry-After": "600"})
    server = await scripted(Answer(503), Answer(503), Answer(503), asked_for)
    settings = settings_for(
        server.url,
        retry_base_seconds=600.0,
        retry_cap_seconds=600.0,
        retry_max_elapsed_seconds=3600.0,
    )
    now = 0.0
    backing_off: asyncio.Queue[float] = asyncio.Queue()

    async def sleep(seconds: float) -> None:
        backing_off.put_nowait(seconds)
        await asyncio.sleep(seconds)

    async with KlaviyoClient(
        settings, rng=LongestWaits(), sleep=sleep, clock=lambda: now
    ) as client:
        failed = []
        for _ in range(4):
            failed.append(asyncio.create_task(client.send(EVENT)))
            await asyncio.wait_for(backing_off.get(), 10)
            now += 0.5  # the failures span the spell's second
        other = KlaviyoRequest(Endpoint.GET_PROFILES, "GET", "/api/profiles")
        assert await client.send(other) == Accepted(202, None, attempts=1)
        woken = await asyncio.wait_for(asyncio.gather(*failed[:3]), 10)
        assert woken == [Accepted(202, None, attempts=2)] * 3
        assert not failed[3].done()  # still waiting out its Retry-After
        failed[3].cancel()
    assert len(server.arrivals) == 8


async def test_retry_after_beyond_budget_hands_back_to_the_pipeline(
    scripted: Callable[..., Any],
) -> None:
    server = await scripted(Answer(429, headers={"Retry-After": "30"}))
    async with KlaviyoClient(settings_for(server.url, retry_max_elapsed_seconds=5)) as client:
        started = time.monotonic()
        outcome = await client.send(EVENT)
        assert time.monotonic() - started < 5
    assert outcome == Retryable(429, "http_429", retry_after=30.0, attempts=1)
    assert len(server.arrivals) == 1


# --- metrics ------------------------------------------------------------------------------------


# These carry the account's name too (one client per account; ``default`` alone).
_BY_ACCOUNT = ("klaviyo_relay_klaviyo_requests_total", "klaviyo_relay_klaviyo_throttled_total")


def sample(name: str, **labels: str) -> float:
    if name in _BY_ACCOUNT:
        labels = {**labels, "account": "default"}
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_attempts_retries_and_throttles(scripted: Callable[..., Any]) -> None:
    labels = {"endpoint": "create_event"}
    before = {
        "ok": sample(
            "klaviyo_relay_klaviyo_requests_total",
            outcome="accepted",
            status_class="2xx",
            **labels,
        ),
        "429": sample(
            "klaviyo_relay_klaviyo_requests_total",
            outcome="retryable",
            status_class="4xx",
            **labels,
        ),
        "retries": sample("klaviyo_relay_klaviyo_retries_total", reason="http_429", **labels),
        "throttled": sample("klaviyo_relay_klaviyo_throttled_total", **labels),
        "latency": sample("klaviyo_relay_klaviyo_request_duration_seconds_count", **labels),
        "waits": sample("klaviyo_relay_rate_limit_wait_seconds_count", **labels),
    }
    server = await scripted(Answer(429, headers={"Retry-After": "0"}))
    async with KlaviyoClient(settings_for(server.url)) as client:
        await client.send(EVENT)
    after_ok = sample(
        "klaviyo_relay_klaviyo_requests_total", outcome="accepted", status_class="2xx", **labels
    )
    after_429 = sample(
        "klaviyo_relay_klaviyo_requests_total", outcome="retryable", status_class="4xx", **labels
    )
    assert after_ok - before["ok"] == 1
    assert after_429 - before["429"] == 1
    retries = sample("klaviyo_relay_klaviyo_retries_total", reason="http_429", **labels)
    assert retries - before["retries"] == 1
    assert sample("klaviyo_relay_klaviyo_throttled_total", **labels) - before["throttled"] == 1
    latency = sample("klaviyo_relay_klaviyo_request_duration_seconds_count", **labels)
    assert latency - before["latency"] == 2
    waits = sample("klaviyo_relay_rate_limit_wait_seconds_count", **labels)
    assert waits - before["waits"] == 2


CHALLENGE = Answer(
    403,
    headers={"Content-Type": "text/html; charset=UTF-8", "cf-mitigated": "challenge"},
    body=b"<!DOCTYPE html><html><title>Just a moment...</title></html>",
)


async def test_an_edge_challenge_is_retried_and_counted_not_fatal(
    scripted: Callable[..., Any],
) -> None:
    edge = {"status": "403", "kind": "challenge"}
    before = sample("klaviyo_relay_klaviyo_edge_answers_total", **edge)
    retries_before = sample(
        "klaviyo_relay_klaviyo_retries_total", endpoint="create_event", reason="edge_challenge"
    )
    server = await scripted(CHALLENGE, CHALLENGE)
    async with KlaviyoClient(settings_for(server.url)) as client:
        outcome = await client.send(EVENT)
    assert outcome == Accepted(202, None, attempts=3)
    assert sample("klaviyo_relay_klaviyo_edge_answers_total", **edge) - before == 2
    retries = sample(
        "klaviyo_relay_klaviyo_retries_total", endpoint="create_event", reason="edge_challenge"
    )
    assert retries - retries_before == 2


async def test_an_edge_answer_past_the_budget_goes_back_as_retryable(
    scripted: Callable[..., Any],
) -> None:
    server = await scripted(default=Answer(401, body=b""))
    async with KlaviyoClient(settings_for(server.url, retry_max_attempts=2)) as client:
        outcome = await client.send(EVENT)
    assert outcome == Retryable(401, "edge_other", attempts=2, edge_kind="other")


async def test_partial_failure_is_accepted_counted_and_logged_without_values(
    scripted: Callable[..., Any],
) -> None:
    labels = {"endpoint": "create_event", "field": "phone_number"}
    before = sample("klaviyo_relay_klaviyo_partial_failures_total", **labels)
    other = {"endpoint": "create_event", "field": "other"}
    other_before = sample("klaviyo_relay_klaviyo_partial_failures_total", **other)
    # An opaque header that might carry a value: only known names become labels or log fields.
    header = "phone_number, +15555550123"
    server = await scripted(Answer(202, headers={"X-Klaviyo-Partial-Failure": header}))
    with capture_logs() as logs:
        async with KlaviyoClient(settings_for(server.url)) as client:
            outcome = await client.send(EVENT)
    assert outcome == Accepted(202, None, attempts=1, dropped_fields=("phone_number", "other"))
    assert sample("klaviyo_relay_klaviyo_partial_failures_total", **labels) - before == 1
    assert sample("klaviyo_relay_klaviyo_partial_failures_total", **other) - other_before == 1
    [logged] = [line for line in logs if line["event"] == "klaviyo_partial_failure"]
    assert logged["fields"] == ["phone_number", "other"]
    assert "+1555" not in repr(logs)
