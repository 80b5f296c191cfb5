"""Per-partition lag and committed offset from librdkafka's statistics callback.

librdkafka emits a JSON document every ``statistics.interval.ms``; the consumer wires
``stats_cb=record_kafka_stats``. Only partitions this consumer is assigned (``desired``) are
reported, and a partition that stops being reported (revoked in a rebalance) loses its
series, so a departed partition never shows frozen lag.
"""

from __future__ import annotations

from typing import Any

import orjson

from consumer.observability.metrics import COMMITTED_OFFSET, CONSUMER_LAG

# librdkafka's "unknown" values: -1 for lag, OFFSET_INVALID (-1001) for offsets.
_UNKNOWN_LAG = -1
_INTERNAL_PARTITION = "-1"  # the UA (unassigned) pseudo-partition of every topic

# Series set per client instance ("name" in the document), so two consumers in one process
# (the relay and a dead-letter replay) never remove each other's partitions.
_reported: dict[str, set[tuple[str, str]]] = {}


def _assigned_partitions(stats: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for topic, topic_stats in (stats.get("topics") or {}).items():
        for partition, p in (topic_stats.get("partitions") or {}).items():
            if partition != _INTERNAL_PARTITION and p.get("desired"):
                found[(topic, str(partition))] = p
    return found


def record_kafka_stats(stats_json: str) -> dict[str, Any] | None:
    """Update CONSUMER_LAG and COMMITTED_OFFSET from one librdkafka statistics document;
    returns the consumer's document (parsed), None for anything else."""
    try:
        stats = orjson.loads(stats_json)
    except orjson.JSONDecodeError:
        return None  # a malformed document is librdkafka's bug, not a reason to crash
    if not isinstance(stats, dict) or stats.get("type", "consumer") != "consumer":
        return None  # producers report partitions too, but have no lag
    current = _assigned_partitions(stats)
    reported = _reported.setdefault(str(stats.get("name", "")), set())
    for topic, partition in reported - current.keys():
        CONSUMER_LAG.remove(topic, partition)
        COMMITTED_OFFSET.remove(topic, partition)
    reported.clear()
    for (topic, partition), p in current.items():
        lag = p.get("consumer_lag", _UNKNOWN_LAG)
        committed = p.get("committed_offset", -1001)
        # Before the first commit librdkafka knows no committed offset; say nothing rather
        # than a misleading 0 (the lag alert would then see a sudden jump).
        if isinstance(lag, int) and lag >= 0:
            CONSUMER_LAG.labels(topic, partition).set(lag)
        if isinstance(committed, int) and committed >= 0:
            COMMITTED_OFFSET.labels(topic, partition).set(committed)
        reported.add((topic, partition))
    return stats
