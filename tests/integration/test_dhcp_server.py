"""The proxy DHCP glue in-process on loopback: IP_PKTINFO in and out, the refusal counters and the
once-a-minute refusal lines with their counts."""

from __future__ import annotations

import asyncio
import errno
import socket

from support.dhcp_captures import IPXE_BIOS_DISCOVER, IPXE_BIOS_REQUEST_4011
from support.dhcp_hostile import ACK, BOOTREPLY, OFFER, packet
from support.log_events import Events

from pvsd.config import DhcpConfig
from pvsd.dhcp.codec import MessageType, decode
from pvsd.dhcp.server import DhcpServer, RefusalLog, boot_policy
from pvsd.net.interfaces import Interface, InterfaceTable, read_interfaces
from pvsd.net.pktinfo import PacketInfo, PktinfoEndpoint

ADDRESS = "127.0.0.31"


def test_refusal_log_says_the_first_at_once_then_once_an_interval_with_the_count() -> None:
    log = RefusalLog(interval=60.0)
    assert log.note("a", 0.0) == 1
    assert [log.note("a", t) for t in (1.0, 2.0, 59.0)] == [None, None, None]
    assert log.note("b", 3.0) == 1  # each key on its own
    assert log.pending() == {"a": 3}
    assert log.note("a", 60.5) == 4  # three quiet ones and this one
    assert log.note("a", 61.0) is None and log.note("a", 121.0) == 2
    assert log.pending() == {}


def test_refusal_log_stays_bounded() -> None:
    log = RefusalLog(interval=60.0, max_keys=100)
    for index in range(1000):
        assert log.note(f"key {index}", 0.0) == 1
    assert len(log.pending()) == 0 and len(log._keys) <= 100


def test_the_endpoint_learns_the_interface_and_answers_out_of_it() -> None:
    async def scenario() -> tuple[PacketInfo | None, bytes, tuple[str, int], OSError | None]:
        got: list[tuple[bytes, tuple[str, int], PacketInfo | None]] = []
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ADDRESS, 0))
        endpoint = PktinfoEndpoint(sock, lambda data, peer, info: got.append((data, peer, info)))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            client.settimeout(2)
            client.sendto(b"ping", endpoint.address)
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.01)
            _, peer, info = got[0]
            assert info is not None
            assert endpoint.send(b"pong", peer, info.ifindex, info.local) is None
            answer, source = await asyncio.to_thread(client.recvfrom, 100)
            bogus = endpoint.send(b"x", peer, ifindex=999_999)  # no such interface: reported, not raised
        endpoint.close()
        return info, answer, source, bogus

    info, answer, source, bogus = asyncio.run(scenario())
    assert info == PacketInfo(socket.if_nametoindex("lo"), ADDRESS, ADDRESS)
    assert answer == b"pong" and source[0] == ADDRESS
    assert bogus is not None


def _with_ciaddr(datagram: bytes, ciaddr: str) -> bytes:
    return datagram[:12] + socket.inet_aton(ciaddr) + datagram[16:]


def _run(server_address: str, datagrams: list[tuple[bytes, bool]]) -> tuple[DhcpServer, Events, list[bytes]]:
    """Start a DhcpServer on loopback, send each (datagram, to the PXE port?), collect the answers."""
    events = Events()
    config = DhcpConfig(port=0, pxe_port=0, bind=ADDRESS, per_mac_per_second=1000)

    async def scenario() -> tuple[DhcpServer, list[bytes]]:
        server = DhcpServer(
            config, boot_policy(config, server_address), ADDRESS, lambda mac: True, events.logger
        )
        await server.start()
        dhcp_port, pxe_port = server.ports
        answers: list[bytes] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            client.setblocking(False)
            for datagram, pxe in datagrams:
                client.sendto(datagram, (ADDRESS, pxe_port if pxe else dhcp_port))
            for _ in range(30):
                await asyncio.sleep(0.01)
                if server.stats.received == len(datagrams):
                    break
            await asyncio.sleep(0.05)
            while True:
                try:
                    answers.append(client.recv(2048))
                except BlockingIOError:
                    break
        await server.close()
        return server, answers

    server, answers = asyncio.run(scenario())
    return server, events, answers


def test_loopback_clients_are_answered_at_their_port_and_hostile_ones_are_counted() -> None:
    server, events, answers = _run(
        ADDRESS,
        [
            (_with_ciaddr(IPXE_BIOS_DISCOVER, "127.0.0.1"), False),  # answered, to our source port
            (_with_ciaddr(IPXE_BIOS_REQUEST_4011, "127.0.0.1"), True),  # answered from the PXE port
            (_with_ciaddr(IPXE_BIOS_DISCOVER, "224.0.0.1"), False),  # a multicast ciaddr
            (_with_ciaddr(IPXE_BIOS_DISCOVER, "224.0.0.1"), False),
            (_with_ciaddr(IPXE_BIOS_REQUEST_4011, "10.1.2.3"), True),  # ciaddr is not the source
            (packet(1, OFFER, op=BOOTREPLY), False),
            (packet(2, ACK, op=BOOTREPLY), True),
            (packet(3, ACK), True),
            (b"garbage", False),
        ],
    )
    kinds = sorted(decode(answer).message_type or 0 for answer in answers)
    assert kinds == [MessageType.OFFER, MessageType.ACK]
    stats = server.stats
    assert (stats.received, stats.malformed, stats.offers, stats.acks) == (9, 1, 1, 1)
    assert (stats.bad_destinations, stats.server_messages, stats.send_failures) == (3, 3, 0)
    assert stats.refusals == {
        "ciaddr is multicast": 2,
        "ciaddr is not the source address": 1,
        "op BOOTREPLY: only servers send it": 2,
        "message type ACK: only servers send it": 1,
    }
    unsafe = events.named("DHCP request refused: unsafe destination (logged once a minute per reason)")
    assert [(line["reason"], line["count"]) for line in unsafe] == [
        ("ciaddr is multicast", 1),  # the second one waits for the next line, a minute on
        ("ciaddr is not the source address", 1),
    ]
    assert unsafe[0]["detail"] == "ciaddr 224.0.0.1" and unsafe[0]["interface"] == "lo"
    # At close, what was counted since the last line is said once.
    assert events.named("proxy DHCP refusals not yet logged")[0]["counts"] == {
        "ciaddr is multicast lo": 1,
        "op BOOTREPLY: only servers send it lo": 1,
    }
    offers = events.named("proxy offer")
    assert len(offers) == 1 and offers[0]["to"].startswith("127.0.0.1:") and offers[0]["interface"] == "lo"


def test_an_address_this_host_does_not_have_is_not_offered_even_on_loopback() -> None:
    server, events, answers = _run(
        "10.255.255.254", [(_with_ciaddr(IPXE_BIOS_DISCOVER, "127.0.0.1"), False)] * 3
    )
    assert answers == [] and server.stats.unreachable == 3
    lines = events.named(
        "server address not reachable from the receiving interface; not answered (logged once a minute)"
    )
    assert len(lines) == 1 and lines[0]["count"] == 1
    assert lines[0]["address"] == "10.255.255.254" and lines[0]["subnets"] == ["127.0.0.1/8"]


def test_a_failed_interface_read_is_logged_and_the_last_table_used() -> None:
    """The table is re-read for every packet here (max_age 0) and every read after the first fails:
    requests are still answered from the last table, and the failure is logged once a minute."""
    reads = iter([read_interfaces()])

    def read() -> dict[int, Interface]:
        try:
            return next(reads)
        except StopIteration:
            raise OSError(errno.ENOBUFS, "No buffer space available") from None

    events = Events()
    config = DhcpConfig(port=0, pxe_port=0, bind=ADDRESS, per_mac_per_second=1000)

    async def scenario() -> tuple[DhcpServer, int]:
        table = InterfaceTable(max_age=0.0, read=read)
        server = DhcpServer(
            config, boot_policy(config, ADDRESS), ADDRESS, lambda mac: True, events.logger, table
        )
        await server.start()
        answers = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            client.settimeout(2)
            for _ in range(3):
                client.sendto(_with_ciaddr(IPXE_BIOS_DISCOVER, "127.0.0.1"), (ADDRESS, server.ports[0]))
                await asyncio.to_thread(client.recv, 2048)
                answers += 1
        await server.close()
        return server, answers

    server, answers = asyncio.run(scenario())
    assert answers == 3 and server.stats.offers == 3
    lines = events.named(
        "cannot read this host's interfaces; using the last ones read (logged once a minute)"
    )
    assert len(lines) == 1 and "No buffer space" in lines[0]["error"] and lines[0]["count"] == 1
