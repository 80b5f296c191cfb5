"""The sandbox's OAuth token endpoint and the bearer tokens it issues: expiry, rotation,
``invalid_grant`` after a revoke, the client check, and the live settings."""

from __future__ import annotations

import base64

import orjson
import pytest
from click.testing import CliRunner

from klaviyo_sandbox import SandboxOptions
from klaviyo_sandbox.cli import sandbox as sandbox_command
from klaviyo_sandbox.oauth import OAuthOptions
from tests.fixtures.sandbox import Api, FakeClock, Reply, event_body, sandbox_api


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


CLIENT = basic("app-1", "secret-1")


def oauth_options(**overrides: object) -> SandboxOptions:
    oauth = OAuthOptions(clients={"app-1": "secret-1"}, refresh_tokens=("rt_0",), token_lifetime=60)
    for name, value in overrides.items():
        setattr(oauth, name, value)
    return SandboxOptions(oauth=oauth)


async def refresh(
    api: Api, refresh_token: str, auth: str = CLIENT
) -> tuple[int, dict[str, object]]:
    async with api.session.post(
        f"{api.base_url}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        headers={"Authorization": auth},
    ) as response:
        return response.status, orjson.loads(await response.read())


async def send_with(api: Api, token: object) -> Reply:
    return await api.event(event_body(), headers={"Authorization": f"Bearer {token}"})


async def test_refresh_issues_an_access_token_the_api_accepts_until_it_expires() -> None:
    clock = FakeClock(1_000_000.0)
    async with sandbox_api(oauth_options(), clock=clock) as api:
        status, body = await refresh(api, "rt_0")
        assert status == 200
        assert body["token_type"] == "Bearer" and body["expires_in"] == 60
        assert body["refresh_token"] == "rt_0"  # no rotation by default
        assert "events:write" in str(body["scope"])
        assert (await send_with(api, body["access_token"])).status == 202
        clock.now += 61
        expired = await send_with(api, body["access_token"])
        assert expired.status == 401
        assert expired.errors[0]["code"] == "authentication_failed"
        assert (await send_with(api, "at_made_up")).status == 401
        assert (await api.inspect("oauth"))["counts"]["expired"] == 1
        assert (await api.inspect("stats"))["events"] == 1


async def test_rotation_invalidates_the_old_refresh_token() -> None:
    async with sandbox_api(oauth_options(rotate=True)) as api:
        status, body = await refresh(api, "rt_0")
        assert status == 200 and body["refresh_token"] != "rt_0"
        status, error = await refresh(api, "rt_0")
        assert (status, error["error"]) == (400, "invalid_grant")
        status, _ = await refresh(api, str(body["refresh_token"]))
        assert status == 200


async def test_revoke_is_the_app_uninstalled() -> None:
    async with sandbox_api(oauth_options()) as api:
        _, body = await refresh(api, "rt_0")
        async with api.session.post(
            f"{api.base_url}/_sandbox/oauth", data=orjson.dumps({"revoke": True})
        ) as response:
            assert response.status == 200
        status, error = await refresh(api, "rt_0")
        assert (status, error["error"]) == (400, "invalid_grant")
        assert (await send_with(api, body["access_token"])).status == 401


@pytest.mark.parametrize(
    "auth", [basic("app-1", "wrong"), basic("app-2", "secret-1"), "Bearer rt_0"]
)
async def test_a_wrong_client_is_invalid_client(auth: str) -> None:
    async with sandbox_api(oauth_options()) as api:
        status, error = await refresh(api, "rt_0", auth)
        assert (status, error["error"]) == (401, "invalid_client")


async def test_live_settings_are_validated() -> None:
    async with sandbox_api(oauth_options()) as api:
        for bad in ({"token_lifetime": 0}, {"rotate": "yes"}, {"nope": 1}):
            async with api.session.post(
                f"{api.base_url}/_sandbox/oauth", data=orjson.dumps(bad)
            ) as response:
                assert response.status == 400
        async with api.session.post(
            f"{api.base_url}/_sandbox/oauth", data=orjson.dumps({"token_lifetime": 2})
        ) as response:
            assert (await response.json())["token_lifetime"] == 2
        _, body = await refresh(api, "rt_0")
        assert body["expires_in"] == 2


async def test_without_oauth_there_is_no_token_endpoint() -> None:
    async with sandbox_api() as api:
        status, _ = await refresh(api, "rt_0")
        assert status == 404


def test_cli_rejects_a_client_without_a_secret() -> None:
    result = CliRunner().invoke(sandbox_command, ["--oauth-client", "app-1", "--port", "0"])
    assert result.exit_code == 2
    assert "ID:SECRET" in result.output
