"""What the outage and group scenarios share: steady load, the group's lag, the send modes this
relay knows, and the sandbox's outage switch.

- :class:`SteadyProducer`: one producer in a thread at a fixed rate for as long as the scenario
  needs; it counts what the broker acknowledged, so "lost" is measured against events that
  really are in Kafka.
- :class:`LagProbe`: the consumer group's lag (end offsets minus committed offsets, summed over
  every partition), what an operator's dashboard shows.
- :func:`unavailable`: why a send mode cannot run with this relay (``None`` when it can), so a
  mode that is not merged yet is reported as not available instead of failing the suite.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from bench.loadgen import LoadGenerator, producer
from bench.measure import Usage
from bench.scenarios import InstrumentedSandbox
from consumer.settings import SendMode
from dev.harness import GroupOffsets


def unavailable(mode: str) -> str | None:
    if mode in {m.value for m in SendMode}:
        return None
    return f"SEND_MODE={mode} is not known to this relay (modes: {', '.join(SendMode)})"


def set_outage(sandbox: InstrumentedSandbox, down: bool) -> None:
    """Every API request answered 503 (``down``) or none: the sandbox's own fault injection,
    which answers before authentication, quota and store, like an outage in front of Klaviyo."""
    body = json.dumps({"error_rates": {"503": 1.0} if down else {}}).encode()
    request = urllib.request.Request(
        sandbox.base_url + "/_sandbox/faults",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60):
        pass


def tracked(sandbox: InstrumentedSandbox) -> list[tuple[float, float, bool, float]]:
    """``(occurred_at, delay, bulk, after)`` of every accepted password reset
    (``bench.sandbox_proc``; ``bulk``: it came in a Bulk Create Events job; ``after``: seconds
    since its profile's previous reset arrived, -1 for the first)."""
    with urllib.request.urlopen(sandbox.control_url + "/tracked", timeout=60) as response:
        return [(o, d, bool(b), a) for o, d, b, a in json.loads(response.read())]


def realtime(sandbox: InstrumentedSandbox) -> list[tuple[float, float]]:
    """``(arrival, delay)`` of every event accepted on Create Event (``bench.sandbox_proc``)."""
    with urllib.request.urlopen(sandbox.control_url + "/realtime", timeout=60) as response:
        return [(a, d) for a, d in json.loads(response.read())]


def quantile(values: list[float], q: float) -> float | None:
    """The exact quantile (nearest rank below) of ``values``, as ``bench.sandbox_proc`` takes it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def count(value: int | None) -> str:
    """A count for a table cell ("–" when there is none)."""
    return "–" if value is None else f"{value:,}"


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table under a heading; short rows (a mode not available) are padded."""
    lines = [title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for cells in rows:
        padded = [*cells, *[""] * (len(columns) - len(cells))]
        lines.append("| " + " | ".join(padded) + " |")
    return lines


def combined(usages: Iterable[Usage]) -> Usage:
    """CPU summed and the highest peak RSS over several relay processes."""
    usages = list(usages)
    return Usage(round(sum(u.cpu_seconds for u in usages), 2), max(u.peak_rss_mb for u in usages))


class SteadyProducer:
    """Produces ``rate`` events/s from ``gen`` until :meth:`stop`; each event is stamped with
    its produce time (the delay starts when it entered Kafka)."""

    def __init__(self, gen: LoadGenerator, bootstrap: str, rate: float) -> None:
        self._gen = gen
        self._producer = producer(bootstrap)
        self._rate = rate
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.events = 0  # acknowledged by the broker
        self.klaviyo_events = 0  # the Klaviyo events those become
        self.errors: list[Any] = []
        self._thread = threading.Thread(target=self._run, name="steady-producer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        began, sent = time.monotonic(), 0
        while not self._stop.is_set():
            # One second's worth at a time, paced event by event within it.
            for event in self._gen.events(max(1, round(self._rate))):
                # poll() returns as soon as it served a delivery report: wait out the rest.
                while (wait := began + sent / self._rate - time.monotonic()) > 0:
                    self._producer.poll(wait)
                if self._stop.is_set():
                    break
                self._produce(event.topic, event.key, event.value, event.klaviyo_events)
                sent += 1
            self._producer.poll(0)

    def _produce(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        klaviyo_events: int,
        *,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        acked: Callable[[], None] | None = None,
    ) -> None:
        """Produce one event; ``acked`` runs (under the lock) once the broker acknowledged it."""

        def on_delivery(err: Any, _msg: Any) -> None:
            with self._lock:
                if err is not None:
                    self.errors.append(err)
                else:
                    self.events += 1
                    self.klaviyo_events += klaviyo_events
                    if acked is not None:
                        acked()

        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:
                self._producer.poll(0.1)

    def stop(self) -> None:
        """Stop producing and wait for the broker's acknowledgements (once; later calls
        return at once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(60)
        left = self._producer.flush(120)
        if left or self.errors:
            raise RuntimeError(f"produce failed: {left} unacknowledged, errors {self.errors[:3]}")


class LagProbe:
    """The group's lag, summed over ``topics``' partitions."""

    def __init__(self, bootstrap: str, group: str, topics: Iterable[str]) -> None:
        self._offsets = GroupOffsets(bootstrap, group)
        self._topics = list(topics)

    def lag(self) -> int:
        return sum(self.by_topic().values())

    def by_topic(self) -> dict[str, int]:
        """The lag of each topic (summed over its partitions)."""
        ends = self._offsets.ends(self._topics)
        committed = self._offsets.committed(self._topics)
        lags = dict.fromkeys(self._topics, 0)
        # Every run's group starts with committed offsets (Bench.new_group): none is missing.
        for tp, end in ends.items():
            lags[tp[0]] += max(0, end - committed[tp])
        return lags

    def close(self) -> None:
        self._offsets.close()

    def __enter__(self) -> LagProbe:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
