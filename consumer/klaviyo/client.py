"""The async Klaviyo client: one aiohttp session, rate-limited, retried, classified.

``send`` takes the same :class:`KlaviyoRequest` a handler returns and gives back an
:data:`Outcome`. Every HTTP attempt waits for a rate-limit permit, and retryable answers are
retried with backoff inside the request's budget (see :mod:`consumer.klaviyo.retry`). Keys and
bodies are never logged: log lines carry the endpoint, status and attempt only.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import time
from collections.abc import Awaitable
from decimal import Decimal
from types import TracebackType
from typing import Any

import aiohttp
import orjson
import structlog
from yarl import URL

from consumer.klaviyo.auth import Credentials, credentials_from_settings
from consumer.klaviyo.classify import (
    classify_response,
    connection_error_outcome,
    timeout_outcome,
)
from consumer.klaviyo.oauth import GrantRevoked, TokenUnavailable
from consumer.klaviyo.outcomes import Accepted, Fatal, Outcome, Retryable
from consumer.klaviyo.ratelimit import Permit, RateLimiter
from consumer.klaviyo.recovery import Recovery
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.klaviyo.retry import Clock, RetryPolicy, Sleep, call_with_retries
from consumer.observability.metrics import (
    KLAVIYO_EDGE_ANSWERS,
    KLAVIYO_PARTIAL_FAILURES,
    KLAVIYO_REQUEST_DURATION,
    KLAVIYO_REQUESTS,
    KLAVIYO_RETRIES,
    KLAVIYO_THROTTLED,
    status_class,
)
from consumer.priorities import DEFAULT_RANK
from consumer.settings import Settings

JSON_API = "application/vnd.api+json"
PING_REQUEST = KlaviyoRequest(
    Endpoint.GET_PROFILES, "GET", "/api/profiles", query=(("page[size]", "1"),)
)

_log = structlog.get_logger(__name__)


def _json_default(value: Any) -> Any:
    # Avro decimals reach bodies as Decimal; Klaviyo wants JSON numbers.
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def encode_body(body: Any) -> bytes:
    """The wire form of a request body (orjson: compact, datetimes as RFC 3339)."""
    return orjson.dumps(body, default=_json_default)


def profile_id_from_lookup(body: Any) -> str | None:
    """The first profile id in a ``GET /api/profiles`` answer, or None when none was found."""
    data = body.get("data") if isinstance(body, dict) else None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        profile_id = data[0].get("id")
        return profile_id if isinstance(profile_id, str) and profile_id else None
    return None


def _outcome_name(outcome: Outcome) -> str:
    return type(outcome).__name__.lower()


class KlaviyoClient:
    """Sends :class:`KlaviyoRequest` values to Klaviyo. Use as ``async with``."""

    def __init__(
        self,
        settings: Settings,
        *,
        limiter: RateLimiter | None = None,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        credentials: Credentials | None = None,
        account: str = "default",
    ) -> None:
        """``account``: the name its metrics carry (one client per account, consumer.accounts)."""
        self._account = account
        self._credentials = credentials or credentials_from_settings(settings, account)
        self._settings = settings
        self._limiter = limiter or RateLimiter.from_settings(settings, account)
        self._policy = policy or RetryPolicy.from_settings(settings)
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep
        # Shared by every request of this account: its first served answer after an outage
        # ends the backoffs of the requests that failed in it.
        self._recovery = Recovery(sleep, clock)
        self._base_url = settings.klaviyo_base_url.rstrip("/")
        self._headers = {
            "revision": settings.klaviyo_revision,
            "Accept": JSON_API,
        }
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KlaviyoClient:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._settings.klaviyo_max_connections),
                timeout=aiohttp.ClientTimeout(total=self._settings.klaviyo_timeout_seconds),
                headers=self._headers,
                raise_for_status=False,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._credentials.close()

    def try_acquire(
        self, endpoint: Endpoint, priority: int = DEFAULT_RANK, *, beyond_reserve: bool = False
    ) -> Permit | None:
        """A rate-limit permit for ``endpoint`` if it has room right now (see ``send``);
        ``beyond_reserve``: room past the reserve its windows keep (``RateLimiter``)."""
        return self._limiter.try_acquire(endpoint.value, priority, beyond_reserve=beyond_reserve)

    def release(self, permit: Permit) -> None:
        """Hand back a permit from ``try_acquire`` that no request used."""
        self._limiter.release(permit)

    async def send(self, request: KlaviyoRequest, permit: Permit | None = None) -> Outcome:
        """Send ``request``, retrying retryable answers inside the retry budget.

        Returns Accepted, Permanent or Fatal as soon as one is seen; Retryable only when the
        budget (attempts or elapsed time) is spent. ``permit`` (from ``try_acquire``) is used by
        the first attempt instead of waiting for one; retries wait as usual.
        """
        # Serialised (and compressed) once; every retry resends the same bytes.
        payload, extra_headers = self._payload(request)
        granted = permit
        last: Retryable | None = None  # the outcome the next backoff follows

        def on_retry(outcome: Retryable, wait: float) -> None:
            nonlocal last
            last = outcome
            KLAVIYO_RETRIES.labels(request.endpoint.value, outcome.reason).inc()
            _log.info(
                "klaviyo_retry",
                endpoint=request.endpoint.value,
                status=outcome.status,
                reason=outcome.reason,
                wait_seconds=round(wait, 3),
            )

        def attempt() -> Awaitable[Outcome]:
            nonlocal granted
            given, granted = granted, None
            return self._attempt(request, payload, extra_headers, given)

        async def backoff(seconds: float) -> None:
            assert last is not None  # on_retry runs before every backoff
            await self._recovery.backoff(seconds, last)

        outcome = await call_with_retries(
            attempt,
            self._policy,
            rng=self._rng,
            clock=self._clock,
            sleep=backoff,
            on_retry=on_retry,
        )
        if isinstance(outcome, Fatal):
            _log.error("klaviyo_fatal", endpoint=request.endpoint.value, status=outcome.status)
        return outcome

    async def backoff(self, seconds: float, after: Retryable) -> None:
        """See :meth:`Recovery.backoff` (the pipeline's holds wait here too)."""
        await self._recovery.backoff(seconds, after)

    async def ping(self) -> Outcome:
        """One harmless authenticated GET (no retries), for ``check`` and readiness."""
        return await self._attempt(PING_REQUEST, None, {})

    def set_share(self, share: float) -> None:
        self._limiter.set_share(share)

    def _payload(self, request: KlaviyoRequest) -> tuple[bytes | None, dict[str, str]]:
        if request.body is None:
            return None, {}
        data = encode_body(request.body)
        headers = {"Content-Type": JSON_API}
        if self._settings.klaviyo_gzip:
            data = gzip.compress(data, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        return data, headers

    async def _attempt(
        self,
        request: KlaviyoRequest,
        payload: bytes | None,
        extra_headers: dict[str, str],
        permit: Permit | None = None,
    ) -> Outcome:
        """One rate-limited HTTP attempt (with ``permit`` if one was taken already), classified;
        with OAuth, a 401 renews the token and the request goes once more (Klaviyo may drop a
        token before its ``expires_in``)."""
        try:
            authorization = await self._credentials.header()
        except (GrantRevoked, TokenUnavailable) as exc:
            if permit is not None:  # taken for a request that never went out
                self._limiter.release(permit)
            return exc.outcome() if isinstance(exc, GrantRevoked) else exc.retryable()
        outcome = await self._http(request, payload, extra_headers, authorization, permit)
        if not (isinstance(outcome, Fatal) and outcome.status == 401):
            return outcome
        try:
            renewed = await self._credentials.renew(authorization)
        except GrantRevoked as exc:
            return exc.outcome()
        except TokenUnavailable as exc:
            return exc.retryable()
        if renewed is None:
            return outcome
        # Debug: requests in flight across a token change do this together (counted as 401s).
        _log.debug("klaviyo_token_renewed_after_401", endpoint=request.endpoint.value)
        outcome = await self._http(request, payload, extra_headers, renewed)
        if not (isinstance(outcome, Fatal) and outcome.status == 401):
            return outcome
        if not self._credentials.refused_for_good(renewed):
            # The renewed token aged out on the way (a slow path, a short-lived token): the
            # next attempt takes a newer one. Only a fresh token refused means a bad grant.
            return Retryable(status=401, reason="oauth_token_expired")
        # A fresh token refused. It may have come from a refresh made before the grant was
        # revoked (another caller's, ahead of expiry): ask the token endpoint once more, so a
        # revoked grant halts as invalid_grant, not as a refused key.
        try:
            await self._credentials.renew(renewed)
        except GrantRevoked as exc:
            return exc.outcome()
        except TokenUnavailable as exc:
            return exc.retryable()
        return outcome

    async def _http(
        self,
        request: KlaviyoRequest,
        payload: bytes | None,
        extra_headers: dict[str, str],
        authorization: str,
        permit: Permit | None = None,
    ) -> Outcome:
        if self._session is None:
            raise RuntimeError("KlaviyoClient used outside 'async with'")
        endpoint = request.endpoint.value
        if permit is None:
            permit = await self._limiter.acquire(endpoint, request.priority, request.order)
        status: int | None = None
        headers: Any = None
        started = time.perf_counter()
        try:
            async with self._session.request(
                request.method,
                URL(self._base_url + request.target, encoded=True),
                data=payload,
                headers={**extra_headers, "Authorization": authorization},
            ) as response:
                status, headers = response.status, response.headers
                body = await response.read()
            outcome = classify_response(status, headers, body)
        except TimeoutError:
            outcome = timeout_outcome()
        except aiohttp.ClientError:
            outcome = connection_error_outcome()
        finally:
            self._limiter.release(permit, status=status, headers=headers)
        self._recovery.observe(outcome)
        KLAVIYO_REQUEST_DURATION.labels(endpoint).observe(time.perf_counter() - started)
        outcome_name = _outcome_name(outcome)
        KLAVIYO_REQUESTS.labels(endpoint, outcome_name, status_class(status), self._account).inc()
        if status == 429:
            KLAVIYO_THROTTLED.labels(endpoint, self._account).inc()
        _count_oddities(endpoint, outcome)
        return outcome


def _count_oddities(endpoint: str, outcome: Outcome) -> None:
    """Count (and log, names only) the answers that are not plainly Klaviyo's yes or no."""
    if isinstance(outcome, Retryable) and outcome.edge_kind is not None:
        KLAVIYO_EDGE_ANSWERS.labels(str(outcome.status), outcome.edge_kind).inc()
        _log.warning(
            "klaviyo_edge_answer", endpoint=endpoint, status=outcome.status, kind=outcome.edge_kind
        )
    elif isinstance(outcome, Accepted) and outcome.dropped_fields:
        for field in outcome.dropped_fields:
            KLAVIYO_PARTIAL_FAILURES.labels(endpoint, field).inc()
        # The normalised names only: the header is never logged as received.
        _log.warning(
            "klaviyo_partial_failure", endpoint=endpoint, fields=list(outcome.dropped_fields)
        )
