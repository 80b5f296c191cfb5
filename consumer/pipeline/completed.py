"""The finished offsets above a committed position, carried in the commit's metadata.

The committed offset is a contiguous watermark (see :mod:`consumer.pipeline.offsets`): one event
retrying holds it while later events of the partition are accepted. A crash then replays all of
them, and each resend takes Klaviyo quota. So every commit also says which offsets at or above
its position are finished already (the idea of Confluent's Parallel Consumer), and whoever owns
the partition next skips them.

Format, version 1: ``fin1:<span>:<bitmaps>``. ``span`` is how many offsets from the committed
position on the writer had taken; ``bitmaps`` is base64url (unpadded) of zlib of two bitmaps of
``ceil(span/8)`` bytes each: bit ``i`` (least significant first in byte ``i // 8``) of the first
is set when ``position + i`` is finished, of the second when it was started and is unfinished
(some of its requests may be at Klaviyo: sent again, it is a possible resend, counted). Offsets
at or past ``position + span`` are unknown. The prefix names the version, so the format can
change: a reader ignores (with a warning) what it does not understand, and then merely resends;
it never skips on a guess.

Kafka refuses a commit whose metadata is longer than ``offset.metadata.max.bytes`` (4096 by
default). A map that does not fit is cut to its longest prefix that does: offsets beyond the
prefix become unknown again (resent after a crash), the ones nearest the watermark (the next to
be replayed) stay.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from dataclasses import dataclass

VERSION = "fin1"
# Below the broker's default offset.metadata.max.bytes (4096), with room to spare.
MAX_METADATA_CHARS = 4000
# 2^20 offsets: far beyond what the pending bound lets a partition hold, and a bound on what a
# reader decompresses (2 × 128 KiB) whatever the metadata says.
MAX_SPAN = 1 << 20


class MalformedMap(ValueError):
    """Commit metadata that is not a map this reader understands."""


@dataclass(frozen=True, slots=True)
class CompletedMap:
    """What an earlier owner of a partition recorded at ``position``."""

    position: int
    span: int  # offsets position .. position + span - 1 were taken by the writer
    done: bytes  # bit i: position + i is finished
    begun: bytes  # bit i: position + i was started and is unfinished

    @property
    def end(self) -> int:
        """The first offset the writer had not taken."""
        return self.position + self.span

    def finished(self, offset: int) -> bool:
        return self._bit(self.done, offset)

    def started(self, offset: int) -> bool:
        """Started and not finished."""
        return self._bit(self.begun, offset)

    def above(self, offset: int) -> tuple[int, int]:
        """The finished and the started offsets past ``offset`` as bitmap integers (bit i:
        position + i)."""
        if offset + 1 >= self.end:
            return 0, 0
        keep = max(0, offset + 1 - self.position)
        done, begun = (int.from_bytes(b, "little") >> keep << keep for b in (self.done, self.begun))
        return done, begun

    def _bit(self, bits: bytes, offset: int) -> bool:
        i = offset - self.position
        return 0 <= i < self.span and bool(bits[i >> 3] >> (i & 7) & 1)


def encode(span: int, finished: int, started: int = 0) -> str:
    """The metadata for ``finished`` and ``started`` (bitmaps, bit i: ``position + i``) over
    ``span`` taken offsets: the longest prefix that fits in :data:`MAX_METADATA_CHARS`; ``""``
    when there is nothing."""
    span = min(span, MAX_SPAN)
    if span == 0:
        return ""
    text = _encode(span, finished, started)
    if len(text) <= MAX_METADATA_CHARS:
        return text
    # Too scattered to fit: commit the longest prefix that does (binary search; compressed size
    # grows with the prefix nearly monotonically, and whatever it lands on was checked to fit).
    low, high = 0, span
    while low < high:
        middle = (low + high + 1) // 2
        if len(_encode(middle, finished, started)) <= MAX_METADATA_CHARS:
            low = middle
        else:
            high = middle - 1
    return _encode(low, finished, started) if low else ""


def _encode(span: int, finished: int, started: int) -> str:
    size = (span + 7) // 8
    mask = (1 << span) - 1
    raw = (finished & mask).to_bytes(size, "little") + (started & mask).to_bytes(size, "little")
    payload = base64.urlsafe_b64encode(zlib.compress(raw, 9)).rstrip(b"=").decode("ascii")
    return f"{VERSION}:{span}:{payload}"


def decode(position: int, metadata: str) -> CompletedMap | None:
    """The map committed at ``position``; None when the metadata is empty. Raises
    :class:`MalformedMap` for anything else that is not a version-1 map."""
    if not metadata:
        return None
    version, _, rest = metadata.partition(":")
    if version != VERSION:
        raise MalformedMap(f"unknown commit metadata version {version[:16]!r}")
    span_text, sep, payload = rest.partition(":")
    if not sep or not span_text.isdigit() or not 0 < int(span_text) <= MAX_SPAN:
        raise MalformedMap("commit metadata: bad span")
    span = int(span_text)
    size = (span + 7) // 8
    try:
        compressed = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(compressed, 2 * size)
    except (binascii.Error, ValueError, zlib.error):
        raise MalformedMap("commit metadata: bad bitmap") from None
    if len(raw) != 2 * size or inflater.unconsumed_tail or not inflater.eof:
        raise MalformedMap("commit metadata: bitmaps do not match their span")
    return CompletedMap(position, span, raw[:size], raw[size:])
