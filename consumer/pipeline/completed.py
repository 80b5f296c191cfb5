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

Version 2, ``fin2:<span>:<payload>``, is version 1 with a third part after the two bitmaps: for
each started offset (ascending), one byte: how many of its event's Create Event steps Klaviyo had
accepted (the first ones in plan order; at most 255). An order cut between its Placed Order and
its Ordered Products is then sent on from where it stopped, not whole again. A map in which no
started offset has an accepted step is written as version 1, which relays before version 2 read.

Kafka refuses a commit whose metadata is longer than ``offset.metadata.max.bytes`` (4096 by
default). A map that does not fit is cut to its longest prefix that does: offsets beyond the
prefix become unknown again (resent after a crash), the ones nearest the watermark (the next to
be replayed) stay.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

VERSION = "fin1"
STEPS_VERSION = "fin2"  # with the accepted steps of started offsets
_VERSIONS = (VERSION, STEPS_VERSION)
# Below the broker's default offset.metadata.max.bytes (4096), with room to spare.
MAX_METADATA_CHARS = 4000
# 2^20 offsets: far beyond what the pending bound lets a partition hold, and a bound on what a
# reader decompresses (2 × 128 KiB, plus one byte per started offset) whatever the metadata says.
MAX_SPAN = 1 << 20
# A step count is one byte.
MAX_STEPS = 255

# Bit index (offset - position) → accepted Create Event steps of that started offset.
Steps = Mapping[int, int]


class MalformedMap(ValueError):
    """Commit metadata that is not a map this reader understands."""


@dataclass(frozen=True, slots=True)
class CompletedMap:
    """What an earlier owner of a partition recorded at ``position``."""

    position: int
    span: int  # offsets position .. position + span - 1 were taken by the writer
    done: bytes  # bit i: position + i is finished
    begun: bytes  # bit i: position + i was started and is unfinished
    steps: Steps = field(default_factory=dict)  # i → its Create Event steps Klaviyo accepted

    @property
    def end(self) -> int:
        """The first offset the writer had not taken."""
        return self.position + self.span

    def finished(self, offset: int) -> bool:
        return self._bit(self.done, offset)

    def started(self, offset: int) -> bool:
        """Started and not finished."""
        return self._bit(self.begun, offset)

    def accepted(self, offset: int) -> int:
        """How many of the started ``offset``'s first Create Event steps Klaviyo accepted."""
        return self.steps.get(offset - self.position, 0)

    def above(self, offset: int) -> tuple[int, int, dict[int, int]]:
        """The finished and the started offsets past ``offset`` as bitmap integers (bit i:
        position + i), and the accepted steps of those started (i → steps)."""
        if offset + 1 >= self.end:
            return 0, 0, {}
        keep = max(0, offset + 1 - self.position)
        done, begun = (int.from_bytes(b, "little") >> keep << keep for b in (self.done, self.begun))
        return done, begun, {i: n for i, n in self.steps.items() if i >= keep}

    def _bit(self, bits: bytes, offset: int) -> bool:
        i = offset - self.position
        return 0 <= i < self.span and bool(bits[i >> 3] >> (i & 7) & 1)


def encode(span: int, finished: int, started: int = 0, steps: Steps | None = None) -> str:
    """The metadata for ``finished`` and ``started`` (bitmaps, bit i: ``position + i``) over
    ``span`` taken offsets, with ``steps`` (i → accepted Create Event steps of started ones): the
    longest prefix that fits in :data:`MAX_METADATA_CHARS`; ``""`` when there is nothing."""
    span = min(span, MAX_SPAN)
    if span == 0:
        return ""
    steps = {i: n for i, n in (steps or {}).items() if n > 0 and started >> i & 1}
    text = _encode(span, finished, started, steps)
    if len(text) <= MAX_METADATA_CHARS:
        return text
    # Too scattered to fit: commit the longest prefix that does (binary search; compressed size
    # grows with the prefix nearly monotonically, and whatever it lands on was checked to fit).
    low, high = 0, span
    while low < high:
        middle = (low + high + 1) // 2
        if len(_encode(middle, finished, started, steps)) <= MAX_METADATA_CHARS:
            low = middle
        else:
            high = middle - 1
    return _encode(low, finished, started, steps) if low else ""


def _encode(span: int, finished: int, started: int, steps: Steps) -> str:
    size = (span + 7) // 8
    mask = (1 << span) - 1
    started &= mask
    raw = (finished & mask).to_bytes(size, "little") + started.to_bytes(size, "little")
    version = VERSION
    if any(i < span for i in steps):
        version = STEPS_VERSION
        raw += bytes(min(MAX_STEPS, steps.get(i, 0)) for i in _bits(started))
    payload = base64.urlsafe_b64encode(zlib.compress(raw, 9)).rstrip(b"=").decode("ascii")
    return f"{version}:{span}:{payload}"


def _bits(bitmap: int) -> list[int]:
    """The indexes of the set bits of ``bitmap``, ascending."""
    out = []
    while bitmap:
        low = bitmap & -bitmap
        out.append(low.bit_length() - 1)
        bitmap ^= low
    return out


def decode(position: int, metadata: str) -> CompletedMap | None:
    """The map committed at ``position``; None when the metadata is empty. Raises
    :class:`MalformedMap` for anything else that is not a version-1 or version-2 map."""
    if not metadata:
        return None
    version, _, rest = metadata.partition(":")
    if version not in _VERSIONS:
        raise MalformedMap(f"unknown commit metadata version {version[:16]!r}")
    span_text, sep, payload = rest.partition(":")
    if not sep or not span_text.isdigit() or not 0 < int(span_text) <= MAX_SPAN:
        raise MalformedMap("commit metadata: bad span")
    span = int(span_text)
    size = (span + 7) // 8
    # Version 2 adds at most one byte per started offset: never more than span bytes.
    limit = 2 * size + (span if version == STEPS_VERSION else 0)
    try:
        compressed = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(compressed, limit)
    except (binascii.Error, ValueError, zlib.error):
        raise MalformedMap("commit metadata: bad bitmap") from None
    if len(raw) < 2 * size or inflater.unconsumed_tail or not inflater.eof:
        raise MalformedMap("commit metadata: bitmaps do not match their span")
    done, begun, counts = raw[:size], raw[size : 2 * size], raw[2 * size :]
    steps: dict[int, int] = {}
    if version == STEPS_VERSION:
        started = _bits(int.from_bytes(begun, "little"))
        if len(counts) != len(started) or any(i >= span for i in started[-1:]):
            raise MalformedMap("commit metadata: step counts do not match the started offsets")
        steps = {i: n for i, n in zip(started, counts, strict=True) if n}
    elif counts:
        raise MalformedMap("commit metadata: bitmaps do not match their span")
    return CompletedMap(position, span, done, begun, steps)
