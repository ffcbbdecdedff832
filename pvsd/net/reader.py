"""The one bounded reader every decoder parses with, and the errors shared by all protocols.

Decoders raise DecodeError and nothing else on bad bytes: a truncated packet can never
surface as IndexError or struct.error. Any other exception out of a decoder is a bug.
"""

from __future__ import annotations

import struct

__all__ = ["DecodeError", "ProtocolError", "Reader"]

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class DecodeError(ValueError):
    """The bytes are not a packet of this protocol: log at debug level and drop them."""


class ProtocolError(Exception):
    """A well-formed packet that breaks the protocol: answered with an error reply carrying `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Reader:
    """Reads big-endian fields from a buffer, never past its end."""

    __slots__ = ("_data", "_offset")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = bytes(data)
        self._offset = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset

    def at_end(self) -> bool:
        return self._offset >= len(self._data)

    def take(self, length: int) -> bytes:
        if length < 0 or length > self.remaining:
            raise DecodeError(
                f"truncated: wanted {length} bytes at offset {self._offset}, {self.remaining} left"
            )
        chunk = self._data[self._offset : self._offset + length]
        self._offset += length
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = _U16.unpack(self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack(self.take(8))[0]
        return value

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def tlv(self, pad: int, end: int) -> list[tuple[int, bytes]]:
        """Code, length, value items up to `end` or the end of the buffer; `pad` codes have no length.

        The DHCP options format (RFC 2132 section 2), read in one tight loop because a DHCP
        server reads it for every packet.
        """
        data = self._data
        size = len(data)
        offset = self._offset
        items = []
        while offset < size:
            code = data[offset]
            if code == pad:
                offset += 1
                continue
            if code == end:
                offset += 1
                break
            if offset + 1 >= size:
                raise DecodeError(f"truncated: option {code} has no length at offset {offset}")
            length = data[offset + 1]
            start = offset + 2
            offset = start + length
            if offset > size:
                raise DecodeError(f"truncated: option {code} wants {length} bytes at offset {start}")
            items.append((code, data[start:offset]))
        self._offset = offset
        return items

    def cstring(self) -> bytes:
        """Bytes up to the next NUL, which is consumed; a missing NUL is a DecodeError."""
        end = self._data.find(b"\0", self._offset)
        if end < 0:
            raise DecodeError(f"unterminated string at offset {self._offset}")
        chunk = self._data[self._offset : end]
        self._offset = end + 1
        return chunk
