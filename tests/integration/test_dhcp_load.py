"""Proxy DHCP under load from perfdhcp (ISC Kea's load generator, Debian kea-admin), on loopback.

perfdhcp given a unicast server address acts as a relay: it sets giaddr to its local address
(`-l`) and listens on port 67 of that address, where a server sends relayed replies. So pvsd
listens on 127.0.0.21:67 and perfdhcp on 127.0.0.1:67: two loopback addresses, both on port
67, nothing on 0.0.0.0 and nothing sent outside 127.0.0.0/8. Binding port 67 needs root.
perfdhcp's `-l` must be an address some interface has (`-l 127.0.0.22` fails with "There is
no such address"), hence 127.0.0.1, the one address of lo. `-W` keeps it listening after
its last DISCOVER; without it, it exits before the last offers arrive and counts them lost.

perfdhcp takes its `-R` client MACs in turn (00:0c:01:02:03:04, ...:05, ... modulo -R), so
with 10,000 clients and about 3,000 DISCOVERs (1,000/s for 3 s) each MAC sends once and the
per-MAC limit (5 a second, the default) is never reached: every DISCOVER must be answered.
The test counts pvsd's own "proxy offer" log lines for that: pvsd must answer
every DISCOVER perfdhcp sent. perfdhcp's receive buffer is 32 KiB (about 40 offers), so on
a loaded machine it can miss a few offers pvsd did send; a loss of at most 0.5% on its side
is tolerated for that reason alone. Then one MAC at 100 DISCOVERs/s must get just its 5 a
second, and a normal DISCOVER and a 4011 REQUEST must still be answered.
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest
from support import needs
from support.dhcp_captures import IPXE_BIOS_DISCOVER, IPXE_BIOS_REQUEST_4011
from support.net import free_port
from support.pvsd import ServeProcess, pvsd, pvsd_env, serve, wait_for

from pvsd.dhcp.codec import NO_ADDRESS, MessageType, decode

PVSD_ADDRESS = "127.0.0.21"  # pvsd's port 67
PERFDHCP_ADDRESS = "127.0.0.1"  # perfdhcp's port 67: the relay address (giaddr) pvsd answers to
VENDOR_CLASS = b"PXEClient:Arch:00000:UNDI:002001"  # BIOS iPXE, as in DESIGN.md section 5
CLIENTS = 10_000  # more than the DISCOVERs sent: each MAC sends once
RATE = 1_000  # DISCOVERs a second
SECONDS = 3
PERFDHCP_TIMEOUT = 30.0
MAX_CLIENT_SIDE_LOSS = 0.005


def perfdhcp() -> str:
    """perfdhcp's path (`make test` installs it); the test binds port 67, so it needs root."""
    path = needs.tool("perfdhcp", "kea-admin")
    needs.root("perfdhcp binds port 67")
    return path


def port_67_free_or_fail() -> None:
    """perfdhcp binds port 67 without SO_REUSEADDR: anything on 0.0.0.0:67 (a real DHCP server) breaks it."""
    for address in (PERFDHCP_ADDRESS, PVSD_ADDRESS):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((address, 67))
            except OSError as error:
                pytest.fail(f"UDP {address}:67 is taken ({error}); stop the DHCP server using port 67")


def ask(
    address: str, port: int, datagram: bytes, timeout: float = 2.0
) -> tuple[bytes, tuple[str, int]] | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        sock.sendto(datagram, (address, port))
        try:
            data, peer = sock.recvfrom(2048)
        except TimeoutError:
            return None
        return data, (str(peer[0]), int(peer[1]))


def as_unicast(datagram: bytes, ciaddr: str = "127.0.0.1") -> bytes:
    """The captured packet with ciaddr set, so that the reply comes back to us instead of to broadcast."""
    return datagram[:12] + socket.inet_aton(ciaddr) + datagram[16:]


def counter(output: str, name: str) -> int:
    found = re.search(rf"^{name}: (\d+)$", output, re.MULTILINE)
    assert found is not None, f"no '{name}' in perfdhcp's output:\n{output}"
    return int(found.group(1))


def offers_logged(process: ServeProcess) -> int:
    return sum(1 for event in process.log_events() if event.get("event") == "proxy offer")


def run_perfdhcp(argv: list[str]) -> str:
    """Run perfdhcp to the end and return what it printed."""
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=PERFDHCP_TIMEOUT, check=False, stdin=subprocess.DEVNULL
    )
    output = done.stdout + done.stderr
    # 0: every exchange completed; 3: some did not (the caller checks how many); else a failure.
    assert done.returncode in (0, 3), f"perfdhcp exited with {done.returncode}:\n{output}"
    return output


def test_perfdhcp_load_gets_an_offer_for_every_discover(tmp_path: Path) -> None:
    perfdhcp_path = perfdhcp()
    port_67_free_or_fail()
    pxe_port = free_port(PVSD_ADDRESS, socket.SOCK_DGRAM)
    env = pvsd_env(
        f"sqlite:///{tmp_path}/farm.db",
        dhcp__enabled="true",
        dhcp__bind=PVSD_ADDRESS,
        dhcp__port="67",  # relayed replies go to giaddr:67, so pvsd must serve port 67 too
        dhcp__pxe_port=str(pxe_port),
        tftp__enabled="false",
        login__enabled="false",
        stream__enabled="false",
        api__enabled="false",
    )
    assert pvsd(env, "farm", "init").returncode == 0
    argv = [
        perfdhcp_path,
        "-4",
        "-l",
        PERFDHCP_ADDRESS,
        "-i",  # DISCOVER-OFFER only
        "-o",
        f"60,{VENDOR_CLASS.hex()}",
        "-o",
        "93,0000",
        "-R",
        str(CLIENTS),
        "-s",
        "7",  # the same MACs every run
        "-r",
        str(RATE),
        "-p",
        str(SECONDS),
        "-d",
        "2",  # an offer later than this counts as lost
        "-W",
        "500000",  # after the last DISCOVER, wait 0.5 s for the last offers
        PVSD_ADDRESS,
    ]
    with serve(env, "pvs1", PVSD_ADDRESS, tmp_path) as process:
        wait_for(lambda: "proxy DHCP listening" in process.log_text(), timeout=20)
        output = run_perfdhcp(argv)
        sent, received = counter(output, "sent packets"), counter(output, "received packets")
        assert process.process.poll() is None, f"pvsd died under load:\n{process.log_text()[-2000:]}"
        assert sent >= RATE * SECONDS * 0.9, f"perfdhcp sent only {sent} DISCOVERs:\n{output}"
        assert counter(output, "Malformed packets") == 0, output
        assert counter(output, "orphans") == 0, output  # no offer for a DISCOVER perfdhcp never sent

        # pvsd answered every DISCOVER: none dropped by the per-MAC limit, the queue or a full buffer.
        wait_for(lambda: offers_logged(process) >= sent, timeout=10)
        assert offers_logged(process) == sent
        assert received <= sent
        assert sent - received <= sent * MAX_CLIENT_SIDE_LOSS, (
            f"perfdhcp received {received} of {sent} offers pvsd sent:\n{output}"
        )

        # One MAC at 100 DISCOVERs/s for 2 s: pvsd answers 5 a second (per_mac_per_second's default),
        # so 5 to 15 offers across the two or three whole seconds the run touches, and stays up.
        one_mac = [*argv[:-1], PVSD_ADDRESS]
        one_mac[one_mac.index("-R") + 1] = "1"
        one_mac[one_mac.index("-r") + 1] = "100"
        one_mac[one_mac.index("-p") + 1] = "2"
        before = offers_logged(process)
        output = run_perfdhcp(one_mac)
        limited_sent, limited_received = counter(output, "sent packets"), counter(output, "received packets")
        assert limited_sent >= 150, output
        assert 5 <= limited_received <= 15, f"one MAC got {limited_received} offers in 2 s:\n{output}"
        wait_for(lambda: offers_logged(process) - before >= limited_received, timeout=5)
        assert offers_logged(process) - before == limited_received
        assert process.process.poll() is None

        # A normal client still gets its offer and its 4011 ACK afterwards.
        answer = ask(PVSD_ADDRESS, 67, as_unicast(IPXE_BIOS_DISCOVER))
        assert answer is not None, "no offer for a normal DISCOVER after the load"
        offer = decode(answer[0])
        assert offer.message_type == MessageType.OFFER and offer.yiaddr == NO_ADDRESS
        assert str(offer.siaddr) == PVSD_ADDRESS and offer.xid == 0x9DF80A5D
        answer = ask(PVSD_ADDRESS, pxe_port, as_unicast(IPXE_BIOS_REQUEST_4011))
        assert answer is not None, "no ACK on 4011 after the load"
        assert answer[1] == (PVSD_ADDRESS, pxe_port)
        assert decode(answer[0]).message_type == MessageType.ACK
        assert process.process.poll() is None
