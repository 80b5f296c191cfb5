"""The schema registry client: built from the settings, and called off the event loop.

confluent_kafka's client is synchronous (httpx, ``time.sleep`` between retries) and, left to its
defaults, waits for an answer forever: called on the event loop, one registry that accepts a
connection and never answers froze the relay for good (no health answers, no commits, no
SIGTERM). So the client always gets a timeout and a few short retries, and the relay calls it
only through :func:`in_daemon_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

from confluent_kafka.schema_registry import SchemaRegistryClient

from consumer.settings import Settings

__all__ = ["client_for", "in_daemon_thread", "lookup_deadline", "registry_client"]

T = TypeVar("T")

# The client's own retries (5xx, 408, 429, transport errors) are for blips; a longer outage is
# waited out by the caller, asynchronously.
RETRIES = 2
RETRY_WAIT_MS = 200
RETRY_MAX_WAIT_MS = 1000


def client_config(settings: Settings) -> dict[str, Any]:
    """The client's configuration, credentials included (never log it)."""
    assert settings.schema_registry_url is not None
    config: dict[str, Any] = {
        "url": settings.schema_registry_url,
        "timeout": settings.schema_registry_timeout_seconds,
        "max.retries": RETRIES,
        "retries.wait.ms": RETRY_WAIT_MS,
        "retries.max.wait.ms": RETRY_MAX_WAIT_MS,
    }
    if settings.schema_registry_basic_auth_user_info is not None:
        config["basic.auth.user.info"] = (
            settings.schema_registry_basic_auth_user_info.get_secret_value()
        )
    if settings.schema_registry_bearer_token is not None:
        config["bearer.auth.credentials.source"] = "STATIC_TOKEN"
        config["bearer.auth.token"] = settings.schema_registry_bearer_token.get_secret_value()
        # The client insists on one; Confluent Cloud needs it, other registries ignore it.
        config["bearer.auth.logical.cluster"] = settings.schema_registry_logical_cluster
    return config


def registry_client(settings: Settings) -> SchemaRegistryClient | None:
    """The process's client for the configured registry; None without one."""
    if not settings.schema_registry_url:
        return None
    return client_for(tuple(sorted(client_config(settings).items())))


@lru_cache(maxsize=4)
def client_for(config: tuple[tuple[str, Any], ...]) -> SchemaRegistryClient:
    """One client per configuration and process (``mock://`` clients keep their state in it)."""
    return SchemaRegistryClient.new_client(dict(config))


def lookup_deadline(settings: Settings) -> float:
    """How long an event waits on one lookup before the registry counts as unavailable: every
    attempt of one request timing out, plus the waits between. A lookup that takes longer (a
    schema with references) goes on in its thread; the event's next try waits on it again."""
    return (RETRIES + 1) * settings.schema_registry_timeout_seconds + RETRIES * (
        RETRY_MAX_WAIT_MS / 1000
    )


def in_daemon_thread(call: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run ``call`` in a thread of its own; its result or exception settles the returned future.

    A daemon thread, not the loop's executor: the executor's threads are joined when the loop
    and the interpreter shut down, so a request stuck past its timeout would hold up the exit.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = call()
        except Exception as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
