"""Running the sandbox on a real socket, for tests (``running_sandbox``) and the CLI."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from klaviyo_sandbox.app import SANDBOX_KEY, Sandbox, SandboxOptions, create_app
from klaviyo_sandbox.store import SandboxState

# Held requests are cancelled on shutdown, so there is nothing worth waiting long for.
_SHUTDOWN_SECONDS = 2.0


@dataclass
class RunningSandbox:
    base_url: str
    port: int
    sandbox: Sandbox

    @property
    def state(self) -> SandboxState:
        """The in-memory store: ``events``, ``dropped``, ``profiles``."""
        return self.sandbox.state


@asynccontextmanager
async def running_sandbox(
    options: SandboxOptions | None = None,
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    access_log: bool = False,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[RunningSandbox]:
    """Serve a sandbox until the block ends; ``port=0`` picks a free port."""
    app = create_app(options or SandboxOptions(), clock=clock)
    runner = web.AppRunner(
        app,
        # A client that gives up cancels its request here too, as it would at Klaviyo.
        handler_cancellation=True,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
        shutdown_timeout=_SHUTDOWN_SECONDS,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    try:
        yield RunningSandbox(f"http://{host}:{bound}", bound, app[SANDBOX_KEY])
    finally:
        await runner.cleanup()
