"""The whole-image hash made in order as chunks land in any order: the file's sha256, or Failure."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from pathlib import Path

import pytest

from pvsd.errors import Failure
from pvsd.vdisk.chunk_files import index_image
from pvsd.vdisk.ordered_hash import OrderedHash


def test_chunks_landing_out_of_order_hash_to_the_files_sha256(tmp_path: Path) -> None:
    data = os.urandom(5 * 4096 + 100)
    source = tmp_path / "source.img"
    source.write_bytes(data)
    index = index_image(source, chunk_size=4096)
    target = tmp_path / "partial"
    target.write_bytes(data[:4096] + bytes(len(data) - 4096))  # chunk 0 was there before
    whole = OrderedHash(target, index, landed=[0])
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(whole.run()))
    thread.start()
    order = list(range(1, index.count))
    random.Random(3).shuffle(order)
    with target.open("r+b") as stream:
        for number in order:
            offset, length = index.span(number)
            stream.seek(offset)
            stream.write(data[offset : offset + length])
            stream.flush()
            whole.mark(number)
    thread.join(10)
    assert result == [hashlib.sha256(data).hexdigest()]


def test_a_cancelled_hash_fails_and_a_short_file_fails(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.write_bytes(os.urandom(8192))
    index = index_image(image, chunk_size=4096)
    waiting = OrderedHash(image, index)
    waiting.cancel()
    with pytest.raises(Failure, match="given up"):
        waiting.run()
    image.write_bytes(b"short")
    with pytest.raises(Failure, match="before the image does"):
        OrderedHash(image, index, landed=[0, 1]).run()
