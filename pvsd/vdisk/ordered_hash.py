"""The whole-image sha256 of a file being filled chunk by chunk in any order, hashed in order as
the chunks land, so that the check at the end of a pull costs the tail, not the whole image.

It reads the bytes back from the file (the page cache, just written), in a thread of its own; a
pull marks each chunk once it is written there. What it hashes is what the file holds.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from pvsd.errors import Failure
from pvsd.vdisk.chunks import ChunkIndex

__all__ = ["OrderedHash"]


class OrderedHash:
    def __init__(self, path: Path, index: ChunkIndex, landed: Iterable[int] = ()) -> None:
        self.path = path
        self.index = index
        self._landed = set(landed)
        self._cancelled = False
        self._changed = threading.Condition()

    def mark(self, number: int) -> None:
        """Chunk `number` is written in the file; safe from any thread."""
        with self._changed:
            self._landed.add(number)
            self._changed.notify_all()

    def cancel(self) -> None:
        with self._changed:
            self._cancelled = True
            self._changed.notify_all()

    def run(self) -> str:
        """The hex sha256 of the file's first index.size bytes, once every chunk has landed
        (blocks: run it in a thread). Failure if cancelled or the file is short."""
        digest = hashlib.sha256()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for number in range(self.index.count):
                with self._changed:
                    while number not in self._landed:
                        if self._cancelled:
                            raise Failure(f"the hash of {self.path} was given up")
                        self._changed.wait()
                offset, length = self.index.span(number)
                while length:
                    data = os.pread(fd, min(length, 1 << 20), offset)
                    if not data:
                        raise Failure(f"{self.path} ends at {offset}, before the image does")
                    digest.update(data)
                    offset, length = offset + len(data), length - len(data)
        finally:
            os.close(fd)
        return digest.hexdigest()
