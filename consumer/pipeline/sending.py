"""Sending one request until it is settled, and running a :class:`Plan` step by step.

The client already retries inside its budget; a :class:`Retryable` that comes back means the
budget is spent (Klaviyo is down or throttling hard). The pipeline then *holds*: it backs off
(capped exponential, full jitter) and sends the same request again, as long as it takes. A
retryable failure never dead-letters: the relay's lag grows and it catches up when Klaviyo
returns. A :class:`Fatal` answer (401/403) halts the relay: the caller never gets an answer,
so nothing after it is sent and its offset never finishes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

from consumer.errors import Reason
from consumer.klaviyo.client import profile_id_from_lookup
from consumer.klaviyo.outcomes import Accepted, Fatal, Outcome, Permanent, Retryable
from consumer.klaviyo.ratelimit import Permit
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest, Plan
from consumer.klaviyo.retry import RetryPolicy


class Send(Protocol):
    """Sends one request (``permit``: a rate-limit permit already taken for its first attempt)."""

    def __call__(
        self, request: KlaviyoRequest, permit: Permit | None = None, /
    ) -> Awaitable[Outcome]: ...


def metric_name(request: KlaviyoRequest) -> str:
    """The Klaviyo metric name of a Create Event request ("" when the body has none)."""
    try:
        name = request.body["data"]["attributes"]["metric"]["data"]["attributes"]["name"]  # type: ignore[index]
    except (KeyError, TypeError):
        return ""
    return name if isinstance(name, str) else ""


class AccountHalted(Exception):
    """Raised to a caller of a halted account's sender (see :class:`Halt`): its event is
    dead-lettered ``account_halted`` instead of waiting for good."""


class Halt:
    """The stop after a fatal answer; ``hold`` parks a caller for good.

    With ``park`` (one of several accounts, :mod:`consumer.accounts`) ``hold`` raises
    :class:`AccountHalted` instead: the other accounts keep relaying and commits go on, so this
    account's events must leave the in-flight window (dead-lettered for a replay)."""

    def __init__(
        self, on_halt: Callable[[Fatal, KlaviyoRequest], None], *, park: bool = False
    ) -> None:
        self.outcome: Fatal | None = None
        self._on_halt = on_halt
        self._park = park
        self._never: asyncio.Future[None] | None = None

    @property
    def halted(self) -> bool:
        return self.outcome is not None

    def trigger(self, outcome: Fatal, request: KlaviyoRequest) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self._on_halt(outcome, request)

    async def hold(self) -> NoReturn:
        if self._park:
            raise AccountHalted
        if self._never is None:
            self._never = asyncio.get_running_loop().create_future()
        await self._never
        raise AssertionError("unreachable: the halt future is never resolved")


Backoff = Callable[[float, Retryable], Awaitable[None]]


async def _sleep(seconds: float, _after: Retryable) -> None:
    await asyncio.sleep(seconds)


class Sender:
    """Sends a request until Klaviyo accepts or refuses it for good."""

    def __init__(
        self,
        send: Send,
        policy: RetryPolicy,
        halt: Halt,
        *,
        on_reachable: Callable[[bool], None] = lambda _ok: None,
        rng: random.Random | None = None,
        backoff: Backoff = _sleep,
    ) -> None:
        """``backoff(seconds, after)``: how a hold waits before sending again (the client's
        :meth:`~consumer.klaviyo.recovery.Recovery.backoff`: it ends when Klaviyo serves again)."""
        self._send = send
        self._policy = policy
        self._halt = halt
        self._on_reachable = on_reachable
        self._rng = rng or random.Random()
        self._backoff = backoff

    def wrapped(self, wrap: Callable[[Send], Send]) -> Sender:
        """A sender like this one whose sends go through ``wrap`` (e.g. auto's bulk gate)."""
        return Sender(
            wrap(self._send),
            self._policy,
            self._halt,
            on_reachable=self._on_reachable,
            rng=self._rng,
            backoff=self._backoff,
        )

    async def settle(
        self, request: KlaviyoRequest, permit: Permit | None = None
    ) -> Accepted | Permanent:
        """``permit``: taken already for the first attempt (a halted relay never sends it, and
        the place it holds no longer matters)."""
        retry = 0
        while True:
            if self._halt.halted:
                await self._halt.hold()
            outcome = await self._send(request, permit)
            permit = None
            if isinstance(outcome, Accepted | Permanent):
                self._on_reachable(True)
                return outcome
            if isinstance(outcome, Fatal):
                self._on_reachable(True)  # Klaviyo answered; it refused the key
                self._halt.trigger(outcome, request)
                await self._halt.hold()
            assert isinstance(outcome, Retryable)
            # No answer at all (timeout, refused connection) means Klaviyo is unreachable.
            self._on_reachable(outcome.status is not None)
            await self._backoff(self._policy.delay(retry, outcome, self._rng), outcome)
            retry += 1


@dataclass(frozen=True, slots=True)
class StepFailure:
    """A step Klaviyo refused: the whole event is dead-lettered."""

    request: KlaviyoRequest
    outcome: Permanent


class PlanRunner:
    """Runs a plan's steps in order, binding lookup results into later steps.

    ``create_event`` decides what happens to Create Event steps: sent now (realtime) or handed
    to a bulk job (batch). Every other step is sent on its own, in order.
    """

    def __init__(self, sender: Sender) -> None:
        self._sender = sender

    async def run(
        self,
        plan: Plan,
        create_event: Callable[[KlaviyoRequest], Awaitable[StepFailure | None]],
        on_accepted: Callable[[KlaviyoRequest, Accepted], None],
    ) -> StepFailure | None:
        bindings: dict[str, str] = {}
        for step in plan.requests:
            request = resolve(step, bindings)
            if request.endpoint is Endpoint.CREATE_EVENT and not request.binds:
                failure = await create_event(request)
                if failure is not None:
                    return failure
                continue
            outcome = await self._sender.settle(request)
            if isinstance(outcome, Permanent):
                return StepFailure(request, outcome)
            on_accepted(request, outcome)
            if request.binds:
                found = profile_id_from_lookup(outcome.body)
                if found is not None:
                    bindings[request.binds] = found
        return None


def resolve(step: KlaviyoRequest, bindings: dict[str, str]) -> KlaviyoRequest:
    """The request to send for ``step``: bound, or its fallback when a binding is missing."""
    if "{" not in step.path:  # most steps (every Create Event) have no placeholder: skip parsing
        return step
    needs = step.needs()
    if not needs:
        return step
    if all(name in bindings for name in needs):
        return step.bind(bindings)
    if step.fallback is None:
        raise UnboundStep(f"{step.endpoint.value} needs {', '.join(needs)} and has no fallback")
    return step.fallback


class UnboundStep(ValueError):
    """A plan step needs a binding no lookup provided and has no fallback (a handler bug)."""

    reason = Reason.INVALID_EVENT
