"""OAuth access tokens for one Klaviyo installation, refreshed before they expire.

Klaviyo's access tokens live about an hour (``expires_in``). The provider exchanges the refresh
token (``grant_type=refresh_token``, form-encoded, HTTP Basic with the client id and secret)
for a new one:

- ahead of expiry: once a token has used up most of its life the next caller starts a refresh
  in the background and still gets the current token; only an expired token makes callers wait;
- once for all concurrent callers (single flight): one refresh task, every caller awaits it;
- on a 401 with a token that is no longer the newest (:meth:`TokenProvider.renew`), so a token
  Klaviyo dropped early costs one refresh and a retry, not a halt;
- transient token-endpoint failures (429, 5xx, timeouts) are retried with backoff inside the
  retry budget, then reported as :class:`TokenUnavailable` (the event is held, as for any
  Klaviyo outage);
- ``invalid_grant`` (the app was uninstalled, or the grant revoked) is retried once with the
  newest refresh token in the store (another replica may have rotated it a moment ago), then
  raised as :class:`GrantRevoked` for good: the relay halts with that reason.

A rotated refresh token is saved in the :mod:`~consumer.klaviyo.token_store` and the store is
re-read before each refresh. Tokens and the client secret are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
import structlog

from consumer.klaviyo.classify import (
    connection_error_outcome,
    header,
    parse_json,
    parse_retry_after,
    timeout_outcome,
)
from consumer.klaviyo.outcomes import (
    RETRYABLE_STATUSES,
    Accepted,
    Fatal,
    KlaviyoError,
    Outcome,
    Retryable,
)
from consumer.klaviyo.retry import Clock, RetryPolicy, Sleep, call_with_retries
from consumer.klaviyo.token_store import TokenStore, TokenStoreError
from consumer.observability.metrics import OAUTH_REFRESHES, OAUTH_TOKEN_EXPIRY

INVALID_GRANT = "invalid_grant"
CLIENT_REFUSED = "oauth_client_refused"
# The codes of the Fatal outcomes a refused refresh becomes (the relay's halt reason says which).
OAUTH_REFUSALS = frozenset({INVALID_GRANT, CLIENT_REFUSED})
# A token is refreshed in the background once this share of its life is left, but never more
# than REFRESH_AHEAD_MAX_SECONDS before it expires (five minutes of Klaviyo's hour).
REFRESH_AHEAD_SHARE = 0.5
REFRESH_AHEAD_MAX_SECONDS = 300.0
# A token Klaviyo refuses while younger than this share of its life was refused for what it is,
# not for its age: the relay halts (older ones are retried with a newer token).
FRESH_SHARE = 0.25
# After an invalid_grant with no newer token in the store, wait this long and read it once more:
# another replica may be between Klaviyo's answer and its write to the store.
STORE_SETTLE_SECONDS = 1.0

_log = structlog.get_logger(__name__)


class GrantRevoked(Exception):
    """The token endpoint refused the refresh token for good (``invalid_grant``) or refused the
    client (``invalid_client``...): nothing this relay can fix by waiting."""

    def __init__(self, code: str, status: int) -> None:
        super().__init__(code)
        self.code = code
        self.status = status

    def describe(self) -> str:
        if self.code == INVALID_GRANT:
            return (
                "Klaviyo refused the OAuth refresh token (invalid_grant): the app was"
                " uninstalled or its access revoked; reinstall it and set the new refresh token"
            )
        return (
            f"the OAuth token endpoint refused the client ({self.code}): check"
            " KLAVIYO_OAUTH_CLIENT_ID and KLAVIYO_OAUTH_CLIENT_SECRET"
        )

    def outcome(self) -> Fatal:
        """The halt this means, in the shape every other refused credential has."""
        code = INVALID_GRANT if self.code == INVALID_GRANT else CLIENT_REFUSED
        return Fatal(
            status=401,
            errors=(KlaviyoError(status=self.status, code=code, detail=self.describe()),),
        )


class TokenUnavailable(Exception):
    """No token for now: the token endpoint kept failing transiently inside the budget."""

    def __init__(self, last: Retryable) -> None:
        super().__init__(last.reason)
        self.last = last

    def retryable(self) -> Retryable:
        """The request's outcome: held and retried like any outage (reason ``oauth_<why>``)."""
        return dataclasses.replace(self.last, reason=f"oauth_{self.last.reason}", attempts=1)


@dataclass(frozen=True, slots=True)
class OAuthApp:
    """One installation's credentials (``repr`` leaves the secrets out)."""

    client_id: str
    client_secret: str = field(repr=False)
    refresh_token: str = field(repr=False)
    token_url: str


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str = field(repr=False)
    expires_at: float  # on the provider's (monotonic) clock
    lifetime: float
    scope: str = ""

    def refresh_due(self, now: float) -> bool:
        ahead = min(REFRESH_AHEAD_MAX_SECONDS, self.lifetime * REFRESH_AHEAD_SHARE)
        return now >= self.expires_at - ahead

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def fresh(self, now: float) -> bool:
        return now < self.expires_at - self.lifetime * (1 - FRESH_SHARE)


class TokenProvider:
    """Access tokens for one installation; one per account (never shared, never global)."""

    def __init__(
        self,
        app: OAuthApp,
        store: TokenStore,
        *,
        policy: RetryPolicy,
        timeout_seconds: float,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Clock = time.time,
        account: str = "default",
    ) -> None:
        self._app = app
        self._account = account  # the metrics' label (consumer.accounts)
        self._store = store
        self._policy = policy
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._latest = app.refresh_token  # newest refresh token this process knows
        self._stored: str | None = None  # what the store held when last read or written
        self._token: AccessToken | None = None
        self._refreshing: asyncio.Task[AccessToken] | None = None
        self._revoked: GrantRevoked | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def store(self) -> TokenStore:
        return self._store

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def token(self) -> AccessToken:
        """A token that has not expired; raises GrantRevoked or TokenUnavailable."""
        if self._revoked is not None:
            raise self._revoked
        token, now = self._token, self._clock()
        if token is not None and not token.refresh_due(now):
            return token
        task = self._refresh_task()
        if token is not None and not token.expired(now):
            return token  # the refresh runs in the background; this one still works
        return await asyncio.shield(task)

    async def renew(self, stale: str) -> AccessToken:
        """A token other than ``stale`` (a value Klaviyo answered 401 to): the newest one when
        another caller already replaced it, else a fresh one."""
        if self._token is not None and self._token.value != stale:
            return self._token
        self._token = None
        if self._revoked is not None:
            raise self._revoked
        return await asyncio.shield(self._refresh_task())

    def refused_while_fresh(self, value: str) -> bool:
        """Whether ``value`` is the newest token and still young (a 401 to it is no expiry)."""
        token = self._token
        return token is not None and token.value == value and token.fresh(self._clock())

    def _refresh_task(self) -> asyncio.Task[AccessToken]:
        # A done task whose callback has not run yet holds an older token: start another.
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh(), name="oauth-refresh")
            self._refreshing.add_done_callback(self._refreshed)
        return self._refreshing

    def _refreshed(self, task: asyncio.Task[AccessToken]) -> None:
        if self._refreshing is task:
            self._refreshing = None
        if task.cancelled():
            return
        error = task.exception()  # retrieved here too: a background refresh may have no waiter
        if isinstance(error, GrantRevoked):
            self._revoked = error

    async def _refresh(self) -> AccessToken:
        tried: list[str] = []
        settled = False
        while True:
            candidate = await self._next_candidate(tried)
            if candidate is None and not settled:
                settled = True
                await self._sleep(STORE_SETTLE_SECONDS)
                candidate = await self._next_candidate(tried)
            if candidate is None:
                OAUTH_REFRESHES.labels(INVALID_GRANT, self._account).inc()
                revoked = GrantRevoked(INVALID_GRANT, 400)
                _log.error("oauth_grant_revoked", tried=len(tried), reason=revoked.describe())
                raise revoked
            tried.append(candidate)
            outcome = await self._exchange(candidate)
            if isinstance(outcome, Accepted):
                return await self._accept(candidate, outcome)
            if isinstance(outcome, Retryable):
                OAUTH_REFRESHES.labels("unavailable", self._account).inc()
                _log.warning("oauth_refresh_failed", status=outcome.status, reason=outcome.reason)
                raise TokenUnavailable(outcome)
            assert isinstance(outcome, Fatal)
            code = outcome.errors[0].code if outcome.errors else None
            if code != INVALID_GRANT:
                OAUTH_REFRESHES.labels("refused", self._account).inc()
                refused = GrantRevoked(code or f"http_{outcome.status}", outcome.status)
                _log.error("oauth_client_refused", status=outcome.status, code=code)
                raise refused
            _log.warning("oauth_refresh_token_refused", attempt=len(tried))

    async def _next_candidate(self, tried: list[str]) -> str | None:
        """The newest refresh token not tried yet: the store's, this process's, the setting's."""
        try:
            stored = self._stored = await self._store.load()
        except TokenStoreError as exc:
            _log.warning("oauth_token_store_unreadable", error=str(exc))
            stored = None
        for candidate in (stored, self._latest, self._app.refresh_token):
            if candidate and candidate not in tried:
                return candidate
        return None

    async def _accept(self, used: str, outcome: Accepted) -> AccessToken:
        body = outcome.body
        assert isinstance(body, dict)  # _post only accepts a dict with an access token
        lifetime = float(body.get("expires_in") or 3600)
        token = AccessToken(
            value=body["access_token"],
            expires_at=self._clock() + lifetime,
            lifetime=lifetime,
            scope=str(body.get("scope") or ""),
        )
        OAUTH_REFRESHES.labels("ok", self._account).inc()
        OAUTH_TOKEN_EXPIRY.labels(self._account).set(self._wall_clock() + lifetime)
        rotated = body.get("refresh_token")
        newest = rotated if isinstance(rotated, str) and rotated else used
        self._latest = newest
        if newest != self._stored:
            # A rotation, or a token that worked while the store held another (a first start,
            # a refused one left over from an earlier installation): keep the store current.
            try:
                await self._store.save(newest)
            except TokenStoreError as exc:
                # This process goes on with it; a restart would need it: say so loudly.
                _log.error("oauth_refresh_token_not_stored", error=str(exc))
            else:
                self._stored = newest
                _log.info(
                    "oauth_refresh_token_stored",
                    rotated=newest != used,
                    store=self._store.describe(),
                )
        _log.info("oauth_token_refreshed", expires_in=lifetime)
        # Set last, with no await after it: once callers see the new token the task is done.
        self._token = token
        return token

    async def _exchange(self, refresh_token: str) -> Outcome:
        def on_retry(outcome: Retryable, wait: float) -> None:
            OAUTH_REFRESHES.labels("retried", self._account).inc()
            _log.info(
                "oauth_refresh_retry",
                status=outcome.status,
                reason=outcome.reason,
                wait_seconds=round(wait, 3),
            )

        return await call_with_retries(
            lambda: self._post(refresh_token),
            self._policy,
            rng=self._rng,
            clock=self._clock,
            sleep=self._sleep,
            on_retry=on_retry,
        )

    async def _post(self, refresh_token: str) -> Outcome:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        credentials = f"{self._app.client_id}:{self._app.client_secret}".encode()
        headers = {
            "Authorization": "Basic " + base64.b64encode(credentials).decode("ascii"),
            "Accept": "application/json",
        }
        try:
            async with self._session.post(
                self._app.token_url, data=form, headers=headers
            ) as response:
                return token_answer(response.status, response.headers, await response.read())
        except TimeoutError:
            return timeout_outcome()
        except aiohttp.ClientError:
            return connection_error_outcome()


def token_answer(status: int, headers: Mapping[str, str], raw: bytes) -> Outcome:
    """What a token-endpoint answer means: a token, a refusal (RFC 6749 ``error``), or a
    failure worth retrying."""
    body = parse_json(raw)
    if status == 200 and isinstance(body, dict) and isinstance(body.get("access_token"), str):
        return Accepted(status=status, body=body)
    if status in RETRYABLE_STATUSES or status >= 500:
        return Retryable(
            status=status,
            reason=f"http_{status}",
            retry_after=parse_retry_after(header(headers, "Retry-After")),
        )
    code = body.get("error") if isinstance(body, dict) else None
    return Fatal(
        status=status,
        errors=(KlaviyoError(status=status, code=code if isinstance(code, str) else None),),
    )
