"""This host's network interfaces and their IPv4 subnets, read from the kernel over rtnetlink.

The proxy DHCP service asks which subnets the interface a request came in on has, so that it
never offers an address the client cannot reach and never answers to an address off that
link. One dump of links and one of IPv4 addresses cost well under a millisecond and no
subprocess, so the table is read at start and again when it is a few seconds old or a
request names an interface it does not know. `parse_links` and `parse_addresses` take the
kernel's bytes and touch no socket, for tests; malformed bytes raise DecodeError.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import os
import socket
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from pvsd.net.reader import DecodeError, Reader

__all__ = [
    "Interface",
    "InterfaceTable",
    "parse_addresses",
    "parse_links",
    "read_interfaces",
]

# linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h, linux/if.h
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), device type, index, flags, change mask
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
_RTATTR = struct.Struct("=HH")  # length, type
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
DUMP_TIMEOUT_S = 1.0
_sequence = itertools.count(1)


class NetlinkMessage(enum.IntEnum):
    """nlmsghdr types (linux/netlink.h, linux/rtnetlink.h)."""

    ERROR = 2
    DONE = 3
    NEWLINK = 16
    GETLINK = 18
    NEWADDR = 20
    GETADDR = 22


class LinkAttribute(enum.IntEnum):
    """IFLA_* (linux/if_link.h): the one pvsd reads."""

    IFNAME = 3


class AddressAttribute(enum.IntEnum):
    """IFA_* (linux/if_addr.h). For IPv4, LOCAL is this host's address; ADDRESS is the same,
    or the peer's on a point-to-point link."""

    ADDRESS = 1
    LOCAL = 2


@dataclass(frozen=True)
class Interface:
    index: int
    name: str
    loopback: bool
    up: bool
    addresses: tuple[ipaddress.IPv4Interface, ...] = ()
    """This host's IPv4 addresses on the interface, each with its prefix (its subnet)."""


def _align(length: int) -> int:
    return (length + 3) & ~3


def _messages(data: bytes) -> Iterator[tuple[int, Reader]]:
    """(type, payload) of each netlink message in one datagram."""
    reader = Reader(data)
    while reader.remaining >= _NLMSGHDR.size:
        length, kind, _, _, _ = _NLMSGHDR.unpack(reader.take(_NLMSGHDR.size))
        if length < _NLMSGHDR.size:
            raise DecodeError(f"netlink message length {length} is shorter than its header")
        body = reader.take(length - _NLMSGHDR.size)
        reader.take(min(_align(length) - length, reader.remaining))
        yield kind, Reader(body)


def _attributes(reader: Reader) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while reader.remaining >= _RTATTR.size:
        length, kind = _RTATTR.unpack(reader.take(_RTATTR.size))
        if length < _RTATTR.size:
            raise DecodeError(f"netlink attribute length {length} is shorter than its header")
        found.setdefault(kind, reader.take(length - _RTATTR.size))
        reader.take(min(_align(length) - length, reader.remaining))
    return found


def _check_error(kind: int, body: Reader) -> None:
    if kind == NetlinkMessage.ERROR:
        code = -struct.unpack("=i", body.take(4))[0]
        if code:
            raise OSError(code, f"rtnetlink: {os.strerror(code)}")


def parse_links(datagrams: list[bytes]) -> dict[int, tuple[str, int]]:
    """index -> (name, IFF_* flags) from the replies to an RTM_GETLINK dump."""
    links: dict[int, tuple[str, int]] = {}
    for data in datagrams:
        for kind, body in _messages(data):
            _check_error(kind, body)
            if kind != NetlinkMessage.NEWLINK:
                continue
            _, _, index, flags, _ = _IFINFOMSG.unpack(body.take(_IFINFOMSG.size))
            name = _attributes(body).get(LinkAttribute.IFNAME, b"").split(b"\0", 1)[0]
            links[index] = (name.decode("utf-8", "replace"), flags)
    return links


def parse_addresses(datagrams: list[bytes]) -> dict[int, list[ipaddress.IPv4Interface]]:
    """index -> IPv4 addresses with prefixes, from the replies to an RTM_GETADDR dump."""
    addresses: dict[int, list[ipaddress.IPv4Interface]] = {}
    for data in datagrams:
        for kind, body in _messages(data):
            _check_error(kind, body)
            if kind != NetlinkMessage.NEWADDR:
                continue
            family, prefix, _, _, index = _IFADDRMSG.unpack(body.take(_IFADDRMSG.size))
            if family != socket.AF_INET or prefix > 32:
                continue
            attributes = _attributes(body)
            local = attributes.get(AddressAttribute.LOCAL) or attributes.get(AddressAttribute.ADDRESS)
            if local is None or len(local) != 4:
                continue
            address = ipaddress.IPv4Address(local)
            addresses.setdefault(index, []).append(ipaddress.IPv4Interface((address, prefix)))
    return addresses


def _dump(sock: socket.socket, kind: NetlinkMessage, body: bytes) -> list[bytes]:
    """Send one dump request; return the datagrams of its answer, up to NLMSG_DONE."""
    sequence = next(_sequence) & 0xFFFFFFFF
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, sequence, 0)
    sock.send(header + body)
    replies: list[bytes] = []
    while True:
        data = sock.recv(1 << 16)
        replies.append(data)
        for message, payload in _messages(data):
            _check_error(message, payload)
            if message in (NetlinkMessage.DONE, NetlinkMessage.ERROR):
                return replies


def read_interfaces() -> dict[int, Interface]:
    """Every interface of this network namespace with its IPv4 addresses. Raises OSError."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(DUMP_TIMEOUT_S)
        sock.bind((0, 0))
        links = parse_links(
            _dump(sock, NetlinkMessage.GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        )
        addresses = parse_addresses(
            _dump(sock, NetlinkMessage.GETADDR, _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0))
        )
    return {
        index: Interface(
            index,
            name,
            loopback=bool(flags & IFF_LOOPBACK),
            up=bool(flags & IFF_UP),
            addresses=tuple(addresses.get(index, ())),
        )
        for index, (name, flags) in links.items()
    }


class InterfaceTable:
    """The interfaces as last read, re-read when `max_age` seconds old or asked for an unknown
    index (at most once a second, so a flood naming bogus indexes costs nothing). Time is
    passed in; a failed read keeps the last table and is returned to the caller."""

    def __init__(
        self, max_age: float = 5.0, read: Callable[[], Mapping[int, Interface]] = read_interfaces
    ) -> None:
        self.max_age = max_age
        self._read = read
        self._interfaces: Mapping[int, Interface] = {}
        self._host: frozenset[ipaddress.IPv4Address] = frozenset()
        self._read_at = -1e9
        self._miss_at = -1e9
        self.read_failures = 0
        self.last_error: OSError | None = None
        self.generation = 0
        """Goes up each time a read finds the interfaces changed (for callers that cache)."""

    def refresh(self, now: float) -> OSError | None:
        """Read the table now; returns the error when the read failed (the old table stays)."""
        self._read_at = now
        try:
            interfaces = self._read()
        except (OSError, DecodeError) as error:
            self.read_failures += 1
            self.last_error = error if isinstance(error, OSError) else OSError(0, f"rtnetlink: {error}")
            return self.last_error
        if interfaces != self._interfaces:
            self.generation += 1
            self._interfaces = interfaces
            self._host = frozenset(a.ip for i in interfaces.values() for a in i.addresses)
        return None

    def get(self, index: int, now: float) -> Interface | None:
        if now - self._read_at > self.max_age:
            self.refresh(now)
        found = self._interfaces.get(index)
        if found is None and now - self._miss_at > 1.0:
            self._miss_at = now
            self.refresh(now)
            found = self._interfaces.get(index)
        return found

    @property
    def host_addresses(self) -> frozenset[ipaddress.IPv4Address]:
        """Every IPv4 address of this host, on any interface."""
        return self._host

    @property
    def interfaces(self) -> Mapping[int, Interface]:
        return self._interfaces

    def loopback(self) -> Interface | None:
        return next((i for i in self._interfaces.values() if i.loopback), None)
