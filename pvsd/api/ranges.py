"""HTTP conditional and range requests for files held in memory (RFC 9110 sections 13 and 14). Pure.

Files on disk go through aiohttp's FileResponse, which does the same for them; generated boot
scripts are bytes in memory and are answered here. Only single ranges are served: iPXE, curl
and UEFI HTTP boot ask for one at most, and a multipart answer buys nothing here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["ByteRange", "RangeNotSatisfiable", "etag_of", "if_none_match", "parse_range"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeNotSatisfiable(ValueError):
    """The Range asks for nothing the file has: 416 with `Content-Range: bytes */SIZE`."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def etag_of(data: bytes) -> str:
    """A strong entity tag: the content's hash, so every server gives a file the same tag."""
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def if_none_match(header: str | None, etag: str) -> bool:
    """True when `If-None-Match` matches `etag` (weak comparison, RFC 9110 13.1.2): answer 304."""
    if header is None:
        return False
    tags = [tag.strip() for tag in header.split(",")]
    return "*" in tags or any(tag.removeprefix("W/") == etag.removeprefix("W/") for tag in tags)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range of a `Range` header, or None to send the whole file (no header, or one this
    server ignores, as RFC 9110 14.2 allows: other units, several ranges, bad syntax).
    RangeNotSatisfiable when it lies wholly past the end."""
    if header is None:
        return None
    found = _RANGE.fullmatch(header.strip())
    if found is None:
        return None
    first, last = found.groups()
    if not first and not last:
        return None
    if not first:  # a suffix: the last N bytes
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(header)
        return ByteRange(max(size - suffix, 0), size - 1) if size else _nothing(header)
    start = int(first)
    end = int(last) if last else size - 1
    if end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(header)
    return ByteRange(start, min(end, size - 1))


def _nothing(header: str) -> ByteRange:
    raise RangeNotSatisfiable(header)
