"""Whether Klaviyo answers: probed at start, then now and then while it looks unreachable.

Sends report it too (any answer means reachable; a timeout or refused connection does not).
/readyz shows it beside readiness, never as a reason to be unready. A 401/403 to the probe
halts the relay like the same answer to a send.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from consumer.klaviyo.client import PING_REQUEST
from consumer.klaviyo.outcomes import Fatal, Retryable
from consumer.observability.health import RelayState
from consumer.observability.logging import get_logger
from consumer.pipeline.ports import Klaviyo
from consumer.pipeline.sending import Halt

log = get_logger(__name__)

PROBE_INTERVAL = 5.0


class Reachability:
    """One account's reachability. ``account``: its name in the logs when the relay serves
    several; ``on_change`` then sets the relay's flag from all of theirs."""

    def __init__(
        self,
        klaviyo: Klaviyo,
        state: RelayState,
        halt: Halt,
        *,
        account: str | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._klaviyo = klaviyo
        self._state = state
        self._halt = halt
        self._account = {} if account is None else {"account": account}
        self._on_change = on_change
        self.reachable = False

    async def probe(self) -> None:
        outcome = await self._klaviyo.ping()
        if isinstance(outcome, Fatal):
            self.set(True)  # Klaviyo answered; it refused the key
            self._halt.trigger(outcome, PING_REQUEST)
        else:
            self.set(not (isinstance(outcome, Retryable) and outcome.status is None))

    async def watch(self) -> None:
        """While Klaviyo looks unreachable and nothing is being sent, ask it again now and then."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            if not self.reachable and not self._halt.halted:
                await self.probe()

    def set(self, reachable: bool) -> None:
        if reachable != self.reachable:
            self.reachable = reachable
            log.info("klaviyo reachable" if reachable else "klaviyo unreachable", **self._account)
            if self._on_change is None:
                self._state.klaviyo_reachable = reachable
            else:
                self._on_change()
