"""Tickets: round trip, and each way a ticket is refused has its own problem code."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvsd.stream.ticket import CacheType, Claims, TicketError, issue_ticket, verify_ticket
from pvsd.stream.wire import ErrorCode

SECRET = secrets.token_hex(32)
NOW = 1_795_600_000_000
CLAIMS = Claims(
    mac="52:54:00:12:34:56",
    vdisk="win10-lab",
    version=3,
    private=False,
    cache=CacheType.DEVICE_RAM_DISK,
    session=0xDEADBEEF01,
    issued_ms=NOW,
    expires_ms=NOW + 3_600_000,
    disk_size=8 << 30,
    sector_size=4096,
)


def refused(ticket: bytes, now: int = NOW + 1, secret: str = SECRET) -> ErrorCode:
    with pytest.raises(TicketError) as caught:
        verify_ticket(secret, ticket, now)
    return caught.value.code


def test_round_trip() -> None:
    ticket = issue_ticket(SECRET, CLAIMS)
    assert verify_ticket(SECRET, ticket, NOW + 1000) == CLAIMS
    private = Claims(**{**CLAIMS.__dict__, "private": True, "cache": CacheType.NONE, "vdisk": "ünïcode"})
    assert verify_ticket(SECRET, issue_ticket(SECRET, private), NOW) == private


def test_every_changed_byte_is_tampering_or_malformed() -> None:
    ticket = issue_ticket(SECRET, CLAIMS)
    for index in range(len(ticket)):
        changed = bytearray(ticket)
        changed[index] ^= 0x01
        assert refused(bytes(changed)) in (
            ErrorCode.TICKET_TAMPERED,
            ErrorCode.TICKET_MALFORMED,
            ErrorCode.TICKET_WRONG_FARM,
        )
    body = bytearray(ticket)
    body[20] ^= 0x01  # inside the session id: well-formed, wrong signature
    assert refused(bytes(body)) is ErrorCode.TICKET_TAMPERED


def test_expired_not_yet_valid_wrong_farm_malformed() -> None:
    ticket = issue_ticket(SECRET, CLAIMS)
    assert refused(ticket, now=CLAIMS.expires_ms) is ErrorCode.TICKET_EXPIRED
    assert refused(ticket, now=NOW - 120_000) is ErrorCode.TICKET_NOT_YET_VALID
    assert verify_ticket(SECRET, ticket, NOW - 30_000) == CLAIMS  # within the clock skew allowed
    assert refused(ticket, secret=secrets.token_hex(32)) is ErrorCode.TICKET_WRONG_FARM
    assert refused(ticket[:-1]) is ErrorCode.TICKET_MALFORMED
    assert refused(ticket + b"x") is ErrorCode.TICKET_MALFORMED
    assert refused(b"") is ErrorCode.TICKET_MALFORMED
    assert refused(b"\x01" + ticket[1:]) is ErrorCode.TICKET_MALFORMED  # the format before geometry


def test_messages_say_why() -> None:
    with pytest.raises(TicketError, match=r"ticket refused \(wrong farm\)"):
        verify_ticket(secrets.token_hex(32), issue_ticket(SECRET, CLAIMS), NOW)


@given(st.binary(max_size=120))
def test_any_bytes_are_refused_with_a_ticket_error_only(blob: bytes) -> None:
    with pytest.raises(TicketError):
        verify_ticket(SECRET, blob, NOW)


@given(st.integers(0, 100), st.integers(0, 255))
def test_damaged_tickets_never_verify(position: int, value: int) -> None:
    ticket = bytearray(issue_ticket(SECRET, CLAIMS))
    position %= len(ticket)
    if ticket[position] == value:
        return
    ticket[position] = value
    with pytest.raises(TicketError):
        verify_ticket(SECRET, bytes(ticket), NOW)
