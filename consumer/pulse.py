"""A pulse: wakes every task waiting on it now, and only those.

An :class:`asyncio.Event` set and replaced at once. :class:`asyncio.Condition` would do the same
with ``notify_all``, but it must be called with the condition's lock held, which the synchronous
callers here (a permit released, a commit ended, an outage over) cannot take.
"""

from __future__ import annotations

import asyncio


class Pulse:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def wait(self) -> None:
        """Return at the next :meth:`fire`."""
        await self._event.wait()

    def fire(self) -> None:
        """Wake everyone waiting now; a later :meth:`wait` waits for the next one."""
        self._event.set()
        self._event = asyncio.Event()
