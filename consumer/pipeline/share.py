"""This replica's share of the account's Klaviyo quota, derived from the consumer group.

Why partitions: the group already divides the work by partition, and every member knows its
own assignment and (from metadata) how many partitions the subscribed topics have, with no
coordination beyond what Kafka does anyway. A replica's share is its assigned partitions over
all subscribed partitions. Assignments are disjoint, so the shares of the group never add up
past 1, whatever the number of members (a rollout surge, KEDA, a manual scale), and a single
remaining member holds every partition: share 1.0.

Every partition weighs the same, whatever its topic: topics with more partitions were given
them because they carry more traffic, so weighing each topic equally would starve the busy
ones. The load per partition is still uneven (an idle topic, a quiet key range): what a replica
leaves of its share, the others borrow from Klaviyo's ``RateLimit-Remaining`` (each claims its
share of what the account has left, and past its own share only what the others did not use at
their shares' pace; see :mod:`consumer.klaviyo.borrowing`). The share is what a replica is owed,
not all it may send.

During a rebalance the sum must not pass 1 either. With the cooperative protocol a partition is
revoked from its old owner (which drains it, commits, and only then gives it up) before the
next round assigns it to a new one, so the old owner applies its smaller share at revoke, before
returning from the callback, and the new owner its larger share right after its assignment (in
the source thread's loop, with fresh partition counts). A lost partition shrinks the share at
once. A growing share starts with one request whose answer tells how much of the account's
window the previous owner already used (``EndpointBudget.rescale``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError

from consumer.observability.logging import get_logger
from consumer.pipeline.offsets import TopicPartitionKey

log = get_logger(__name__)

METADATA_TIMEOUT_SECONDS = 5.0


def partition_share(
    assigned: Collection[TopicPartitionKey], partitions: Mapping[str, int] | None
) -> float:
    """Assigned partitions over all partitions of the subscribed topics (``partitions``: topic →
    partition count). Nothing is known (``None``): 0, the only share that cannot overshoot."""
    if partitions is None:
        return 0.0
    total = sum(partitions.values())
    mine = sum(1 for topic, _ in assigned if topic in partitions)
    if total <= 0:
        return 0.0
    return min(1.0, mine / total)


class PartitionCounts:
    """The subscribed topics' partition counts, refreshed from metadata at every assignment
    (a topic may have grown). A failed refresh keeps the last counts; until every topic was
    counted once, the share is 0 and :meth:`stale` asks for another try."""

    def __init__(self, topics: Iterable[str]) -> None:
        self._topics = list(topics)
        self._counts: dict[str, int] = {}

    @property
    def known(self) -> Mapping[str, int] | None:
        return self._counts if len(self._counts) == len(self._topics) else None

    @property
    def stale(self) -> bool:
        return self.known is None

    def refresh(self, consumer: Any) -> None:
        """Ask the broker (``consumer.list_topics``, on the source thread: it blocks)."""
        for topic in self._topics:
            try:
                metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_SECONDS)
            except Exception as exc:  # KafkaException; the broker may be moving
                # The others would most likely time out too: ask again later (stale) instead
                # of holding the source thread for a timeout per topic.
                log.warning("topic metadata unavailable", topic=topic, error=str(exc))
                return
            found = metadata.topics.get(topic)
            if found is not None and found.partitions:
                self._counts[topic] = len(found.partitions)
            elif found is None or (found.error is not None and found.error.code() in _ABSENT):
                # Nobody can own a partition of it: it weighs nothing until it appears (the
                # group rebalances then, and this runs again).
                self._counts[topic] = 0


# Topic errors that mean "no partitions for us", not "ask again".
_ABSENT = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.TOPIC_AUTHORIZATION_FAILED})
