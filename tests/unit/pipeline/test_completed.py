"""The map of finished offsets in a commit's metadata: round trip, size bound, version."""

from __future__ import annotations

import base64
import random
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.pipeline.completed import (
    MAX_METADATA_CHARS,
    MAX_SPAN,
    MAX_STEPS,
    MalformedMap,
    decode,
    encode,
)


def bitmap(offsets: set[int], position: int) -> int:
    return sum(1 << (o - position) for o in offsets)


@given(
    st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=1, max_value=5_000),
    st.data(),
)
def test_round_trip_keeps_exactly_the_finished_offsets(
    position: int, span: int, data: st.DataObject
) -> None:
    offsets = st.sets(st.integers(min_value=position, max_value=position + span - 1))
    finished = data.draw(offsets)
    started = data.draw(offsets) - finished
    metadata = encode(span, bitmap(finished, position), bitmap(started, position))
    completed = decode(position, metadata)
    assert completed is not None and completed.end == position + span
    window = range(position - 3, position + span + 3)
    assert {o for o in window if completed.finished(o)} == finished
    assert {o for o in window if completed.started(o)} == started


def test_gaps_and_long_runs_stay_small() -> None:
    # 100,000 offsets: a long finished run, a hole, another run: a few dozen characters.
    finished = set(range(1, 60_000)) | set(range(60_100, 100_000))
    metadata = encode(100_000, bitmap(finished, 0))
    assert len(metadata) < 200
    completed = decode(0, metadata)
    assert completed is not None
    assert not completed.finished(0) and completed.finished(1) and not completed.finished(60_050)


def test_a_whole_pending_bound_of_scattered_offsets_fits_uncut() -> None:
    # The default bound: 5 × MAX_IN_FLIGHT = 10,000 offsets behind one held event, finished at
    # random: the worst pattern for compression still fits the broker's default limit.
    bits = random.Random(3).getrandbits(10_000)
    metadata = encode(10_000, bits)
    assert len(metadata) <= MAX_METADATA_CHARS
    completed = decode(0, metadata)
    assert completed is not None and completed.span == 10_000
    assert int.from_bytes(completed.done, "little") == bits


def test_a_map_too_scattered_to_fit_is_cut_to_a_prefix_that_fits() -> None:
    rng = random.Random(7)
    span = 200_000  # random bits do not compress: far beyond 4,000 characters
    bits = rng.getrandbits(span)
    metadata = encode(span, bits)
    assert 0 < len(metadata) <= MAX_METADATA_CHARS
    completed = decode(1_000, metadata)
    assert completed is not None and 0 < completed.span < span
    # What it says is true; what was cut is unknown (not finished, not taken).
    for i in range(completed.span):
        assert completed.finished(1_000 + i) == bool(bits >> i & 1)
    assert not completed.finished(1_000 + completed.span)


def test_a_span_beyond_the_bound_is_cut_to_it() -> None:
    completed = decode(0, encode(MAX_SPAN * 3, 1 << (MAX_SPAN * 2)))
    assert completed is not None and completed.span == MAX_SPAN
    assert not completed.finished(MAX_SPAN * 2)


def test_nothing_to_say_is_empty_metadata() -> None:
    assert encode(0, 0) == ""
    assert decode(5, "") is None


@pytest.mark.parametrize(
    "metadata",
    [
        "fin3:8:eJxjAAAAAQAB",  # a later version
        "v1:0-3,7",  # the dlq replay's progress format
        "fin1:8",
        "fin1:x:eJxjAAAAAQAB",
        "fin1:0:eJxjAAAAAQAB",
        f"fin1:{MAX_SPAN + 1}:eJxjAAAAAQAB",
        "fin1:8:!!!",
        "fin1:8:bm90IHpsaWI",  # base64 of something that is not zlib
        "fin1:800:eJxjAAAAAQAB",  # one byte where the span needs two hundred
        "random text from another tool",
    ],
)
def test_malformed_or_unknown_metadata_is_refused(metadata: str) -> None:
    with pytest.raises(MalformedMap):
        decode(0, metadata)


def test_a_bitmap_longer_than_its_span_is_refused_not_inflated() -> None:
    long = encode(8_000, (1 << 8_000) - 1)
    _version, _span, payload = long.split(":")
    with pytest.raises(MalformedMap):
        decode(0, f"fin1:8:{payload}")


def test_above_gives_the_finished_offsets_past_an_offset() -> None:
    completed = decode(10, encode(6, bitmap({11, 13, 15}, 10)))
    assert completed is not None
    assert completed.above(12) == (bitmap({13, 15}, 10), 0, {})
    assert completed.above(9) == (bitmap({11, 13, 15}, 10), 0, {})
    assert completed.above(15) == (0, 0, {})


@given(
    st.integers(min_value=0, max_value=2**40),
    st.integers(min_value=1, max_value=3_000),
    st.data(),
)
def test_round_trip_keeps_the_accepted_steps_of_started_offsets(
    position: int, span: int, data: st.DataObject
) -> None:
    offsets = st.sets(st.integers(min_value=position, max_value=position + span - 1))
    finished = data.draw(offsets)
    started = data.draw(offsets) - finished
    counts = st.integers(min_value=0, max_value=300)
    steps = {o: data.draw(counts) for o in started}
    metadata = encode(
        span,
        bitmap(finished, position),
        bitmap(started, position),
        {o - position: n for o, n in steps.items()},
    )
    assert metadata.startswith("fin2:" if any(steps.values()) else "fin1:")
    completed = decode(position, metadata)
    assert completed is not None
    window = range(position - 3, position + span + 3)
    assert {o for o in window if completed.finished(o)} == finished
    assert {o for o in window if completed.started(o)} == started
    assert {o: completed.accepted(o) for o in window if completed.accepted(o)} == {
        o: min(n, MAX_STEPS) for o, n in steps.items() if n
    }


def test_steps_of_offsets_not_started_are_not_written() -> None:
    # Finished meanwhile (or never started): its count means nothing, and a reader before
    # version 2 can still read a map without counts.
    metadata = encode(4, 0b0010, 0b0001, {1: 2, 3: 1})
    assert metadata.startswith("fin1:")
    completed = decode(0, metadata)
    assert completed is not None and completed.accepted(1) == completed.accepted(3) == 0


def test_a_cut_map_keeps_the_steps_of_its_prefix() -> None:
    span = 200_000
    bits = random.Random(5).getrandbits(span) & ~1
    metadata = encode(span, bits, 1, {0: 3})
    completed = decode(0, metadata)
    assert completed is not None and 0 < completed.span < span
    assert completed.started(0) and completed.accepted(0) == 3


@pytest.mark.parametrize(
    "raw",
    [
        bytes([0, 0b11]),  # two started offsets, no count
        bytes([0, 0b1, 1, 1]),  # one started offset, two counts
    ],
)
def test_step_counts_that_do_not_match_the_started_offsets_are_refused(raw: bytes) -> None:
    payload = base64.urlsafe_b64encode(zlib.compress(raw)).rstrip(b"=").decode()
    with pytest.raises(MalformedMap):
        decode(0, f"fin2:8:{payload}")


def test_above_gives_the_steps_of_the_started_offsets_past_an_offset() -> None:
    completed = decode(10, encode(6, 0, bitmap({11, 14}, 10), {1: 2, 4: 1}))
    assert completed is not None
    assert completed.above(12) == (0, bitmap({14}, 10), {4: 1})
    assert completed.above(10) == (0, bitmap({11, 14}, 10), {1: 2, 4: 1})
