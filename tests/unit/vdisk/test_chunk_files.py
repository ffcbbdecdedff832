"""pvsd.vdisk.chunk_files: indexing an image file agrees with hashlib, a damaged chunk is found
alone, and a file that cannot be read is a Failure naming it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pvsd.errors import Failure, Misuse
from pvsd.vdisk.chunk_files import chunk_matches, index_image, read_chunk
from pvsd.vdisk.chunks import ChunkIndex, IndexBuilder

SMALL = 4096


def write(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("buffer", [1, 1000, SMALL, 3 * SMALL + 5, 1 << 20])
def test_the_index_of_a_file_agrees_with_hashlib(tmp_path: Path, buffer: int) -> None:
    image = tmp_path / "v1.img"
    data = write(image, 5 * SMALL + 123 if buffer > 1 else SMALL + 7)  # a byte at a time is slow
    index = index_image(image, SMALL, buffer)
    assert index.size == len(data)
    assert index.sha256 == hashlib.sha256(data).hexdigest()
    assert index.chunks == tuple(
        hashlib.sha256(data[at : at + SMALL]).hexdigest() for at in range(0, len(data), SMALL)
    )


def test_the_default_chunk_size_indexes_a_file(tmp_path: Path) -> None:
    image = tmp_path / "v1.img"
    data = write(image, (4 << 20) + 1)
    index = index_image(image)
    builder = IndexBuilder()
    builder.feed(data)
    assert index == builder.finish()
    assert index.count == 2 and index.span(1) == (4 << 20, 1)


def test_an_empty_file_has_an_empty_index(tmp_path: Path) -> None:
    image = tmp_path / "v1.img"
    image.write_bytes(b"")
    assert index_image(image, SMALL) == ChunkIndex(0, SMALL, (), hashlib.sha256(b"").hexdigest())


def test_read_chunk_gives_the_chunks_bytes(tmp_path: Path) -> None:
    image = tmp_path / "v1.img"
    data = write(image, 3 * SMALL + 10)
    index = index_image(image, SMALL)
    assert b"".join(read_chunk(image, index, n) for n in range(index.count)) == data
    assert read_chunk(image, index, 3) == data[3 * SMALL :]


def test_one_flipped_byte_fails_only_its_chunk(tmp_path: Path) -> None:
    image = tmp_path / "v1.img"
    data = bytearray(write(image, 4 * SMALL + 10))
    index = index_image(image, SMALL)
    assert all(chunk_matches(image, index, n) for n in range(index.count))
    data[2 * SMALL + 77] ^= 0x01
    image.write_bytes(data)
    assert [chunk_matches(image, index, n) for n in range(index.count)] == [True, True, False, True, True]


def test_a_short_file_is_a_mismatch_for_chunk_matches_and_a_failure_for_read_chunk(tmp_path: Path) -> None:
    image = tmp_path / "v1.img"
    data = write(image, 3 * SMALL)
    index = index_image(image, SMALL)
    image.write_bytes(data[: 2 * SMALL + 5])  # a transfer that stopped inside chunk 2
    assert [chunk_matches(image, index, n) for n in range(3)] == [True, True, False]
    with pytest.raises(Failure, match=f"cannot read chunk 2 of {image}: the file ends at 8197, before"):
        read_chunk(image, index, 2)
    image.write_bytes(b"")
    assert not chunk_matches(image, index, 0)


def test_a_missing_file_is_a_failure_naming_it(tmp_path: Path) -> None:
    image = tmp_path / "gone.img"
    index = ChunkIndex(10, SMALL, ("a" * 64,), "b" * 64)
    with pytest.raises(Failure, match=f"cannot index {image}: No such file or directory"):
        index_image(image)
    with pytest.raises(Failure, match=f"cannot read {image}: No such file or directory"):
        read_chunk(image, index, 0)
    with pytest.raises(Failure, match=f"cannot read {image}: No such file or directory"):
        chunk_matches(image, index, 0)


def test_a_folder_is_a_failure(tmp_path: Path) -> None:
    index = ChunkIndex(10, SMALL, ("a" * 64,), "b" * 64)
    with pytest.raises(Failure, match=f"cannot index {tmp_path}: Is a directory"):
        index_image(tmp_path)
    with pytest.raises(Failure, match=f"cannot read {tmp_path}: Is a directory"):
        chunk_matches(tmp_path, index, 0)


def test_a_buffer_of_nothing_is_misuse(tmp_path: Path) -> None:
    with pytest.raises(Misuse, match="buffer of 0 bytes"):
        index_image(tmp_path / "v1.img", SMALL, 0)
