"""Helpers shared by the sandbox tests (no tests here): a running sandbox with an HTTP client,
and request bodies built by hand from Klaviyo's published request schemas."""

from __future__ import annotations

import copy
import gzip
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from klaviyo_sandbox import RunningSandbox, SandboxOptions, running_sandbox

KEY = "pk_sandbox"
REVISION = "2026-07-15"
HEADERS = {
    "Authorization": f"Klaviyo-API-Key {KEY}",
    "revision": REVISION,
    "Content-Type": "application/vnd.api+json",
    "Accept": "application/vnd.api+json",
}
BULK_BASE = "/data/attributes/events-bulk-create/data"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.raw)

    @property
    def errors(self) -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = self.json["errors"]
        return errors

    @property
    def pointers(self) -> list[str]:
        return [e["source"].get("pointer") for e in self.errors]


class Api:
    """A thin client: Klaviyo's headers by default, any of them overridable or removable."""

    def __init__(self, session: aiohttp.ClientSession, sandbox: RunningSandbox) -> None:
        self.session = session
        self.sandbox = sandbox
        self.base_url = sandbox.base_url

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str | None] | None = None,
        raw: bytes | None = None,
        compress: bool = False,
        give_up_after: float = 30.0,
    ) -> Reply:
        sent: dict[str, str] = dict(HEADERS)
        for name, value in (headers or {}).items():
            if value is None:
                sent.pop(name, None)
            else:
                sent[name] = value
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        if compress and data is not None:
            data = gzip.compress(data)
            sent["Content-Encoding"] = "gzip"
        async with self.session.request(
            method,
            self.base_url + path,
            data=data,
            headers=sent,
            timeout=aiohttp.ClientTimeout(total=give_up_after),
        ) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    async def event(self, body: dict[str, Any], **kwargs: Any) -> Reply:
        return await self.call("POST", "/api/events", body, **kwargs)

    async def inspect(self, what: str) -> Any:
        async with self.session.get(f"{self.base_url}/_sandbox/{what}") as response:
            assert response.status == 200, await response.text()
            return orjson.loads(await response.read())

    async def faults(self, change: dict[str, Any]) -> tuple[int, Any]:
        async with self.session.post(
            f"{self.base_url}/_sandbox/faults", data=orjson.dumps(change)
        ) as response:
            return response.status, orjson.loads(await response.read())


@asynccontextmanager
async def sandbox_api(options: SandboxOptions | None = None, **server: Any) -> AsyncIterator[Api]:
    async with (
        running_sandbox(options or SandboxOptions(), **server) as sb,
        aiohttp.ClientSession() as session,
    ):
        yield Api(session, sb)


def profile_data(**attributes: Any) -> dict[str, Any]:
    profile_id = attributes.pop("id", None)
    data: dict[str, Any] = {"type": "profile", "attributes": attributes}
    if profile_id is not None:
        data["id"] = profile_id
    return data


def event_attributes(
    metric: str = "Placed Order",
    unique_id: str | None = "evt-1",
    time: str | None = "2023-10-15T00:00:00Z",
    properties: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "properties": {"OrderId": "1234"} if properties is None else properties,
        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
        **extra,
    }
    if unique_id is not None:
        attrs["unique_id"] = unique_id
    if time is not None:
        attrs["time"] = time
    return attrs


def event_body(profile: dict[str, Any] | None = None, **event: Any) -> dict[str, Any]:
    """A Create Event body (schema ``create_event``): profile given as its ``data`` member."""
    attrs = event_attributes(**event)
    attrs["profile"] = {"data": profile or profile_data(email="john.smith@shopmail.io")}
    return {"data": {"type": "event", "attributes": attrs}}


def bulk_body(entries: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> dict[str, Any]:
    """A Bulk Create Events body: (profile data, [event attributes]) per profile."""
    return {
        "data": {
            "type": "event-bulk-create-job",
            "attributes": {
                "events-bulk-create": {
                    "data": [
                        {
                            "type": "event-bulk-create",
                            "attributes": {
                                "profile": {"data": profile},
                                "events": {
                                    "data": [{"type": "event", "attributes": e} for e in events]
                                },
                            },
                        }
                        for profile, events in entries
                    ]
                }
            },
        }
    }


def import_body(**attributes: Any) -> dict[str, Any]:
    return {"data": profile_data(**attributes)}


def patch_body(profile_id: str, **attributes: Any) -> dict[str, Any]:
    return {"data": {"type": "profile", "id": profile_id, "attributes": attributes}}


def mutated(body: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    out = copy.deepcopy(body)
    change(out)
    return out


class FakeClock:
    """Seconds for the sandbox's rate-limit windows, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
