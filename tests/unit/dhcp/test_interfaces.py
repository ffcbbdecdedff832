"""The interface table proxy DHCP checks addresses against (pvsd/net/interfaces.py): rtnetlink
replies parsed from bytes, the real dump of this namespace, and when the table is read again."""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import IPv4Interface

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvsd.net.interfaces import (
    IFF_LOOPBACK,
    IFF_UP,
    Interface,
    InterfaceTable,
    NetlinkMessage,
    parse_addresses,
    parse_links,
    read_interfaces,
)
from pvsd.net.reader import DecodeError


def attribute(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def message(kind: int, body: bytes) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), kind, 2, 1, 0) + body
    return raw + b"\0" * (-len(raw) % 4)


def link(index: int, name: str, flags: int) -> bytes:
    return message(
        NetlinkMessage.NEWLINK,
        struct.pack("=BxHiII", 0, 1, index, flags, 0) + attribute(3, name.encode() + b"\0"),
    )


def address(index: int, local: str, prefix: int, peer: str | None = None) -> bytes:
    attributes = attribute(1, socket.inet_aton(peer or local)) + attribute(2, socket.inet_aton(local))
    return message(
        NetlinkMessage.NEWADDR, struct.pack("=BBBBI", socket.AF_INET, prefix, 0, 0, index) + attributes
    )


DONE = message(NetlinkMessage.DONE, b"\0\0\0\0")


def test_links_and_addresses_are_parsed_from_the_kernels_replies() -> None:
    links = parse_links(
        [link(1, "lo", IFF_UP | IFF_LOOPBACK) + link(2, "s1", IFF_UP), link(3, "s2", 0) + DONE]
    )
    assert links == {1: ("lo", IFF_UP | IFF_LOOPBACK), 2: ("s1", IFF_UP), 3: ("s2", 0)}
    addresses = parse_addresses(
        [
            address(1, "127.0.0.1", 8)
            + address(2, "10.91.1.1", 24)
            + address(2, "10.91.1.50", 24)
            + address(3, "10.0.0.1", 32, peer="10.0.0.2")  # point to point: LOCAL is ours
            + DONE
        ]
    )
    assert addresses == {
        1: [IPv4Interface("127.0.0.1/8")],
        2: [IPv4Interface("10.91.1.1/24"), IPv4Interface("10.91.1.50/24")],
        3: [IPv4Interface("10.0.0.1/32")],
    }


def test_a_netlink_error_is_an_oserror() -> None:
    with pytest.raises(OSError, match="rtnetlink") as raised:
        parse_links([message(NetlinkMessage.ERROR, struct.pack("=i", -errno.EPERM) + b"\0" * 16)])
    assert raised.value.errno == errno.EPERM


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_decode_error(data: bytes) -> None:
    for parse in (parse_links, parse_addresses):
        try:
            parse([data])
        except DecodeError:
            pass
        except OSError as error:
            assert "rtnetlink" in str(error)  # the bytes happened to be an error message


def test_this_namespace_has_a_loopback_with_127_0_0_1() -> None:
    interfaces = read_interfaces()
    loopback = [i for i in interfaces.values() if i.loopback]
    assert len(loopback) == 1 and loopback[0].name == "lo"
    assert IPv4Interface("127.0.0.1/8") in loopback[0].addresses
    assert socket.if_nametoindex("lo") == loopback[0].index


def test_the_table_is_read_again_when_old_or_asked_for_an_unknown_interface() -> None:
    reads: list[int] = []
    tables = [
        {1: Interface(1, "lo", True, True, (IPv4Interface("127.0.0.1/8"),))},
        {
            1: Interface(1, "lo", True, True, (IPv4Interface("127.0.0.1/8"),)),
            2: Interface(2, "s1", False, True, (IPv4Interface("10.91.1.1/24"),)),
        },
    ]

    def read() -> dict[int, Interface]:
        reads.append(1)
        return tables[min(len(reads), len(tables)) - 1]

    table = InterfaceTable(max_age=5.0, read=read)
    assert table.refresh(0.0) is None and len(reads) == 1
    assert table.generation == 1
    assert table.get(1, 1.0) is not None and len(reads) == 1  # fresh: no read
    assert table.get(2, 1.5) is not None and len(reads) == 2  # unknown: read again, found
    assert table.generation == 2  # changed: callers drop what they cached
    assert table.get(9, 1.6) is None and len(reads) == 2  # unknown again within a second: no read
    assert table.get(9, 2.7) is None and len(reads) == 3
    assert table.get(1, 9.0) is not None and len(reads) == 4  # older than max_age
    assert table.generation == 2  # read again, but nothing changed
    assert table.host_addresses == {IPv4Interface("127.0.0.1/8").ip, IPv4Interface("10.91.1.1/24").ip}


def test_a_failed_read_keeps_the_last_table() -> None:
    calls = iter([{1: Interface(1, "lo", True, True)}, OSError(errno.EMFILE, "too many open files")])

    def read() -> dict[int, Interface]:
        outcome = next(calls)
        if isinstance(outcome, OSError):
            raise outcome
        return outcome

    table = InterfaceTable(read=read)
    assert table.refresh(0.0) is None
    error = table.refresh(10.0)
    assert error is not None and error.errno == errno.EMFILE
    assert table.get(1, 10.0) is not None
