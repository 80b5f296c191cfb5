"""Where rotated refresh tokens live: a 0600 file replaced atomically, or one key of a
Kubernetes Secret (against a small fake API server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import base64
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from consumer.klaviyo.token_store import (
    SECRET_KEY,
    FileTokenStore,
    KubernetesSecretStore,
    TokenStoreError,
)

SECRET_PATH = "/api/v1/namespaces/shop/secrets/relay-oauth-token"


async def test_file_store_round_trip(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path / "token")
    assert await store.load() is None
    await store.save("rt_1")
    await store.save("rt_2")
    assert await store.load() == "rt_2"
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o600
    left = await asyncio.to_thread(lambda: [p.name for p in tmp_path.iterdir()])
    assert left == ["token"]  # no temporary file left over


async def test_file_store_errors_name_the_file_not_the_token(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path / "missing-folder" / "token")
    with pytest.raises(TokenStoreError) as caught:
        await store.save("rt_secret")
    assert "missing-folder" in str(caught.value) and "rt_secret" not in str(caught.value)


@dataclass
class FakeApiServer:
    url: str = ""
    data: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    allowed_token: str = "sa-token"


FAKE = web.AppKey("fake", FakeApiServer)


@pytest.fixture
async def api_server() -> AsyncIterator[FakeApiServer]:
    state = FakeApiServer()

    async def secret(request: web.Request) -> web.Response:
        body = await request.read()
        state.calls.append(
            (request.method, request.path, dict(request.headers), orjson.loads(body or b"null"))
        )
        if request.headers.get("Authorization") != f"Bearer {state.allowed_token}":
            return web.json_response({"kind": "Status", "code": 403}, status=403)
        if request.method == "PATCH":
            patch = orjson.loads(body)
            state.data.update(patch["data"])
        return web.json_response({"kind": "Secret", "data": state.data})

    app = web.Application()
    app[FAKE] = state
    app.router.add_route("*", SECRET_PATH, secret)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state.url = str(server.make_url("")).rstrip("/")
    yield state
    await server.close()


def store_for(server: FakeApiServer, token: str = "sa-token") -> KubernetesSecretStore:
    return KubernetesSecretStore(
        "relay-oauth-token",
        namespace="shop",
        api_url=server.url,
        bearer_token=token,
        ssl_context=False,
    )


async def test_kubernetes_store_reads_and_merge_patches_one_key(
    api_server: FakeApiServer,
) -> None:
    store = store_for(api_server)
    assert await store.load() is None
    await store.save("rt_2")
    assert api_server.data == {SECRET_KEY: base64.b64encode(b"rt_2").decode()}
    assert await store.load() == "rt_2"
    method, path, headers, body = api_server.calls[1]
    assert (method, path) == ("PATCH", SECRET_PATH)
    assert headers["Content-Type"] == "application/merge-patch+json"
    assert body == {"data": {SECRET_KEY: base64.b64encode(b"rt_2").decode()}}


async def test_kubernetes_store_refused_says_where_not_what(api_server: FakeApiServer) -> None:
    store = store_for(api_server, token="wrong")
    with pytest.raises(TokenStoreError) as caught:
        await store.save("rt_secret")
    assert "shop/relay-oauth-token" in str(caught.value) and "403" in str(caught.value)
    assert "rt_secret" not in str(caught.value)
