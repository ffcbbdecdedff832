"""The login and I/O ports under hostile input: no reflection, no amplification, no traceback,
no log flood and no memory growth. Two real `pvsd serve` processes on 127.0.0.11/.12."""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import time
from pathlib import Path

from support.pvsd import wait_for
from support.spoof import LoopbackSniffer, send_spoofed
from support.stream import StreamFarm, stream_farm

from pvsd.stream.wire import (
    HEADER_SIZE,
    Data,
    ErrorCode,
    ErrorReply,
    Flush,
    Keepalive,
    Login,
    LoginReply,
    Logout,
    MessageType,
    Read,
    Redirect,
    ServerEntry,
    Write,
    WriteAck,
    decode,
    encode,
)

MAC = "52:54:00:00:00:00"
LOGIN_PORT = 6910
IO_PORTS = (6911, 6912)  # [stream] workers = 2
ONE, TWO = "127.0.0.11", "127.0.0.12"


def start_both(farm: StreamFarm) -> None:
    farm.start("pvs1")
    farm.start("pvs2")
    farm.wait_verified("disk")


def replies(sock: socket.socket, seconds: float) -> list[bytes]:
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(65536))
        except TimeoutError:
            break
    return got


def server_messages(request_id: int) -> list[bytes]:
    """One of each message only a server sends, as small as it can be."""
    return [
        encode(ErrorReply(ErrorCode.BAD_REQUEST, ""), request_id, 1),
        encode(
            LoginReply(
                io_address=ipaddress.IPv4Address(ONE),
                io_port=6911,
                disk_size=1 << 20,
                sector_size=512,
                private=False,
                cache_type=0,
                max_payload=1024,
                max_burst=4096,
                ticket=b"",
                servers=(ServerEntry("pvs2", ipaddress.IPv4Address(TWO), LOGIN_PORT),),
            ),
            request_id,
            1,
        ),
        encode(Redirect(ipaddress.IPv4Address(TWO), LOGIN_PORT), request_id, 1),
        encode(Data(0, b""), request_id, 1),
        encode(WriteAck(1), request_id, 1),
    ]


def test_a_spoofed_error_between_two_servers_is_one_packet_not_a_loop(tmp_path: Path) -> None:
    """The tryout's worst bug: an ERROR sent to one server with the other's address as its source
    set the two answering each other forever, at the login port and at the I/O ports alike."""
    with stream_farm(tmp_path, size=1 << 20) as farm:
        start_both(farm)
        pairs = [((TWO, LOGIN_PORT), (ONE, LOGIN_PORT)), ((TWO, IO_PORTS[0]), (ONE, IO_PORTS[0]))]
        for source, destination in pairs:
            for datagram in server_messages(request_id=77):
                with LoopbackSniffer({source[1], destination[1]}) as sniffer:
                    send_spoofed(source, destination, datagram)
                    seen = sniffer.drain(1.0)
                between = [p for p in seen if {p[0], p[1]} == {source, destination}]
                assert len(between) == 1, (source, destination, datagram[3], between[:5])
        for process in farm.processes.values():
            assert process.process.poll() is None


def test_no_reply_is_larger_than_its_request_without_a_ticket(tmp_path: Path) -> None:
    """The amplification audit of the login and I/O ports: each message type at its smallest,
    without a ticket, plus truncated and corrupted variants. No answer may exceed its request."""
    rng = random.Random(11)
    with stream_farm(tmp_path, size=1 << 20) as farm:
        start_both(farm)
        smallest = [
            encode(Login(MAC, 1400), 1),
            encode(Login(MAC, 1400, b"\1" * 40), 2),  # a forged ticket
            encode(Read(0, 512), 3, 5),
            encode(Write(0, 1, b"\0" * 512), 4, 5),
            encode(Flush(1), 5, 5),
            encode(Keepalive(), 6, 5),
            encode(Logout(), 7, 5),
            *server_messages(8),
        ]
        variants = list(smallest)
        for datagram in smallest:
            variants += [datagram[:cut] for cut in (HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1)]
            if len(datagram) > HEADER_SIZE:  # a body byte flipped
                corrupted = bytearray(datagram)
                corrupted[rng.randrange(HEADER_SIZE, len(corrupted))] ^= 0xFF
                variants.append(bytes(corrupted))
        for kind in MessageType:  # a bare header of every type
            variants.append(struct.pack("!HBBHIQ", 0x5056, 1, kind, 0, 9, 5))
        largest = 0.0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for port in (LOGIN_PORT, *IO_PORTS):
                for datagram in variants:
                    sock.sendto(datagram, (ONE, port))
                    for reply in replies(sock, 0.2):
                        assert len(reply) <= len(datagram), (port, datagram.hex(), reply.hex())
                        largest = max(largest, len(reply) / len(datagram))
        print(f"largest reply/request ratio without a ticket: {largest:.2f}")


def test_a_replayed_answer_goes_only_to_a_copy_that_meets_the_padding_rule(tmp_path: Path) -> None:
    """After one real 512-byte LOGIN, a 28-byte copy with its request id got the whole
    LOGIN_REPLY, ticket and all; and an 18-byte KEEPALIVE got a 21-byte ERROR."""
    with stream_farm(tmp_path, size=1 << 20) as farm:
        farm.start("pvs1")
        farm.wait_verified("disk", ("pvs1",))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            padded = encode(Login(MAC, 1400, b"", 512 - 28), 42)
            sock.sendto(padded, (ONE, LOGIN_PORT))
            _, reply = decode(sock.recv(65536))
            assert isinstance(reply, LoginReply)
            short = encode(Login(MAC, 1400), 42)
            assert len(short) == 28
            sock.sendto(short, (ONE, LOGIN_PORT))
            answers = replies(sock, 1.0)
            assert all(len(answer) <= len(short) for answer in answers), [len(a) for a in answers]
            sock.sendto(padded, (ONE, LOGIN_PORT))  # the full copy still gets the same answer
            again = replies(sock, 1.0)
            assert again and isinstance(decode(again[0])[1], LoginReply)
            keepalive = encode(Keepalive(), 43)
            assert len(keepalive) == 18
            sock.sendto(keepalive, (ONE, LOGIN_PORT))
            assert all(len(answer) <= 18 for answer in replies(sock, 1.0))


def test_a_multicast_broadcast_or_zero_mac_is_a_bad_request_not_a_traceback(tmp_path: Path) -> None:
    with stream_farm(tmp_path, size=1 << 20, log__level="debug") as farm:
        farm.start("pvs1")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            for index, mac in enumerate(("01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00")):
                sock.sendto(encode(Login(mac, 1400, b"", 512), index), (ONE, LOGIN_PORT))
                _, reply = decode(sock.recv(65536))
                assert isinstance(reply, ErrorReply) and reply.code == ErrorCode.BAD_REQUEST, reply
        events = farm.processes["pvs1"].log_events()
        refused = [e for e in events if e["event"] == "login refused"]
        assert len(refused) == 3 and {e["level"] for e in refused} == {"debug"}, refused
        assert not [e for e in events if "exception" in e or e["level"] == "error"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def family(pid: int) -> list[int]:
    """The process and its children (the I/O and TFTP workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


def test_a_flood_of_random_mac_logins_neither_grows_memory_nor_floods_the_log(tmp_path: Path) -> None:
    count = 3000
    rng = random.Random(5)
    with stream_farm(tmp_path, size=1 << 20) as farm:
        process = farm.start("pvs1")
        farm.wait_verified("disk", ("pvs1",))
        pids = family(process.process.pid)
        before = {pid: rss_kib(pid) for pid in pids}
        answered = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.001)
            for index in range(count):
                mac = "52:54:01:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
                sock.sendto(encode(Login(mac, 1400, b"", 512), index), (ONE, LOGIN_PORT))
                answered += len(replies(sock, 0.0 if index % 50 else 0.5))
            deadline = time.monotonic() + 60
            while answered < count * 0.95 and time.monotonic() < deadline:
                answered += len(replies(sock, 0.5))
        assert answered >= count * 0.95, answered  # the rest dropped past max_pending, by design
        wait_for(lambda: process.process.poll() is None, timeout=1)
        after = {pid: rss_kib(pid) for pid in pids}
        grown = {pid: (after[pid] - before[pid]) // 1024 for pid in pids}
        print(f"RSS MiB before {before}, after {after}")
        assert all(mib <= 8 for mib in grown.values()), grown
        lines = [e for e in process.log_events() if e["event"] == "login refused"]
        assert 1 <= len(lines) <= 3, len(lines)  # one line a minute per code, with a count
        assert lines[0]["refusals"] >= 1
        assert process.log.stat().st_size < 1 << 20
