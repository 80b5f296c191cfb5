"""``python -m tests.integration.faults.stalling_relay``: ``python -m consumer run`` with one
test-only knob, an event loop that stalls during a revocation.

SIGUSR1 arms it: the next revocation starts its drain (its partitions are marked as revoking),
then a blocking call holds the loop for ``FAULTS_STALL_SECONDS`` (what a blocking lookup or a
CPU-bound handler on the loop does to a real relay) while the Kafka thread, which asked the
loop to drain, waits on and reaches its deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

from consumer.cli import cli
from consumer.pipeline.listener import Listener
from consumer.pipeline.offsets import TopicPartitionKey
from consumer.pipeline.source import Positions

STALL_SECONDS = "FAULTS_STALL_SECONDS"


def install(seconds: float) -> None:
    armed = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: armed.set())
    drain = Listener.on_revoked

    async def stalling_on_revoked(self: Listener, partitions: list[TopicPartitionKey]) -> Positions:
        if armed.is_set():
            armed.clear()
            # Runs once the drain below has started and yields to the loop.
            asyncio.get_running_loop().call_soon(time.sleep, seconds)
        return await drain(self, partitions)

    Listener.on_revoked = stalling_on_revoked  # type: ignore[method-assign]


if __name__ == "__main__":
    install(float(os.environ[STALL_SECONDS]))
    cli(["run"], prog_name="klaviyo-relay")
