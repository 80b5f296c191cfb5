"""Per-key lanes: one key's items are processed one after another in submission order, while
different keys run concurrently.

Submission order is offset order (the source hands a partition's records over in order, and a
key lives on one partition of a topic), so a lane is exactly Kafka's per-key ordering promise.
There is no concurrency limit here: every item in a lane is an event taken from Kafka and not
finished, and that number is bounded where it is cheapest, at the source (which pauses its
partitions at ``max_in_flight``).

A lane may outlive its queue: in batch mode an event is handed to an open Bulk Create Events
job and the lane moves on, leaving a *ticket* (the job's settlement future). The next event of
the key may join the same open job, but must wait for the ticket before going into another one,
or a later event could be accepted before an earlier one. A lane with a pending ticket is kept
until the ticket settles, then forgotten.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from consumer.observability.logging import get_logger

log = get_logger(__name__)

Item = TypeVar("Item")


class Lane(Generic[Item]):
    """The items of one key waiting to be processed, and the ticket of its latest bulk job."""

    __slots__ = ("key", "last_ticket", "queue", "task")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.queue: deque[Item] = deque()
        self.task: asyncio.Task[None] | None = None
        self.last_ticket: asyncio.Future[None] | None = None

    async def wait_for_ticket_unless(self, ticket: asyncio.Future[None]) -> bool:
        """Wait for this lane's previous job unless it is ``ticket`` itself.

        Returns True when it waited (the caller must look again at which job is open).
        """
        previous = self.last_ticket
        if previous is None or previous is ticket or previous.done():
            return False
        await asyncio.shield(previous)
        return True


Process = Callable[[Lane[Item], Item], Awaitable[None]]


class Dispatcher(Generic[Item]):
    """Runs ``process(lane, item)`` for every submitted item, per key in order."""

    def __init__(self, process: Process[Item], on_crash: Callable[[BaseException], None]) -> None:
        self._process = process
        self._on_crash = on_crash
        self._lanes: dict[Hashable, Lane[Item]] = {}
        self._unkeyed = 0

    def submit(self, key: bytes | None, item: Item) -> None:
        lane_key: Hashable = key
        if key is None:
            # No key, no ordering promise: every such record gets a lane of its own.
            self._unkeyed += 1
            lane_key = ("unkeyed", self._unkeyed)
        lane = self._lanes.get(lane_key)
        if lane is None:
            lane = self._lanes[lane_key] = Lane(lane_key)
        lane.queue.append(item)
        if lane.task is None:
            lane.task = asyncio.create_task(self._run(lane), name="lane")

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    async def _run(self, lane: Lane[Item]) -> None:
        try:
            while lane.queue:
                await self._process(lane, lane.queue.popleft())
        except Exception as exc:  # a bug: the lane cannot go on without breaking its order
            self._on_crash(exc)
            return
        finally:
            lane.task = None
        ticket = lane.last_ticket
        if ticket is not None and not ticket.done():
            ticket.add_done_callback(lambda _t: self._forget(lane))
        else:
            self._forget(lane)

    def _forget(self, lane: Lane[Item]) -> None:
        idle = lane.task is None and not lane.queue
        settled = lane.last_ticket is None or lane.last_ticket.done()
        if idle and settled and self._lanes.get(lane.key) is lane:
            del self._lanes[lane.key]

    async def cancel(self) -> None:
        """Stop every lane (shutdown after the drain deadline)."""
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._lanes.clear()
