"""``check`` with an OAuth app, against the real broker and the sandbox's token endpoint: the
``oauth`` line (a token, its lifetime and scopes, where a rotated refresh token is kept), and a
revoked grant named as such."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from klaviyo_sandbox import SandboxOptions, running_sandbox
from klaviyo_sandbox.oauth import OAuthOptions
from tests.integration.test_check import check, env, lines_of

pytestmark = pytest.mark.kafka

__all__ = ["env"]  # the fixture, shared with test_check

SECRET, REFRESH_TOKEN = "cs_check_secret", "rt_check"


def oauth_env(env: dict[str, str], base_url: str, store: Path) -> dict[str, str]:
    return {
        **env,
        "KLAVIYO_API_KEY": "",
        "KLAVIYO_BASE_URL": base_url,
        "KLAVIYO_OAUTH_CLIENT_ID": "check-app",
        "KLAVIYO_OAUTH_CLIENT_SECRET": SECRET,
        "KLAVIYO_OAUTH_REFRESH_TOKEN": REFRESH_TOKEN,
        "KLAVIYO_OAUTH_TOKEN_URL": f"{base_url}/oauth/token",
        "KLAVIYO_OAUTH_TOKEN_STORE": str(store),
    }


def sandbox_options(*, rotate: bool) -> SandboxOptions:
    oauth = OAuthOptions(
        clients={"check-app": SECRET}, refresh_tokens=(REFRESH_TOKEN,), rotate=rotate
    )
    return SandboxOptions(api_keys=(), oauth=oauth)


async def test_oauth_line_and_a_rotation_kept(env: dict[str, str], tmp_path: Path) -> None:
    store = tmp_path / "refresh-token"
    async with running_sandbox(sandbox_options(rotate=True)) as sandbox:
        result = await asyncio.to_thread(check, oauth_env(env, sandbox.base_url, store))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = lines_of(result)
    checks = ["config", "revision", "kafka", "dlq", "oauth", "klaviyo", "scopes"]
    assert [name for name in lines if name in checks] == checks  # (log lines aside)
    assert lines["oauth"].startswith("ok (") and "token for 3600 s" in lines["oauth"]
    assert "scopes events:write profiles:read profiles:write" in lines["oauth"]
    assert f"kept in file {store}" in lines["oauth"]
    assert "token accepted" in lines["klaviyo"]
    # Klaviyo rotated the refresh token during check: the newest is in the store, never shown.
    rotated = store.read_text()
    assert rotated != REFRESH_TOKEN
    for secret in (SECRET, REFRESH_TOKEN, rotated):
        assert secret not in result.stdout + result.stderr


async def test_a_revoked_grant_is_named(env: dict[str, str], tmp_path: Path) -> None:
    async with running_sandbox(sandbox_options(rotate=False)) as sandbox:
        assert sandbox.sandbox.oauth is not None
        sandbox.sandbox.oauth.update({"revoke": True})
        result = await asyncio.to_thread(
            check, oauth_env(env, sandbox.base_url, tmp_path / "refresh-token")
        )
    assert result.returncode == 1
    lines = lines_of(result)
    assert lines["oauth"].startswith("FAIL (") and "uninstalled" in lines["oauth"]
    assert lines["klaviyo"].startswith("FAIL (") and "not checked" in lines["klaviyo"]
