"""The finished offsets above a committed position, carried in the commit's metadata.

The committed offset is a contiguous watermark (see :mod:`consumer.pipeline.offsets`): one event
retrying holds it while later events of the partition are accepted. A crash then replays all of
them, and each resend takes Klaviyo quota. So every commit also says which offsets at or above
its position are finished already (the idea of Confluent's Parallel Consumer), and whoever owns
the partition next skips them.

Format, version 1: ``fin1:<span>:<bitmap>``. ``span`` is how many offsets from the committed
position on the writer had taken; ``bitmap`` is base64url (unpadded) of zlib of ``ceil(span/8)``
bytes, bit ``i`` (least significant first in byte ``i // 8``) set when ``position + i`` is
finished. Offsets at or past ``position + span`` are unknown. The prefix names the version, so
the format can change: a reader ignores (with a warning) what it does not understand, and then
merely resends; it never skips on a guess.

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
# reader decompresses (128 KiB) whatever the metadata says.
MAX_SPAN = 1 << 20


class MalformedMap(ValueError):
    """Commit metadata that is not a map this reader understands."""


@dataclass(frozen=True, slots=True)
class CompletedMap:
    """What an earlier owner of a partition recorded at ``position``."""

    position: int
    span: int  # offsets position .. position + span - 1 were taken by the writer
    bits: bytes  # bit i: position + i is finished

    @property
    def end(self) -> int:
        """The first offset the writer had not taken."""
        return self.position + self.span

    def finished(self, offset: int) -> bool:
        i = offset - self.position
        return 0 <= i < self.span and bool(self.bits[i >> 3] >> (i & 7) & 1)

    def taken(self, offset: int) -> bool:
        return self.position <= offset < self.end

    def above(self, offset: int) -> int:
        """The finished offsets past ``offset`` as a bitmap integer (bit i: position + i)."""
        if offset + 1 >= self.end:
            return 0
        bits = int.from_bytes(self.bits, "little")
        keep = max(0, offset + 1 - self.position)
        return bits >> keep << keep


def encode(span: int, bits: int) -> str:
    """The metadata for ``bits`` (bit i: ``position + i`` finished) over ``span`` taken offsets:
    the longest prefix that fits in :data:`MAX_METADATA_CHARS`; ``""`` when there is nothing."""
    span = min(span, MAX_SPAN)
    bits &= (1 << span) - 1
    if span == 0:
        return ""
    text = _encode(span, bits)
    if len(text) <= MAX_METADATA_CHARS:
        return text
    # Too scattered to fit: commit the longest prefix that does (binary search; compressed size
    # grows with the prefix nearly monotonically, and whatever it lands on was checked to fit).
    low, high = 0, span
    while low < high:
        middle = (low + high + 1) // 2
        if len(_encode(middle, bits & ((1 << middle) - 1))) <= MAX_METADATA_CHARS:
            low = middle
        else:
            high = middle - 1
    return _encode(low, bits & ((1 << low) - 1)) if low else ""


def _encode(span: int, bits: int) -> str:
    raw = bits.to_bytes((span + 7) // 8, "little")
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
        raw = inflater.decompress(compressed, size)
    except (binascii.Error, ValueError, zlib.error):
        raise MalformedMap("commit metadata: bad bitmap") from None
    if len(raw) != size or inflater.unconsumed_tail or not inflater.eof:
        raise MalformedMap("commit metadata: bitmap does not match its span")
    return CompletedMap(position, span, raw)
