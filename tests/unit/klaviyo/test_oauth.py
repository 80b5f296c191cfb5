"""OAuth access tokens: single-flight refresh, refresh ahead of expiry, 401 → renew → retry,
invalid_grant → halt, rotation kept in the store. Against small token/API servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from consumer.klaviyo.auth import OAuthCredentials
from consumer.klaviyo.client import KlaviyoClient
from consumer.klaviyo.oauth import (
    INVALID_GRANT,
    GrantRevoked,
    OAuthApp,
    TokenProvider,
    TokenUnavailable,
)
from consumer.klaviyo.outcomes import Accepted, Fatal, Retryable
from consumer.klaviyo.retry import RetryPolicy
from consumer.klaviyo.token_store import FileTokenStore, MemoryStore, TokenStore
from consumer.observability.metrics import REGISTRY
from consumer.settings import SettingsError, load_settings
from klaviyo_sandbox import SandboxOptions, running_sandbox
from klaviyo_sandbox.oauth import OAuthOptions
from tests.unit.klaviyo.test_klaviyo_client import EVENT

POLICY = RetryPolicy(max_attempts=4, max_elapsed_seconds=30.0, base_seconds=0.01, cap_seconds=0.02)
SECRET = "cs_very_secret"


@dataclass
class TokenServer:
    """Answers the token endpoint from ``script`` (a callable per request), recording forms."""

    url: str = ""
    forms: list[dict[str, str]] = field(default_factory=list)
    basic: list[str] = field(default_factory=list)
    script: list[Callable[[dict[str, str]], Awaitable[web.Response]]] = field(default_factory=list)
    issued: int = 0
    lifetime: int = 3600

    async def grant(self, form: dict[str, str], *, rotate_to: str | None = None) -> web.Response:
        self.issued += 1
        body = {
            "access_token": f"at_{self.issued}",
            "token_type": "Bearer",
            "expires_in": self.lifetime,
            "refresh_token": rotate_to or form["refresh_token"],
            "scope": "events:write profiles:read",
        }
        return web.json_response(body)


def refuse(code: str, status: int = 400) -> Callable[[dict[str, str]], Awaitable[web.Response]]:
    async def answer(_form: dict[str, str]) -> web.Response:
        return web.json_response({"error": code}, status=status)

    return answer


def fail(status: int) -> Callable[[dict[str, str]], Awaitable[web.Response]]:
    async def answer(_form: dict[str, str]) -> web.Response:
        return web.Response(status=status, headers={"Retry-After": "0"})

    return answer


TOKEN_SERVER = web.AppKey("token_server", TokenServer)


@pytest.fixture
async def token_server() -> AsyncIterator[TokenServer]:
    state = TokenServer()

    async def handle(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        state.forms.append(form)
        state.basic.append(request.headers.get("Authorization", ""))
        if state.script:
            return await state.script.pop(0)(form)
        return await state.grant(form)

    app = web.Application()
    app[TOKEN_SERVER] = state
    app.router.add_post("/oauth/token", handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state.url = str(server.make_url("/oauth/token"))
    yield state
    await server.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def provider_for(
    server: TokenServer,
    store: TokenStore | None = None,
    *,
    refresh_token: str = "rt_1",
    clock: Callable[[], float] | None = None,
) -> TokenProvider:
    app = OAuthApp("client-1", SECRET, refresh_token, server.url)

    async def no_wait(_seconds: float) -> None:
        return None

    kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return TokenProvider(
        app,
        store or MemoryStore(),
        policy=POLICY,
        timeout_seconds=5.0,
        sleep=no_wait,
        **kwargs,
    )


def refreshes(result: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "klaviyo_relay_oauth_refreshes_total", {"result": result, "account": "default"}
        )
        or 0.0
    )


async def test_refresh_request_on_the_wire(token_server: TokenServer) -> None:
    provider = provider_for(token_server)
    token = await provider.token()
    await provider.close()
    assert (token.value, token.lifetime, token.scope) == (
        "at_1",
        3600,
        "events:write profiles:read",
    )
    assert token_server.forms == [{"grant_type": "refresh_token", "refresh_token": "rt_1"}]
    expected = base64.b64encode(f"client-1:{SECRET}".encode()).decode()
    assert token_server.basic == [f"Basic {expected}"]
    assert SECRET not in repr(provider._app) and "rt_1" not in repr(token)


async def test_concurrent_callers_share_one_refresh(token_server: TokenServer) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(form: dict[str, str]) -> web.Response:
        arrived.set()
        await release.wait()
        return await token_server.grant(form)

    token_server.script.append(slow)
    provider = provider_for(token_server)
    callers = [asyncio.create_task(provider.token()) for _ in range(25)]
    await arrived.wait()
    release.set()
    tokens = await asyncio.gather(*callers)
    await provider.close()
    assert {t.value for t in tokens} == {"at_1"}
    assert len(token_server.forms) == 1


async def test_refreshes_ahead_of_expiry_without_making_callers_wait(
    token_server: TokenServer,
) -> None:
    clock = FakeClock()
    token_server.lifetime = 100
    provider = provider_for(token_server, clock=clock)
    first = await provider.token()
    clock.now += 45  # 55 s left: more than half its life, no refresh yet
    assert await provider.token() is first
    assert len(token_server.forms) == 1
    clock.now += 40  # 15 s left: refresh in the background, the current token still served
    granted = asyncio.Event()

    async def grant_and_tell(form: dict[str, str]) -> web.Response:
        answer = await token_server.grant(form)
        granted.set()
        return answer

    token_server.script.append(grant_and_tell)
    assert await provider.token() is first
    await asyncio.wait_for(granted.wait(), 10)
    second = await provider.token()
    assert second.value == "at_2"
    clock.now += 101  # expired, and no refresh done ahead: the caller waits for a new one
    assert (await provider.token()).value == "at_3"
    await provider.close()


async def test_transient_token_endpoint_failures_are_retried(token_server: TokenServer) -> None:
    token_server.script += [fail(503), fail(429)]
    before = refreshes("retried")
    provider = provider_for(token_server)
    assert (await provider.token()).value == "at_1"
    await provider.close()
    assert len(token_server.forms) == 3
    assert refreshes("retried") - before == 2


async def test_a_token_endpoint_down_for_the_whole_budget_is_unavailable(
    token_server: TokenServer,
) -> None:
    token_server.script += [fail(503)] * POLICY.max_attempts
    provider = provider_for(token_server)
    with pytest.raises(TokenUnavailable):
        await provider.token()
    assert (await provider.token()).value == "at_1"  # back: the next caller gets one
    await provider.close()


async def test_invalid_grant_is_revoked_for_good(token_server: TokenServer) -> None:
    token_server.script += [refuse(INVALID_GRANT)] * 3
    before = refreshes(INVALID_GRANT)
    provider = provider_for(token_server)
    with pytest.raises(GrantRevoked) as caught:
        await provider.token()
    assert "uninstalled" in caught.value.describe()
    with pytest.raises(GrantRevoked):
        await provider.token()  # sticky: no more requests to the token endpoint
    await provider.close()
    assert len(token_server.forms) == 1
    assert refreshes(INVALID_GRANT) - before == 1


async def test_invalid_grant_is_retried_with_the_newest_stored_token(
    token_server: TokenServer,
) -> None:
    """Another replica rotated the refresh token: ours was refused, the store has the new one."""
    store = MemoryStore()

    async def rotated_elsewhere(_form: dict[str, str]) -> web.Response:
        await store.save("rt_2")
        return web.json_response({"error": INVALID_GRANT}, status=400)

    token_server.script.append(rotated_elsewhere)
    provider = provider_for(token_server, store)
    assert (await provider.token()).value == "at_1"
    await provider.close()
    assert [f["refresh_token"] for f in token_server.forms] == ["rt_1", "rt_2"]


async def test_rotation_is_kept_in_the_file_store_for_a_restart(
    token_server: TokenServer, tmp_path: Path
) -> None:
    path = tmp_path / "refresh-token"
    token_server.script.append(lambda form: token_server.grant(form, rotate_to="rt_2"))
    with capture_logs() as logs:
        provider = provider_for(token_server, FileTokenStore(path))
        await provider.token()
        await provider.close()
    assert path.read_text() == "rt_2"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "rt_2" not in repr(logs) and "at_1" not in repr(logs)
    restarted = provider_for(token_server, FileTokenStore(path))  # configured: still rt_1
    await restarted.token()
    await restarted.close()
    assert [f["refresh_token"] for f in token_server.forms] == ["rt_1", "rt_2"]


async def test_a_client_refusal_halts_with_its_own_reason(token_server: TokenServer) -> None:
    token_server.script.append(refuse("invalid_client", 401))
    provider = provider_for(token_server)
    with pytest.raises(GrantRevoked) as caught:
        await provider.token()
    await provider.close()
    assert "KLAVIYO_OAUTH_CLIENT_SECRET" in caught.value.describe()
    assert caught.value.outcome().errors[0].code == "oauth_client_refused"


# --- through the client -------------------------------------------------------------------------


@dataclass
class Api:
    url: str = ""
    seen: list[str] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    on_request: Callable[[], None] = lambda: None
    before_answer: Callable[[], Awaitable[None]] | None = None  # once, at the first request


API = web.AppKey("api", Api)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    state = Api()

    async def handle(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        state.seen.append(auth)
        state.on_request()
        if state.before_answer is not None:
            before, state.before_answer = state.before_answer, None
            await before()
        if auth.removeprefix("Bearer ") in state.refuse:
            error = {"status": 401, "code": "authentication_failed", "detail": "expired"}
            return web.Response(
                status=401,
                body=orjson.dumps({"errors": [error]}),
                content_type="application/vnd.api+json",
            )
        return web.Response(status=202)

    app = web.Application()
    app[API] = state
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state.url = str(server.make_url("")).rstrip("/")
    yield state
    await server.close()


def oauth_client(
    api: Api, token_server: TokenServer, clock: Callable[[], float] | None = None
) -> KlaviyoClient:
    settings = load_settings(
        klaviyo_base_url=api.url, retry_base_seconds=0.01, retry_max_attempts=1
    )
    provider = provider_for(token_server, clock=clock)
    return KlaviyoClient(settings, credentials=OAuthCredentials(provider))


async def test_a_401_renews_the_token_once_and_retries(api: Api, token_server: TokenServer) -> None:
    api.refuse.add("at_1")  # Klaviyo dropped the token before its expires_in
    async with oauth_client(api, token_server) as client:
        outcome = await client.send(EVENT)
        assert isinstance(outcome, Accepted)
        assert isinstance(await client.send(EVENT), Accepted)
    assert api.seen == ["Bearer at_1", "Bearer at_2", "Bearer at_2"]
    assert len(token_server.forms) == 2


async def test_concurrent_401s_share_one_renewal(api: Api, token_server: TokenServer) -> None:
    api.refuse.add("at_1")
    async with oauth_client(api, token_server) as client:
        outcomes = await asyncio.gather(*(client.send(EVENT) for _ in range(10)))
    assert all(isinstance(o, Accepted) for o in outcomes)
    assert len(token_server.forms) == 2


async def test_invalid_grant_becomes_a_fatal_outcome_that_says_why(
    api: Api, token_server: TokenServer
) -> None:
    token_server.script += [refuse(INVALID_GRANT)] * 3
    async with oauth_client(api, token_server) as client:
        outcome = await client.send(EVENT)
    assert isinstance(outcome, Fatal)
    assert outcome.errors[0].code == INVALID_GRANT
    assert "uninstalled" in (outcome.errors[0].detail or "")
    assert api.seen == []  # nothing sent without a token


async def test_a_401_to_a_fresh_token_still_halts(api: Api, token_server: TokenServer) -> None:
    api.refuse.update({"at_1", "at_2"})
    async with oauth_client(api, token_server) as client:
        outcome = await client.send(EVENT)
    assert isinstance(outcome, Fatal) and outcome.status == 401
    assert api.seen == ["Bearer at_1", "Bearer at_2"]


async def test_a_grant_revoked_just_after_a_refresh_halts_with_invalid_grant(
    api: Api, token_server: TokenServer
) -> None:
    """A request goes out with at_1; while it is in flight the token is refreshed ahead (at_2)
    and then the grant revoked, which kills both tokens. The 401 to at_1 finds at_2 newer and
    retries with it; at_2 is refused while young. Before halting, the token endpoint is asked:
    the halt says invalid_grant (the app uninstalled), not a refused key."""
    provider = provider_for(token_server)
    settings = load_settings(
        klaviyo_base_url=api.url, retry_base_seconds=0.01, retry_max_attempts=1
    )

    async def refreshed_then_revoked() -> None:
        assert (await provider.renew("at_1")).value == "at_2"
        token_server.script += [refuse(INVALID_GRANT)] * 3
        api.refuse.update({"at_1", "at_2"})

    api.before_answer = refreshed_then_revoked
    async with KlaviyoClient(settings, credentials=OAuthCredentials(provider)) as client:
        outcome = await client.send(EVENT)
    assert isinstance(outcome, Fatal) and outcome.errors[0].code == INVALID_GRANT
    assert api.seen == ["Bearer at_1", "Bearer at_2"]


async def test_a_401_to_a_renewed_token_that_aged_on_the_way_is_retried(
    api: Api, token_server: TokenServer
) -> None:
    """A slow path delivered the renewed token after most of its life: not a bad grant."""
    clock = FakeClock()
    token_server.lifetime = 100
    api.refuse.update({"at_1", "at_2"})

    def slow_path() -> None:
        clock.now += 60

    api.on_request = slow_path
    async with oauth_client(api, token_server, clock) as client:
        outcome = await client.send(EVENT)
    assert outcome == Retryable(status=401, reason="oauth_token_expired")
    assert api.seen == ["Bearer at_1", "Bearer at_2"]


async def test_a_refused_token_left_in_the_store_is_replaced_by_the_one_that_works(
    token_server: TokenServer,
) -> None:
    """The app was reinstalled: the Secret has the new refresh token, the store the old one."""
    store = MemoryStore()
    await store.save("rt_old")
    token_server.script.append(refuse(INVALID_GRANT))
    clock = FakeClock()
    provider = provider_for(token_server, store, refresh_token="rt_new", clock=clock)
    await provider.token()
    assert await store.load() == "rt_new"
    clock.now += 3600  # the next refresh goes straight to the working token
    await provider.token()
    await provider.close()
    assert [f["refresh_token"] for f in token_server.forms] == ["rt_old", "rt_new", "rt_new"]


async def test_two_replicas_refreshing_at_once_with_a_rotating_token(tmp_path: Path) -> None:
    """Both read rt_0 from the shared store; the sandbox rotates on the first refresh and refuses
    the second (invalid_grant); the loser re-reads the store and retries with the new token."""
    options = SandboxOptions(
        oauth=OAuthOptions(clients={"client-1": SECRET}, refresh_tokens=("rt_0",), rotate=True)
    )
    async with running_sandbox(options) as sandbox:
        server = TokenServer(url=f"{sandbox.base_url}/oauth/token")
        store = FileTokenStore(tmp_path / "refresh-token")
        replicas = [
            TokenProvider(
                OAuthApp("client-1", SECRET, "rt_0", server.url),
                store,
                policy=POLICY,
                timeout_seconds=5.0,
            )
            for _ in range(2)
        ]
        tokens = await asyncio.gather(*(replica.token() for replica in replicas))
        for replica in replicas:
            await replica.close()
        oauth = sandbox.sandbox.oauth
        assert oauth is not None
        assert len({t.value for t in tokens}) == 2
        assert oauth.counts.invalid_grant == 1 and oauth.counts.rotated == 2
        # The store holds the one refresh token the sandbox still accepts.
        assert oauth.refresh_tokens == {await store.load()}


def test_half_an_oauth_set_up_is_refused_without_showing_secrets() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(klaviyo_oauth_client_id="app", klaviyo_oauth_client_secret=SECRET)
    message = str(caught.value)
    assert "KLAVIYO_OAUTH_REFRESH_TOKEN" in message and SECRET not in message
    settings = load_settings(
        klaviyo_oauth_client_id="app",
        klaviyo_oauth_client_secret=SECRET,
        klaviyo_oauth_refresh_token="rt_1",
    )
    assert settings.oauth and SECRET not in repr(settings)
    assert not load_settings().oauth
