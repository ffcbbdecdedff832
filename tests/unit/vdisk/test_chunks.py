"""pvsd.vdisk.chunks: the index and its JSON form, the builder however its bytes are cut, what to
fetch and what to copy, transfer progress, and the decoders' contract on any bytes: a value or
DecodeError."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvsd.errors import BadInput, Misuse
from pvsd.net.reader import DecodeError
from pvsd.vdisk import chunks
from pvsd.vdisk.chunks import (
    CHUNK_SIZE,
    INDEX_FORMAT,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MAX_INDEX_BYTES,
    ChunkIndex,
    ChunkProgress,
    IndexBuilder,
    decode_index,
    decode_progress,
    encode_index,
    local_sources,
    missing_chunks,
)

SMALL = 4096  # the smallest chunk size, so that tests hold many chunks in little memory


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def index_of(data: bytes, chunk_size: int = SMALL) -> ChunkIndex:
    builder = IndexBuilder(chunk_size)
    builder.feed(data)
    return builder.finish()


def fake(letter: str) -> str:
    """A well-formed hash that is no real chunk's, for indexes built by hand."""
    return letter * 64


def blocks(*fills: int, last: int = SMALL) -> bytes:
    """Chunks of SMALL bytes, each of one repeated byte; the last one `last` bytes long."""
    parts = [bytes([fill]) * SMALL for fill in fills]
    parts[-1] = parts[-1][:last]
    return b"".join(parts)


# --- the index


def test_the_default_chunk_size_and_format() -> None:
    assert CHUNK_SIZE == 4 << 20
    assert INDEX_FORMAT == "pvsd-chunks-1"


def test_an_empty_image_has_no_chunks() -> None:
    index = index_of(b"")
    assert index == ChunkIndex(size=0, chunk_size=SMALL, chunks=(), sha256=sha(b""))
    assert index.count == 0
    assert index.chunk_bytes([]) == 0
    with pytest.raises(BadInput, match="chunk 0 is not one of the image's 0 chunks"):
        index.span(0)


def test_an_exact_multiple_has_only_whole_chunks() -> None:
    data = blocks(1, 2, 3)
    index = index_of(data)
    assert index.size == 3 * SMALL
    assert index.chunks == (sha(data[:SMALL]), sha(data[SMALL : 2 * SMALL]), sha(data[2 * SMALL :]))
    assert index.sha256 == sha(data)
    assert [index.span(n) for n in range(3)] == [(0, SMALL), (SMALL, SMALL), (2 * SMALL, SMALL)]


def test_the_last_chunk_may_be_short() -> None:
    data = blocks(1, 2, last=100)
    index = index_of(data)
    assert index.count == 2
    assert index.span(1) == (SMALL, 100)
    assert index.chunks[1] == sha(data[SMALL:])
    assert index.chunk_bytes([0, 1]) == SMALL + 100
    assert index.chunk_bytes([1, 1, 1]) == 100  # each chunk counted once


@pytest.mark.parametrize("number", [-1, 2, 1 << 70])
def test_a_span_past_either_end_is_bad_input(number: int) -> None:
    index = index_of(blocks(1, 2))
    with pytest.raises(BadInput, match=f"chunk {number} is not one of the image's 2 chunks"):
        index.span(number)
    with pytest.raises(BadInput):
        index.chunk_bytes([0, number])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"chunk_size": 0}, "a chunk size of 0 bytes is not a positive multiple of 4096"),
        ({"chunk_size": -4096}, "not a positive multiple"),
        ({"chunk_size": 4097}, "not a positive multiple"),
        ({"chunk_size": MAX_CHUNK_SIZE + 4096}, "of at most 67108864"),
        ({"chunk_size": True}, "a chunk size of True bytes"),
        ({"size": -1}, "an image size of -1 bytes"),
        ({"size": True}, "an image size of True bytes"),
        ({"size": SMALL + 1}, "an image of 4097 bytes in chunks of 4096 has 2 chunks, not 1"),
        ({"size": 0}, "has 0 chunks, not 1"),
        ({"size": MAX_CHUNKS * SMALL + 1}, "more than 262144: use a bigger chunk size"),
        ({"chunks": [fake("a")]}, "has 1 chunks, not \\['a"),
        ({"chunks": (fake("A"),)}, "chunk 0's hash 'AAAA.* is not 64 lower-case hex digits"),
        ({"chunks": (fake("a")[:63],)}, "chunk 0's hash"),
        ({"chunks": (fake("a") + "\n",)}, "chunk 0's hash"),
        ({"chunks": (7,)}, "chunk 0's hash 7 is not"),
        ({"sha256": fake("g")}, "the image's hash 'ggg"),
        ({"sha256": None}, "the image's hash None"),
    ],
)
def test_an_impossible_index_is_bad_input(fields: dict[str, Any], message: str) -> None:
    good: dict[str, Any] = {"size": 100, "chunk_size": SMALL, "chunks": (fake("a"),), "sha256": fake("b")}
    with pytest.raises(BadInput, match=message):
        ChunkIndex(**(good | fields))


def test_the_largest_index_is_allowed() -> None:
    index = ChunkIndex(MAX_CHUNKS * SMALL, SMALL, (fake("a"),) * MAX_CHUNKS, fake("b"))
    assert len(encode_index(index)) < MAX_INDEX_BYTES
    assert decode_index(encode_index(index)) == index


# --- its JSON form


def test_the_encoding_is_compact_sorted_json_with_a_newline() -> None:
    index = index_of(blocks(1, last=10))
    assert encode_index(index) == (
        b'{"chunk_size":4096,"chunks":["' + sha(bytes([1]) * 10).encode() + b'"],"format":"pvsd-chunks-1",'
        b'"sha256":"' + sha(bytes([1]) * 10).encode() + b'","size":10}\n'
    )
    assert encode_index(index_of(b"")) == (
        b'{"chunk_size":4096,"chunks":[],"format":"pvsd-chunks-1","sha256":"'
        + sha(b"").encode()
        + b'","size":0}\n'
    )


def test_equal_indexes_encode_to_equal_bytes() -> None:
    data = blocks(5, 6, 7, last=3)
    assert encode_index(index_of(data)) == encode_index(index_of(data))
    assert encode_index(index_of(data)) == encode_index(decode_index(encode_index(index_of(data))))


@pytest.mark.parametrize("data", [b"", blocks(1), blocks(1, 2, 1, last=1)])
def test_round_trip(data: bytes) -> None:
    index = index_of(data)
    assert decode_index(encode_index(index)) == index


def test_any_json_spelling_of_the_document_decodes() -> None:
    index = index_of(blocks(1, 2))
    document = json.loads(encode_index(index))
    spelled = json.dumps(document, indent=4).encode()
    assert decode_index(spelled) == index


def _document(**changes: Any) -> bytes:
    document: dict[str, Any] = json.loads(encode_index(index_of(blocks(1, 2, last=9))))
    for key, value in changes.items():
        if value is _DROP:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document).encode()


_DROP = object()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe{}", "UTF-8 JSON"),
        (_document().decode().encode("utf-16"), "UTF-8 JSON"),
        (b"\xef\xbb\xbf" + _document(), "UTF-8 JSON"),
        (b"", "UTF-8 JSON"),
        (b"{", "UTF-8 JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "UTF-8 JSON"),
        (b'{"size": ' + b"9" * 5000 + b"}", "UTF-8 JSON"),
        (b"[]", "a JSON object, not list"),
        (b"null", "a JSON object, not NoneType"),
        (_document(format="pvsd-chunks-2"), "format is 'pvsd-chunks-2', not 'pvsd-chunks-1'"),
        (_document(format=None), "format is None"),
        (_document(size=_DROP), r"missing \['size'\], extra \[\]"),
        (_document(chunks=_DROP, sha256=_DROP), r"missing \['chunks', 'sha256'\]"),
        (_document(extra=1), r"missing \[\], extra \['extra'\]"),
        (_document(size=True), "size and chunk_size are integers, not True and 4096"),
        (_document(chunk_size=False), "not 4105 and False"),
        (_document(size=4105.0), "not 4105.0"),
        (_document(size="4105"), "not '4105'"),
        (_document(chunk_size=4095), "a bad chunk index: a chunk size of 4095 bytes"),
        (_document(size=-1), "a bad chunk index: an image size of -1"),
        (_document(size=2 * SMALL + 1), "has 3 chunks, not 2"),
        (_document(size=10**400), "more than 262144: use a bigger chunk size"),
        (_document(chunks={}), "chunks are a list, not dict"),
        (_document(chunks="ab"), "chunks are a list, not str"),
        (_document(chunks=[fake("a"), None]), "chunk 1's hash None"),
        (_document(chunks=[fake("a"), [fake("a")]]), "chunk 1's hash"),
        (_document(sha256=fake("A")), "the image's hash 'AAA"),
        (_document(sha256=1), "the image's hash 1"),
    ],
)
def test_bad_documents_are_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_index(data)


def test_an_index_past_the_size_cap_is_refused_unread() -> None:
    with pytest.raises(DecodeError, match=f"is more than the {MAX_INDEX_BYTES} allowed"):
        decode_index(b" " * (MAX_INDEX_BYTES + 1))


def test_a_huge_value_is_cut_short_in_the_message() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_index(_document(sha256="x" * 100_000))
    assert len(str(caught.value)) < 200


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=8,
)
_VALID: dict[str, Any] = json.loads(encode_index(index_of(blocks(1, 2, last=9))))


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_any_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_index(data)


@settings(max_examples=300)
@given(st.data())
def test_a_damaged_encoding_decodes_or_raises_decode_error(data: st.DataObject) -> None:
    encoded = bytearray(encode_index(index_of(blocks(1, 2, last=9))))
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(encoded) - 1))
        action = data.draw(st.sampled_from(["set", "delete", "insert"]))
        if action == "set":
            encoded[at] = data.draw(st.integers(0, 255))
        elif action == "delete":
            del encoded[at]
        else:
            encoded.insert(at, data.draw(st.sampled_from(b'{}[]",:0123456789aetfn\\-. ')))
    with contextlib.suppress(DecodeError):
        decode_index(bytes(encoded))


@settings(max_examples=200)
@given(st.fixed_dictionaries({}, optional=dict.fromkeys(sorted(_VALID), _JSON)), st.booleans())
def test_any_json_values_decode_or_raise_decode_error(changes: dict[str, Any], whole: bool) -> None:
    document: Any = changes if whole else _VALID | changes
    with contextlib.suppress(DecodeError):
        decode_index(json.dumps(document).encode())


@settings(max_examples=200)
@given(_JSON)
def test_any_json_document_decodes_or_raises_decode_error(document: Any) -> None:
    with contextlib.suppress(DecodeError):
        decode_index(json.dumps(document).encode())


# --- the builder


@settings(max_examples=200)
@given(st.binary(max_size=5 * SMALL), st.lists(st.integers(0, 5 * SMALL), max_size=12), st.booleans())
def test_the_builder_gives_the_same_index_however_the_bytes_are_cut(
    data: bytes, cuts: list[int], views: bool
) -> None:
    builder = IndexBuilder(SMALL)
    edges = [0, *sorted(min(cut, len(data)) for cut in cuts), len(data)]
    for start, end in itertools.pairwise(edges):
        piece = data[start:end]
        builder.feed(memoryview(piece) if views else bytearray(piece))
    index = builder.finish()
    assert index == index_of(data)
    assert index.sha256 == sha(data)
    assert index.chunks == tuple(sha(data[at : at + SMALL]) for at in range(0, len(data), SMALL))


def test_the_builder_takes_a_view_of_any_format() -> None:
    data = blocks(1, 2, last=8)
    builder = IndexBuilder(SMALL)
    builder.feed(memoryview(data).cast("Q"))
    assert builder.finish() == index_of(data)


def test_the_builder_counts_what_it_was_fed() -> None:
    builder = IndexBuilder(SMALL)
    builder.feed(b"x" * 5000)
    builder.feed(b"")
    assert builder.size == 5000


def test_feed_after_finish_is_misuse_and_finish_repeats() -> None:
    builder = IndexBuilder(SMALL)
    builder.feed(b"abc")
    index = builder.finish()
    with pytest.raises(Misuse, match="feed after finish"):
        builder.feed(b"d")
    assert builder.finish() is index


@pytest.mark.parametrize("chunk_size", [0, 1000, MAX_CHUNK_SIZE * 2])
def test_the_builder_refuses_a_bad_chunk_size(chunk_size: int) -> None:
    with pytest.raises(BadInput, match="not a positive multiple of 4096"):
        IndexBuilder(chunk_size)


def test_the_builder_refuses_an_image_of_too_many_chunks_before_hashing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(chunks, "MAX_CHUNKS", 3)  # rather than hash a GiB
    builder = IndexBuilder(SMALL)
    builder.feed(bytes(3 * SMALL - 10))
    with pytest.raises(BadInput, match="more than 3 chunks of 4096 bytes: use a bigger chunk size"):
        builder.feed(bytes(11))
    builder.feed(bytes(10))  # the refused piece left nothing behind
    assert builder.finish() == index_of(bytes(3 * SMALL))


# --- what to fetch, what to copy


def test_identical_images_need_nothing() -> None:
    index = index_of(blocks(1, 2, 3, last=7))
    assert missing_chunks(index, index) == ()
    assert local_sources(index, index) == {0: 0, 1: 1, 2: 2}


def test_nothing_held_needs_everything() -> None:
    index = index_of(blocks(1, 2, 3))
    assert missing_chunks(index, None) == (0, 1, 2)
    assert local_sources(index, None) == {}
    assert missing_chunks(index_of(b""), None) == ()


def test_one_changed_chunk_is_the_only_one_to_fetch() -> None:
    held = index_of(blocks(1, 2, 3, 4))
    wanted = index_of(blocks(1, 2, 9, 4))
    assert missing_chunks(wanted, held) == (2,)
    assert local_sources(wanted, held) == {0: 0, 1: 1, 3: 3}
    assert wanted.chunk_bytes(missing_chunks(wanted, held)) == SMALL


def test_a_moved_chunk_is_copied_from_where_it_is_held() -> None:
    held = index_of(blocks(1, 2, 3, 4))
    wanted = index_of(blocks(4, 2, 3, 1))
    assert missing_chunks(wanted, held) == ()
    assert local_sources(wanted, held) == {0: 3, 1: 1, 2: 2, 3: 0}


def test_the_same_position_is_preferred_then_the_first_copy() -> None:
    held = index_of(blocks(5, 5, 5, 6))
    wanted = index_of(blocks(6, 5, 6, 5, 5))
    assert local_sources(wanted, held) == {0: 3, 1: 1, 2: 3, 3: 0, 4: 0}


def test_a_grown_image_fetches_only_its_new_chunks() -> None:
    held = index_of(blocks(1, 2))
    wanted = index_of(blocks(1, 2, 3, 4))
    assert missing_chunks(wanted, held) == (2, 3)


def test_different_chunk_sizes_share_nothing() -> None:
    data = blocks(1, 2, 3, 4)
    assert missing_chunks(index_of(data, 2 * SMALL), index_of(data, SMALL)) == (0, 1)
    assert local_sources(index_of(data, 2 * SMALL), index_of(data, SMALL)) == {}


def test_a_short_last_chunk_matches_only_a_chunk_of_its_length() -> None:
    # Hand-made: real hashes of different lengths never agree, so the length rule shows only here.
    held = ChunkIndex(2 * SMALL, SMALL, (fake("a"), fake("b")), fake("f"))
    wanted = ChunkIndex(SMALL + 100, SMALL, (fake("b"), fake("a")), fake("e"))
    assert local_sources(wanted, held) == {0: 1}
    assert missing_chunks(wanted, held) == (1,)
    short = ChunkIndex(SMALL + 100, SMALL, (fake("c"), fake("a")), fake("d"))
    assert local_sources(wanted, short) == {1: 1}


def test_a_short_last_chunk_is_reused_from_the_same_short_chunk() -> None:
    held = index_of(blocks(1, 2, last=100))
    wanted = index_of(blocks(3, 2, last=100))
    assert local_sources(wanted, held) == {1: 1}
    assert missing_chunks(wanted, held) == (0,)


# --- transfer progress


def test_progress_marks_chunks_done() -> None:
    progress = ChunkProgress(5)
    assert progress.remaining() == (0, 1, 2, 3, 4)
    progress = progress.with_done(3).with_done(0, 4)
    assert progress == ChunkProgress(5, frozenset({0, 3, 4}))
    assert progress.remaining() == (1, 2)
    assert progress.with_done(3) == progress
    assert progress.with_done(1, 2).remaining() == ()


@pytest.mark.parametrize(
    ("progress", "encoded"),
    [
        (ChunkProgress(0), b"PVCP\x01\x00\x00\x00\x00"),
        (ChunkProgress(1, frozenset({0})), b"PVCP\x01\x00\x00\x00\x01\x01"),
        (ChunkProgress(10, frozenset({0, 3, 8})), b"PVCP\x01\x00\x00\x00\x0a\x09\x01"),
        (ChunkProgress(16, frozenset({7, 15})), b"PVCP\x01\x00\x00\x00\x10\x80\x80"),
        (ChunkProgress(300, frozenset()), b"PVCP\x01\x00\x00\x01\x2c" + bytes(38)),
    ],
)
def test_progress_encoding_both_ways(progress: ChunkProgress, encoded: bytes) -> None:
    assert progress.encode() == encoded
    assert decode_progress(encoded, progress.count) == progress


@settings(max_examples=200)
@given(
    st.integers(0, 2000).flatmap(
        lambda n: st.tuples(st.just(n), st.frozensets(st.integers(0, max(n - 1, 0))))
    )
)
def test_progress_round_trip(case: tuple[int, frozenset[int]]) -> None:
    count, done = case
    progress = ChunkProgress(count, done if count else frozenset())
    assert decode_progress(progress.encode(), count) == progress


@pytest.mark.parametrize(
    ("data", "count", "message"),
    [
        (b"PVCX\x01\x00\x00\x00\x0a\x00\x00", 10, "starts with b'PVCP', not b'PVCX'"),
        (b"PVCP\x02\x00\x00\x00\x0a\x00\x00", 10, "version 2 is not 1"),
        (b"PVCP\x01\x00\x00\x00\x0b\x00\x00", 10, "is for 11 chunks, not 10"),
        (b"PVCP\x01\x00\x00\x00\x0a\x00\x00", -1, "is for 10 chunks, not -1"),
        (b"PVCP\x01\x00\x00\x00\x0a\x00", 10, "has 2 bitmap bytes, not 1"),
        (b"PVCP\x01\x00\x00\x00\x0a\x00\x00\x00", 10, "has 2 bitmap bytes, not 3"),
        (b"PVCP\x01\x00\x00\x00\x0a\x00\x04", 10, "marks chunks past its 10"),
        (b"PVCP\x01\x00\x00\x00\x0a\x00\x80", 10, "marks chunks past its 10"),
        (b"PVCP\x01\x00\x00", 10, "truncated"),
        (b"", 0, "truncated"),
    ],
)
def test_bad_progress_is_a_decode_error(data: bytes, count: int, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_progress(data, count)


@pytest.mark.parametrize(
    ("count", "done", "message"),
    [
        (-1, frozenset(), "a transfer of -1 chunks"),
        (1 << 32, frozenset(), "not within 0-4294967295"),
        (3, frozenset({3}), r"chunks \['3'\] are not among the transfer's 3"),
        (3, frozenset({-1}), "are not among"),
        (3, {1}, "a frozenset, not set"),
    ],
)
def test_impossible_progress_is_bad_input(count: int, done: Any, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        ChunkProgress(count, done)


def test_marking_a_chunk_past_the_count_is_bad_input() -> None:
    with pytest.raises(BadInput, match="are not among the transfer's 3"):
        ChunkProgress(3).with_done(1, 5)


@settings(max_examples=300)
@given(st.binary(max_size=64), st.integers(-2, 300))
def test_any_bytes_decode_as_progress_or_raise_decode_error(data: bytes, count: int) -> None:
    with contextlib.suppress(DecodeError):
        decode_progress(data, count)


@settings(max_examples=300)
@given(st.data())
def test_damaged_progress_decodes_or_raises_decode_error(data: st.DataObject) -> None:
    count = data.draw(st.integers(0, 100))
    encoded = bytearray(ChunkProgress(count, frozenset(range(0, count, 3))).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(encoded) - 1))
        if data.draw(st.booleans()):
            encoded[at] = data.draw(st.integers(0, 255))
        else:
            del encoded[at]
    with contextlib.suppress(DecodeError):
        decode_progress(bytes(encoded), count)
