"""Several Klaviyo accounts behind the one :class:`~consumer.pipeline.delivery.Delivery` the
stages talk to.

Each account has its own stack (:class:`AccountStack`): its client (credentials or OAuth
tokens, its own rate limiter and quota), its own halt and reachability, and its own delivery
(realtime, batch or auto, with its own bulk jobs: one bulk request goes to one account). The
router picks an event's account (:func:`consumer.accounts.routing.route`) and hands the event
to that account's delivery.

Isolation: an account's 429s and outage are paced by its own limiter and retries, so other
accounts' requests never wait behind them in a limiter. A halted account (its key or grant
refused) parks its events: those in flight and those that come later are dead-lettered
``account_halted`` (nothing more is sent for it) while the other accounts go on, and their
offsets become committable once the dead letters are acknowledged, like any other dead letter.
The record is written as it came (headers and topic), so a ``dlq replay`` after the key is
fixed routes it back to the same account.

Each account has its own in-flight window inside the shared MAX_IN_FLIGHT (see
:mod:`consumer.accounts.window`): an account whose events wait pauses only its partitions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from consumer.accounts.config import Accounts
from consumer.accounts.routing import header_value, route
from consumer.klaviyo.requests import Plan
from consumer.observability.logging import get_logger
from consumer.pipeline.delivery.base import Delivery, Reject
from consumer.pipeline.dispatch import Lane
from consumer.pipeline.failure import account_halted, unknown_account
from consumer.pipeline.inflight import Work
from consumer.pipeline.ports import Klaviyo
from consumer.pipeline.reachability import Reachability
from consumer.pipeline.sending import AccountHalted, Halt, StepFailure

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class AccountStack:
    """Everything one account sends with."""

    name: str
    klaviyo: Klaviyo
    halt: Halt
    reachability: Reachability
    delivery: Delivery


class AccountRouter:
    """The :class:`Delivery` of a relay serving several accounts (see the module)."""

    def __init__(
        self, accounts: Accounts, stacks: Mapping[str, AccountStack], reject: Reject
    ) -> None:
        self._accounts = accounts
        self._stacks = dict(stacks)
        self._reject = reject

    # The bulk jobs' pacing counts every event handed to a lane: the window they fill is shared,
    # so each account's delivery hears of all of them (a job cannot grow while none is left).

    def submitted(self) -> None:
        for stack in self._stacks.values():
            stack.delivery.submitted()

    def processed(self) -> None:
        for stack in self._stacks.values():
            stack.delivery.processed()

    def hurry(self) -> None:
        for stack in self._stacks.values():
            stack.delivery.hurry()

    def relax(self) -> None:
        for stack in self._stacks.values():
            stack.delivery.relax()

    async def deliver(self, lane: Lane[Work], work: Work, plan: Plan) -> StepFailure | None:
        record = work.record
        name = route(self._accounts, record.topic, record.headers)
        stack = self._stacks.get(name) if name is not None else None
        if stack is None:
            named = header_value(record.headers, self._accounts.header)
            self._reject(work, unknown_account(datetime.now(UTC), named))
            return None
        work.account = stack.name
        if stack.halt.halted:
            self._reject(work, account_halted(datetime.now(UTC)))
            return None
        try:
            return await stack.delivery.deliver(lane, work, plan)
        except AccountHalted:
            # Its key was refused while this event was on its way (a step may have been
            # accepted already: the replay sends the whole event again, as any replay does).
            self._reject(work, account_halted(datetime.now(UTC)))
            return None


async def probe_all(stacks: Mapping[str, AccountStack]) -> None:
    """Probe every account at start, together (one slow account does not delay the others')."""
    await asyncio.gather(*(stack.reachability.probe() for stack in stacks.values()))
