"""What waits for this relay, from librdkafka's statistics (every ``statistics.interval.ms``).

The *waiting* events are the consumer lag of the relay's assigned partitions (their end offset
less the group's committed offset: what is still in Kafka plus what the relay holds
unfinished); the *arrivals* the rate their end offsets move at. Auto mode bounds its bulk
requests by both (:mod:`consumer.pipeline.bulkwindow`). The figures are up to one statistics
interval old: a relay that just started (no statistics yet) counts what it holds, and a
backlog drained since the last document still counts for a few seconds (its bound stays
larger meanwhile, never smaller). A paused partition's end offset stands still in them
(librdkafka fetches nothing for it), so the arrival rate is measured only over intervals with
no pause, and kept meanwhile: a relay that starts into a backlog larger than its in-flight
window measures none until it has caught up to the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# librdkafka's "unknown" for offsets and lag is negative (-1, -1001).
_UNKNOWN = 0
_INTERNAL_PARTITION = "-1"  # the UA (unassigned) pseudo-partition of every topic


@dataclass(frozen=True, slots=True)
class Backlog:
    """Events produced to the relay's partitions and not yet finished, and the rate they are
    produced at (events/s)."""

    waiting: int
    arrivals: float = 0.0


class BacklogMeter:
    """Keeps the latest :class:`Backlog` from the statistics documents it is fed."""

    def __init__(self) -> None:
        self._lag = 0
        self._ends: dict[tuple[str, str], int] = {}
        self._at: float | None = None
        self._arrivals = 0.0

    def update(self, stats: dict[str, Any], now: float, *, arrivals: bool = True) -> None:
        """One statistics document (parsed), taken at ``now`` (monotonic seconds).
        ``arrivals``: whether its end offsets tell the arrival rate; not when the partitions
        were paused meanwhile (librdkafka does not fetch a paused partition's end offset: it
        stands still), and the last rate measured stays."""
        lag = 0
        ends: dict[tuple[str, str], int] = {}
        for topic, topic_stats in (stats.get("topics") or {}).items():
            for partition, p in (topic_stats.get("partitions") or {}).items():
                if partition == _INTERNAL_PARTITION or not p.get("desired"):
                    continue
                lag += max(_UNKNOWN, _int(p.get("consumer_lag")))
                end = _int(p.get("hi_offset"))
                if end >= 0:
                    ends[(topic, partition)] = end
        # Arrivals over the partitions seen in both documents (a rebalance moves the others).
        both = ends.keys() & self._ends.keys()
        if arrivals and self._at is not None and now > self._at and both:
            produced = sum(max(0, ends[key] - self._ends[key]) for key in both)
            self._arrivals = produced / (now - self._at)
        self._lag, self._ends, self._at = lag, ends, now

    def backlog(self, holding: int) -> Backlog:
        """The backlog, with at least the ``holding`` events the relay took and has not
        finished (the lag lags; these are known now)."""
        return Backlog(max(self._lag, holding), self._arrivals)


def _int(value: object) -> int:
    return value if isinstance(value, int) else -1
