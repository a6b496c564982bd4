"""rpc.wire fuzzed in-process: hostile content headers, random and cut byte streams.

The reader of a worker's socket must never raise anything but its own errors, never
loop or recurse without bound, and must read back exactly what was sent however the
bytes are split. ``tests/fuzz/corpus/`` holds content headers that once broke a
reader; each must still be read, or refused with MalformedFrame.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import struct
from pathlib import Path

import pytest
from amqp.exceptions import UnexpectedFrame
from amqp.serialization import decode_properties_basic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpc import wire
from tests.fuzz import frames
from tests.fuzz.strategies import properties

CORPUS = Path(__file__).resolve().parents[1] / "fuzz" / "corpus"
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def header_payload(props) -> bytes:
    frame = frames.content_header(1, 0, props)
    return frame[7:-1]


def same(left, right) -> bool:
    """Equal, with NaN equal to itself (a float header may be NaN)."""
    if isinstance(left, float) and isinstance(right, float):
        return (math.isnan(left) and math.isnan(right)) or left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(
            same(left[k], right[k]) for k in left
        )
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(same, left, right))
    return type(left) is type(right) and left == right


@FUZZ
@given(properties(b"reply"))
def test_hostile_headers_read_as_py_amqp_reads_them_or_are_refused(props):
    payload = header_payload(props)
    try:
        _, ours = wire.decode_content_header(payload)
    except wire.MalformedFrame:
        return  # too deep, too many fields: py-amqp might read it, we refuse
    try:
        theirs = decode_properties_basic(payload, 12)[0]
    except (ValueError, OverflowError, RecursionError, struct.error):
        return  # what py-amqp cannot read at all (a timestamp past year 9999)
    assert same(ours, theirs)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_are_read_or_refused_with_malformed_frame(junk):
    payload = struct.pack(">HHQ", 60, 0, 1) + junk
    with contextlib.suppress(wire.MalformedFrame):
        wire.decode_content_header(payload)


@pytest.mark.parametrize("depth", [wire.MAX_HEADER_DEPTH + 1, 1500, 5000])
@pytest.mark.parametrize("kind", ["F", "A"])
def test_headers_nested_past_the_bound_are_refused(kind, depth):
    props = {"headers": [(b"k", ("deep", (kind, depth, ("I", 1))))]}
    with pytest.raises(wire.MalformedFrame, match="nested deeper"):
        wire.decode_content_header(header_payload(props))


def test_headers_within_the_bound_are_read():
    props = {"headers": [(b"k", ("deep", ("F", wire.MAX_HEADER_DEPTH - 1, ("I", 1))))]}
    _, read = wire.decode_content_header(header_payload(props))
    value = read["application_headers"]["k"]
    for _ in range(wire.MAX_HEADER_DEPTH - 1):
        value = value["k"]
    assert value == 1


def test_too_many_fields_are_refused():
    entries = [(f"k{n}".encode(), ("I", n)) for n in range(wire.MAX_HEADER_FIELDS + 1)]
    with pytest.raises(wire.MalformedFrame, match="more than"):
        wire.decode_content_header(header_payload({"headers": entries}))


def test_a_timestamp_past_year_9999_reads_as_a_number():
    props = {"timestamp": 2**63, "headers": [(b"t", ("T", 2**63))]}
    _, read = wire.decode_content_header(header_payload(props))
    assert read["timestamp"] == 2**63
    assert read["application_headers"]["t"] == 2**63


def test_short_strings_that_are_not_utf8_read_without_raising():
    props = {"correlation_id": b"\xff\xfe", "content_type": b"\xc3(", "type": b"\xed"}
    _, read = wire.decode_content_header(header_payload(props))
    assert read["correlation_id"].encode("utf-8", "surrogateescape") == b"\xff\xfe"


def test_an_unknown_field_type_is_refused():
    table = b"\x01k" + b"Z"
    payload = struct.pack(">HHQH", 60, 0, 0, 0x2000) + struct.pack(">I", 3) + table
    with pytest.raises(wire.MalformedFrame, match="unknown field type"):
        wire.decode_content_header(payload)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.bin")), ids=lambda p: p.name)
def test_the_corpus_is_read_or_refused(path):
    with contextlib.suppress(wire.MalformedFrame):
        wire.decode_content_header(path.read_bytes())


def test_the_corpus_is_there():
    assert len(list(CORPUS.glob("*.bin"))) >= 5


class ChunkedTransport:
    """Stands in for a socket: hands out the stream in the given chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)

    def recv(self, n: int) -> bytes:
        if not self._chunks:
            return b""  # the peer closed the connection
        chunk = self._chunks.pop(0)
        if len(chunk) > n:
            self._chunks.insert(0, chunk[n:])
            chunk = chunk[:n]
        return chunk


def _frames() -> st.SearchStrategy[list[tuple[int, int, bytes]]]:
    return st.lists(
        st.tuples(
            st.sampled_from([1, 2, 3, 8]),
            st.integers(0, 65535),
            st.binary(max_size=300),
        ),
        min_size=1,
        max_size=20,
    )


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@FUZZ
@given(_frames(), st.lists(st.integers(0, 10_000), max_size=30))
def test_frames_split_anyhow_read_back_exactly(sent, cuts):
    stream = b"".join(
        frames.frame(kind, channel, payload) for kind, channel, payload in sent
    )
    reader = wire.FrameReader(ChunkedTransport(_split(stream, cuts)).recv)
    assert [reader.read_frame() for _ in sent] == sent
    with pytest.raises(OSError, match="closed"):
        reader.read_frame()


@FUZZ
@given(_frames(), st.integers(1, 10_000))
def test_a_stream_cut_short_ends_in_an_error_not_a_hang(sent, keep):
    stream = b"".join(
        frames.frame(kind, channel, payload) for kind, channel, payload in sent
    )
    reader = wire.FrameReader(ChunkedTransport([stream[: keep % len(stream)]]).recv)
    with pytest.raises(OSError, match="closed"):
        for _ in range(len(sent) + 1):
            reader.read_frame()


@FUZZ
@given(st.binary(min_size=1, max_size=2000))
def test_garbage_ends_in_one_of_the_reader_errors(junk):
    reader = wire.FrameReader(ChunkedTransport([junk]).recv)
    with pytest.raises((UnexpectedFrame, OSError)):
        for _ in range(len(junk)):
            reader.read_frame()


@pytest.mark.parametrize("kind", ["S", "x"])
def test_a_header_string_or_byte_array_over_its_bound_is_refused(kind):
    limits = wire.HeaderLimits(max_field_bytes=1024)
    fits = {"headers": [(b"k", (kind, b"v" * 1024))]}
    assert wire.decode_content_header(header_payload(fits), limits)[1]
    over = {"headers": [(b"k", (kind, b"v" * 1025))]}
    with pytest.raises(wire.MalformedFrame, match="1025 bytes is over the limit"):
        wire.decode_content_header(header_payload(over), limits)
    # The default bound is far above what a broker's frame carries by default.
    assert wire.decode_content_header(header_payload(over))[1]


def test_the_bounds_given_are_the_bounds_said():
    limits = wire.HeaderLimits(max_fields=3, max_depth=2)
    entries = [(f"k{n}".encode(), ("I", n)) for n in range(4)]
    with pytest.raises(wire.MalformedFrame, match="more than 3 fields"):
        wire.decode_content_header(header_payload({"headers": entries}), limits)
    deep = {"headers": [(b"k", ("deep", ("F", 3, ("I", 1))))]}
    with pytest.raises(wire.MalformedFrame, match="deeper than 2"):
        wire.decode_content_header(header_payload(deep), limits)
