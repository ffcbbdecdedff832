"""Signed tickets: what lets a target move to another server without asking the database.

A ticket names the device, its vDisk version with the disk's size and sector size, access
mode and write-cache type, the session, and when it was issued and expires, signed with
HMAC-SHA256 under the farm's secret. Any server of the farm checks one with the secret alone
and answers a returning target with the disk's geometry from it, with no database and no
memory of earlier logins. Pure: time is passed in.

Wire layout (big-endian), then a 32-byte HMAC-SHA256 over everything before it:

    u8 format (2) | 8 bytes farm key id | 6 bytes MAC | u64 session id
    u64 issued (ms since the epoch) | u64 expires (ms) | u8 access mode | u8 cache type
    u32 vDisk version | u64 disk size | u16 sector size | u8 name length | vDisk name (UTF-8)

The key id (the first 8 bytes of SHA-256 of the secret) is in clear so that a ticket from
another farm is told apart from a forged one.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass

from pvsd.net.mac import format_mac
from pvsd.net.reader import DecodeError, Reader
from pvsd.stream.wire import ErrorCode, StreamRefusal

__all__ = [
    "TICKET_FORMAT",
    "CacheType",
    "Claims",
    "TicketError",
    "issue_ticket",
    "verify_ticket",
]

TICKET_FORMAT = 2
_FIXED = struct.Struct("!B8s6sQQQBBIQHB")
_SIGNATURE = 32


class AccessModeCode(enum.IntEnum):
    PRIVATE = 1
    STANDARD = 2


class CacheType(enum.IntEnum):
    """Where a standard-mode device's writes go (PVS's write-cache types)."""

    NONE = 0  # private mode: writes go to the image
    SERVER = 1  # a per-device overlay on the server
    DEVICE_RAM_DISK = 2  # RAM with overflow to the target's disk


class TicketError(StreamRefusal):
    """Why a ticket is refused; each reason has its own error code on the wire and in the log."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        what = code.name.removeprefix("TICKET_").lower().replace("_", " ")
        super().__init__(code, f"ticket refused ({what}): {detail}")


@dataclass(frozen=True)
class Claims:
    mac: str
    vdisk: str
    version: int
    private: bool
    cache: CacheType
    session: int
    issued_ms: int
    expires_ms: int
    disk_size: int
    sector_size: int


def key_id(secret: str) -> bytes:
    return hashlib.sha256(bytes.fromhex(secret)).digest()[:8]


def _sign(secret: str, body: bytes) -> bytes:
    return hmac.new(bytes.fromhex(secret), body, hashlib.sha256).digest()


def issue_ticket(secret: str, claims: Claims) -> bytes:
    name = claims.vdisk.encode()
    if len(name) > 255:
        raise ValueError("a vDisk name longer than 255 bytes cannot go in a ticket")
    body = (
        _FIXED.pack(
            TICKET_FORMAT,
            key_id(secret),
            bytes.fromhex(claims.mac.replace(":", "")),
            claims.session,
            claims.issued_ms,
            claims.expires_ms,
            AccessModeCode.PRIVATE if claims.private else AccessModeCode.STANDARD,
            claims.cache,
            claims.version,
            claims.disk_size,
            claims.sector_size,
            len(name),
        )
        + name
    )
    return body + _sign(secret, body)


def verify_ticket(secret: str, ticket: bytes, now_ms: int, skew_ms: int = 60_000) -> Claims:
    """The ticket's claims, or TicketError saying why it is refused. `skew_ms` allows for
    servers whose clocks disagree a little about when it was issued."""
    try:
        reader = Reader(ticket)
        if ticket[:1] != bytes((TICKET_FORMAT,)):
            raise DecodeError(f"unknown ticket format {ticket[0] if ticket else 'none'}")
        (_, farm, mac, session, issued, expires, mode, cache, version, disk_size, sector_size, length) = (
            _FIXED.unpack(reader.take(_FIXED.size))
        )
        name = reader.take(length)
        signature = reader.take(_SIGNATURE)
        if not reader.at_end():
            raise DecodeError(f"{reader.remaining} bytes after the signature")
        access = AccessModeCode(mode)
        cache_type = CacheType(cache)
        vdisk = name.decode()
    except (DecodeError, ValueError) as error:  # ValueError: an unknown enum value or bad UTF-8
        raise TicketError(ErrorCode.TICKET_MALFORMED, str(error)) from None
    if not hmac.compare_digest(farm, key_id(secret)):
        raise TicketError(ErrorCode.TICKET_WRONG_FARM, "signed by another farm's secret")
    if not hmac.compare_digest(signature, _sign(secret, ticket[:-_SIGNATURE])):
        raise TicketError(ErrorCode.TICKET_TAMPERED, "the signature does not match")
    if now_ms >= expires:
        raise TicketError(ErrorCode.TICKET_EXPIRED, f"expired {(now_ms - expires) / 1000:.0f} s ago")
    if issued - skew_ms > now_ms:
        raise TicketError(ErrorCode.TICKET_NOT_YET_VALID, "issued in the future")
    return Claims(
        mac=format_mac(mac),
        vdisk=vdisk,
        version=version,
        private=access is AccessModeCode.PRIVATE,
        cache=cache_type,
        session=session,
        issued_ms=issued,
        expires_ms=expires,
        disk_size=disk_size,
        sector_size=sector_size,
    )
