"""How far a replay has got on one dead-letter partition, stored as the replay group's commit.

A consumer group remembers one offset per partition, but a replay selects (``--reason``,
``--topic``, ``--since``): records it skipped must stay replayable later, records it sent must
never be sent again. So the committed offset is the first record not yet replayed, and the
commit's metadata lists the replayed offsets above it, as ranges relative to it
(``"v1:0-3,7,12-15"``). Kafka keeps up to ``offset.metadata.max.bytes`` (4096 by default) of
metadata; a selection too scattered to fit is refused before anything is published.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

METADATA_VERSION = "v1:"
MAX_METADATA_CHARS = 4000


class ProgressTooScattered(ValueError):
    """The replayed offsets above the committed position do not fit in the commit metadata."""


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    position: int  # every offset below has been replayed (or is gone)
    done: frozenset[int] = frozenset()  # replayed offsets at or above ``position``

    def replayed(self, offset: int) -> bool:
        return offset < self.position or offset in self.done

    def advance(self, replayed: Iterable[int], low: int = 0) -> PartitionProgress:
        """Progress after replaying ``replayed``; offsets below ``low`` (deleted) count as done."""
        done = self.done.union(replayed)
        position = max(self.position, low)
        while position in done:
            position += 1
        return PartitionProgress(position, frozenset(o for o in done if o >= position))

    def metadata(self) -> str:
        """The commit metadata for this progress; raises :class:`ProgressTooScattered`."""
        parts = []
        for first, last in _ranges(sorted(self.done)):
            start = first - self.position
            parts.append(str(start) if first == last else f"{start}-{last - self.position}")
        text = METADATA_VERSION + ",".join(parts)
        if len(text) > MAX_METADATA_CHARS:
            raise ProgressTooScattered(
                f"{len(self.done)} replayed records scattered over {len(parts)} ranges do not fit"
                " in the replay group's commit; replay without --reason/--topic/--since filters"
                " or in narrower --since windows"
            )
        return text

    @classmethod
    def from_commit(cls, offset: int | None, metadata: str | None, low: int) -> PartitionProgress:
        """Progress from the group's commit (``offset`` None or negative: never committed)."""
        if offset is None or offset < 0:
            return cls(low)
        done: set[int] = set()
        if metadata and metadata.startswith(METADATA_VERSION):
            for part in filter(None, metadata[len(METADATA_VERSION) :].split(",")):
                first, _, last = part.partition("-")
                done.update(range(offset + int(first), offset + int(last or first) + 1))
        return cls(offset).advance(done, low)


def _ranges(offsets: list[int]) -> Iterable[tuple[int, int]]:
    """Sorted offsets as inclusive ``(first, last)`` runs."""
    if not offsets:
        return
    first = last = offsets[0]
    for offset in offsets[1:]:
        if offset == last + 1:
            last = offset
            continue
        yield first, last
        first = last = offset
    yield first, last
