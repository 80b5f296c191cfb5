"""The relay's I/O as the relay sees it: the Kafka source, Klaviyo, the dead-letter writer.

The relay is given these (production ones by default), so its core (revoke, halt, drain,
ordering) runs in-process against fakes in tests (``tests/fixtures/fakes.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol

from consumer.klaviyo.client import KlaviyoClient
from consumer.klaviyo.outcomes import Outcome, Retryable
from consumer.klaviyo.ratelimit import Permit
from consumer.klaviyo.requests import Endpoint, KlaviyoRequest
from consumer.pipeline.backlog import Backlog
from consumer.pipeline.deadletter import DeadLetterProducer
from consumer.pipeline.failure import Failure
from consumer.pipeline.offsets import TopicPartitionKey
from consumer.pipeline.records import SourceRecord
from consumer.pipeline.source import KafkaSource, Positions, SourceListener
from consumer.priorities import DEFAULT_RANK
from consumer.settings import Settings


class Source(Protocol):
    """Hands records to a :class:`SourceListener` and commits what it is told (KafkaSource)."""

    def start(self) -> None: ...

    def release(self, count: int) -> None: ...

    def crowd(self, partitions: frozenset[TopicPartitionKey]) -> None: ...

    def hold(self, *, discard: bool) -> None: ...

    @property
    def outstanding(self) -> int: ...

    @property
    def saturated(self) -> bool: ...

    @property
    def backlog(self) -> Backlog: ...

    async def commit(self, positions: Positions) -> Positions: ...

    async def close(self) -> None: ...


class OpenSource(Protocol):
    def __call__(
        self,
        settings: Settings,
        topics: list[str],
        listener: SourceListener,
        loop: asyncio.AbstractEventLoop,
        /,
        *,
        on_client_error: Callable[[str], None],
    ) -> Source: ...


class Klaviyo(Protocol):
    """Sends requests and answers the reachability probe (KlaviyoClient); ``async with``."""

    async def __aenter__(self) -> Klaviyo: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def send(self, request: KlaviyoRequest, permit: Permit | None = None) -> Outcome:
        """``permit``: one ``try_acquire`` gave, used by the first attempt."""
        ...

    def try_acquire(
        self, endpoint: Endpoint, priority: int = DEFAULT_RANK, *, beyond_reserve: bool = False
    ) -> Permit | None:
        """A rate-limit permit for ``endpoint`` if it has room right now, else None
        (``priority``: the rank of the request it is for; ``beyond_reserve``: only room that
        leaves the reserve its windows keep for fresh events, see ``RateLimiter``)."""
        ...

    def release(self, permit: Permit) -> None:
        """Hand back a permit ``try_acquire`` gave that no request used."""
        ...

    async def ping(self) -> Outcome: ...

    async def backoff(self, seconds: float, after: Retryable) -> None:
        """Wait ``seconds`` before sending again a request that ended in ``after``; less once
        Klaviyo serves again (``consumer.klaviyo.recovery``)."""
        ...

    def set_share(self, share: float) -> None:
        """Use this share of the account's quota from now on (the group moved it)."""
        ...


class DeadLetterWriter(Protocol):
    """Writes a dead letter; ``send`` returns once the broker acknowledged it."""

    async def send(self, record: SourceRecord, failure: Failure) -> str:
        """Returns the reason written (``too_large`` when the record did not fit)."""
        ...

    async def close(self, wait_seconds: float) -> int:
        """Returns how many writes were left unconfirmed."""
        ...


OpenDeadLetters = Callable[[Settings, asyncio.AbstractEventLoop], Awaitable[DeadLetterWriter]]


def kafka_source(
    settings: Settings,
    topics: list[str],
    listener: SourceListener,
    loop: asyncio.AbstractEventLoop,
    *,
    on_client_error: Callable[[str], None],
) -> Source:
    return KafkaSource(settings, topics, listener, loop, on_client_error=on_client_error)


OpenKlaviyo = Callable[[Settings, str], Klaviyo]


def klaviyo_client(settings: Settings, account: str = "default") -> Klaviyo:
    """The client of one account (``account``: its name in the metrics)."""
    return KlaviyoClient(settings, account=account)


async def dead_letter_producer(
    settings: Settings, loop: asyncio.AbstractEventLoop
) -> DeadLetterWriter:
    """The producer, once its topic was checked (raises ``DeadLetterTopicUnusable``)."""
    return await DeadLetterProducer.open(settings, loop)
