"""The proxy DHCP service inside `pvsd serve`, on loopback: captured iPXE packets in, offers and ACKs out."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.dhcp_captures import IPXE_BIOS_DISCOVER, IPXE_BIOS_REQUEST_4011
from support.net import free_port
from support.pvsd import ServeProcess, pvsd, pvsd_env, serve, wait_for

from pvsd.dhcp.codec import NO_ADDRESS, MessageType, Option, decode

ADDRESS = "127.0.0.11"


@contextmanager
def proxy_server(folder: Path, **keys: str) -> Iterator[tuple[ServeProcess, int, int, dict[str, str]]]:
    """`pvsd serve` with only proxy DHCP, on free ports of ADDRESS: (process, dhcp port, pxe port, env)."""
    dhcp_port, pxe_port = free_port(ADDRESS, socket.SOCK_DGRAM), free_port(ADDRESS, socket.SOCK_DGRAM)
    env = pvsd_env(
        f"sqlite:///{folder}/farm.db",
        dhcp__enabled="true",
        dhcp__bind=ADDRESS,
        dhcp__port=str(dhcp_port),
        dhcp__pxe_port=str(pxe_port),
        tftp__enabled="false",
        **keys,
    )
    assert pvsd(env, "farm", "init").returncode == 0
    with serve(env, "pvs1", ADDRESS, folder) as process:
        wait_for(lambda: "proxy DHCP listening" in process.log_text(), timeout=20)
        yield process, dhcp_port, pxe_port, env


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[ServeProcess, int, int]]:
    with proxy_server(tmp_path, dhcp__per_mac_per_second="1000") as (process, dhcp_port, pxe_port, _):
        yield process, dhcp_port, pxe_port


def ask(port: int, datagram: bytes, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]] | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout)
        sock.sendto(datagram, (ADDRESS, port))
        try:
            return sock.recvfrom(2048)
        except TimeoutError:
            return None


def as_unicast(datagram: bytes, ciaddr: str = "127.0.0.1") -> bytes:
    """The captured packet with ciaddr set, so the reply comes back to us instead of to broadcast."""
    return datagram[:12] + socket.inet_aton(ciaddr) + datagram[16:]


def test_ipxe_discover_gets_a_proxy_offer_with_the_script(proxy: tuple[ServeProcess, int, int]) -> None:
    process, dhcp_port, _ = proxy
    answer = ask(dhcp_port, as_unicast(IPXE_BIOS_DISCOVER))
    assert answer is not None
    offer = decode(answer[0])
    assert offer.message_type == MessageType.OFFER
    assert offer.yiaddr == NO_ADDRESS and str(offer.siaddr) == ADDRESS
    assert offer.file == b"pvs.ipxe" and offer.xid == 0x9DF80A5D
    assert offer.option(Option.VENDOR_CLASS) == b"PXEClient"
    wait_for(lambda: "proxy offer" in process.log_text(), timeout=5)
    assert '"mac": "52:54:00:12:34:56"' in process.log_text()


def test_the_request_on_4011_is_answered_from_4011(proxy: tuple[ServeProcess, int, int]) -> None:
    _, _, pxe_port = proxy
    answer = ask(pxe_port, as_unicast(IPXE_BIOS_REQUEST_4011))
    assert answer is not None
    ack, source = decode(answer[0]), answer[1]
    assert source == (ADDRESS, pxe_port)
    assert ack.message_type == MessageType.ACK and ack.file == b"pvs.ipxe" and ack.yiaddr == NO_ADDRESS


def test_non_pxe_clients_and_garbage_get_nothing_and_hurt_nothing(
    proxy: tuple[ServeProcess, int, int],
) -> None:
    process, dhcp_port, _ = proxy
    plain = as_unicast(IPXE_BIOS_DISCOVER).replace(
        b"PXEClient:Arch:00000:UNDI:002001", b"MSFT 5.0" + b"x" * 24
    )
    assert ask(dhcp_port, plain, timeout=0.5) is None
    rng = random.Random(3)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(3000):
            size = rng.choice([0, 1, 100, 236, 240, 300, 600])
            head = IPXE_BIOS_DISCOVER[: rng.choice([0, 240, 250])]
            sock.sendto((head + rng.randbytes(size))[:1400], (ADDRESS, dhcp_port))
    assert process.process.poll() is None
    # The flood filled the socket buffer, so the first retry may be dropped, as for any UDP client.
    wait_for(lambda: ask(dhcp_port, as_unicast(IPXE_BIOS_DISCOVER), timeout=0.5) is not None, timeout=10)


def test_answer_known_ignores_unknown_macs_until_they_are_added(tmp_path: Path) -> None:
    settings = {"dhcp__answer": "known", "farm__heartbeat_interval": "0.5", "farm__dead_after": "3"}
    with proxy_server(tmp_path, **settings) as (process, dhcp_port, _, env):
        assert ask(dhcp_port, as_unicast(IPXE_BIOS_DISCOVER), timeout=0.5) is None
        assert ask(dhcp_port, as_unicast(IPXE_BIOS_DISCOVER), timeout=0.5) is None
        assert process.log_text().count("unknown MAC") == 1  # once a minute, not per packet
        assert pvsd(env, "device", "add", "52:54:00:12:34:56", "--name", "vm1").returncode == 0
        wait_for(lambda: ask(dhcp_port, as_unicast(IPXE_BIOS_DISCOVER), timeout=0.5) is not None, timeout=10)
