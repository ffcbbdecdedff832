"""The proxy policy as tables: architecture, firmware vs iPXE, known vs unknown MAC, direct vs 4011."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from support.dhcp_captures import (
    IPXE_BIOS_DISCOVER,
    IPXE_BIOS_REQUEST_4011,
    IPXE_UEFI_DISCOVER,
    OVMF_DISCOVER,
    OVMF_REQUEST,
    PVSD_OFFER_TO_IPXE_UEFI,
    PVSD_OFFER_TO_OVMF,
)

from pvsd.dhcp.codec import (
    NO_ADDRESS,
    DhcpPacket,
    MessageType,
    Op,
    Option,
    PxeOptions,
    decode,
    decode_pxe_options,
)
from pvsd.dhcp.policy import (
    ArchFamily,
    Arrival,
    BootPolicy,
    Destination,
    Strategy,
    decide,
    reply_destination,
)

SERVER = ipaddress.IPv4Address("10.77.0.11")
MAC = bytes.fromhex("525400123456")
LAN = (ipaddress.IPv4Interface("10.77.0.11/24"),)  # the receiving interface: pvsd's address on the lab LAN
CLIENT = ipaddress.IPv4Address("10.77.0.157")  # the captured iPXE client's address
# A broadcast DISCOVER on the LAN, and a client's REQUEST to 4011 from its address and port 68.
ON_67 = Arrival((ipaddress.IPv4Address(0), 68), False, "eth0", subnets=LAN)
ON_4011 = Arrival((CLIENT, 68), True, "eth0", subnets=LAN)
POLICY = BootPolicy(
    server=SERVER,
    bootfiles={
        ArchFamily.BIOS: "undionly.kpxe",
        ArchFamily.UEFI_X64: "snponly.efi",
        ArchFamily.UEFI_ARM64: "",
    },
    strategies={ArchFamily.UEFI_X64: Strategy.DIRECT},
)


def discover(
    arch: int | None = 0,
    vendor: bytes = b"PXEClient:Arch:00000:UNDI:002001",
    user_class: bytes | None = None,
    uuid: bool = True,
    kind: MessageType = MessageType.DISCOVER,
    extra: tuple[tuple[int, bytes], ...] = (),
) -> DhcpPacket:
    options: list[tuple[int, bytes]] = [(Option.MESSAGE_TYPE, bytes((kind,))), (Option.VENDOR_CLASS, vendor)]
    if arch is not None:
        options.append((Option.CLIENT_ARCH, arch.to_bytes(2, "big")))
    if user_class is not None:
        options.append((Option.USER_CLASS, user_class))
    if uuid:
        options.append((Option.CLIENT_UUID, b"\x00" + bytes(range(16))))
    return DhcpPacket(op=Op.BOOTREQUEST, xid=42, chaddr=MAC, options=(*options, *extra))


def known(_: str) -> bool:
    return True


@pytest.mark.parametrize(
    ("arch", "user_class", "bootfile", "family"),
    [
        (0, None, "undionly.kpxe", ArchFamily.BIOS),
        (None, None, "undionly.kpxe", ArchFamily.BIOS),  # option 93 missing: a legacy BIOS ROM
        (7, None, "snponly.efi", ArchFamily.UEFI_X64),
        (9, None, "snponly.efi", ArchFamily.UEFI_X64),  # 7 and 9 are both x64 UEFI
        (0, b"iPXE", "pvs.ipxe", ArchFamily.BIOS),
        (7, b"iPXE", "pvs.ipxe", ArchFamily.UEFI_X64),
        (11, b"iPXE", "pvs.ipxe", ArchFamily.UEFI_ARM64),  # iPXE is answered even without a binary
    ],
)
def test_boot_file_by_architecture_and_by_ipxe(
    arch: int | None, user_class: bytes | None, bootfile: str, family: ArchFamily
) -> None:
    decision = decide(discover(arch, user_class=user_class), ON_67, known, POLICY)
    assert decision.reply is not None, decision.reason
    assert (decision.bootfile, decision.family, decision.ipxe) == (bootfile, family, user_class is not None)
    reply = decision.reply
    assert reply.op == Op.BOOTREPLY and reply.xid == 42 and reply.chaddr == MAC
    assert reply.yiaddr == NO_ADDRESS and reply.siaddr == SERVER
    assert reply.message_type == MessageType.OFFER
    assert reply.option(Option.SERVER_ID) == SERVER.packed
    assert reply.option(Option.VENDOR_CLASS) == b"PXEClient"
    assert reply.option(Option.CLIENT_UUID) == b"\x00" + bytes(range(16))
    assert reply.file == bootfile.encode()
    assert decode_pxe_options(reply.option(Option.VENDOR_SPECIFIC) or b"") == PxeOptions(discovery_control=8)


def test_option_175_alone_marks_ipxe() -> None:
    decision = decide(
        discover(extra=((Option.IPXE_ENCAPSULATED, b"\xb1\x05\x01\x80\x86\x10\x0e"),)), ON_67, known, POLICY
    )
    assert decision.bootfile == "pvs.ipxe"


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (discover(vendor=b"MSFT 5.0"), "not a PXE"),
        (discover(vendor=b""), "not a PXE"),
        (discover(arch=11), "no boot file for arch 11"),
        (discover(arch=6), "no boot file for arch 6"),
        (discover(arch=1234), "no boot file for arch 1234"),
        (discover(arch=16, vendor=b"HTTPClient:Arch:00016:UNDI:003001"), "HTTP is not enabled"),
        (discover(kind=MessageType.REQUEST), "message type 3"),
        (dataclasses.replace(discover(), op=Op.BOOTREPLY), "op BOOTREPLY: only servers send it"),
    ],
)
def test_requests_that_get_no_answer_say_why(request_: DhcpPacket, reason: str) -> None:
    decision = decide(request_, ON_67, known, POLICY)
    assert decision.reply is None
    assert reason in decision.reason


def test_a_missing_option_97_is_tolerated_and_not_echoed() -> None:
    reply = decide(discover(uuid=False), ON_67, known, POLICY).reply
    assert reply is not None and reply.option(Option.CLIENT_UUID) is None


def test_answer_known_only_answers_registered_macs() -> None:
    only_known = dataclasses.replace(POLICY, answer_all=False)
    assert decide(discover(), ON_67, lambda mac: False, only_known).reply is None
    assert "unknown MAC" in decide(discover(), ON_67, lambda mac: False, only_known).reason
    assert decide(discover(), ON_67, lambda mac: mac == "52:54:00:12:34:56", only_known).reply is not None


def test_via_4011_offers_no_pxe_options_then_answers_the_request_on_4011() -> None:
    via = dataclasses.replace(POLICY, strategies={ArchFamily.UEFI_X64: Strategy.VIA_4011})
    offer = decide(discover(7), ON_67, known, via).reply
    assert offer is not None
    assert offer.option(Option.VENDOR_SPECIFIC) is None and offer.file == b""
    ack = decide(discover(7, kind=MessageType.REQUEST), ON_4011, known, via).reply
    assert ack is not None and ack.message_type == MessageType.ACK and ack.file == b"snponly.efi"
    assert ack.yiaddr == NO_ADDRESS


def test_the_captured_ipxe_request_on_4011_gets_the_script_and_its_boot_item_back() -> None:
    decision = decide(decode(IPXE_BIOS_REQUEST_4011), ON_4011, known, POLICY)
    assert decision.reply is not None and decision.bootfile == "pvs.ipxe"
    pxe = decode_pxe_options(decision.reply.option(Option.VENDOR_SPECIFIC) or b"")
    assert pxe.boot_item == (0x8000, 0)


def test_the_captured_ipxe_discover_gets_an_offer_with_the_script() -> None:
    decision = decide(decode(IPXE_BIOS_DISCOVER), ON_67, known, POLICY)
    assert decision.reply is not None and decision.reply.file == b"pvs.ipxe"


def test_uefi_http_boot_gets_a_url_when_http_is_on() -> None:
    http = dataclasses.replace(
        POLICY, http_base="http://10.77.0.11:54321/boot/", bootfiles={ArchFamily.HTTP_X64: "ipxe.efi"}
    )
    reply = decide(discover(16, vendor=b"HTTPClient:Arch:00016:UNDI:003001"), ON_67, known, http).reply
    assert reply is not None
    assert reply.file == b"http://10.77.0.11:54321/boot/ipxe.efi"
    assert reply.option(Option.VENDOR_CLASS) == b"HTTPClient"


def _arrival(source: tuple[str, int], on_4011: bool) -> Arrival:
    return Arrival((ipaddress.IPv4Address(source[0]), source[1]), on_4011, "eth0", subnets=LAN)


@pytest.mark.parametrize(
    ("changes", "source", "on_4011", "destination"),
    [
        ({}, ("0.0.0.0", 68), False, Destination(ipaddress.IPv4Address("255.255.255.255"), 68)),
        (
            {"flags": 0x8000, "ciaddr": ipaddress.IPv4Address("10.77.0.5")},
            ("10.77.0.5", 68),
            False,
            Destination(ipaddress.IPv4Address("255.255.255.255"), 68),
        ),
        (
            {"ciaddr": ipaddress.IPv4Address("10.77.0.5")},
            ("10.77.0.5", 68),
            False,
            Destination(ipaddress.IPv4Address("10.77.0.5"), 68),
        ),
        (
            {"ciaddr": ipaddress.IPv4Address("10.77.0.5")},
            ("10.77.0.5", 1068),  # off loopback, a client with an address is answered on 68
            False,
            Destination(ipaddress.IPv4Address("10.77.0.5"), 68),
        ),
        (
            {"giaddr": ipaddress.IPv4Address("10.77.0.1")},
            ("10.77.0.1", 67),
            False,
            Destination(ipaddress.IPv4Address("10.77.0.1"), 67),
        ),
        (
            {"ciaddr": ipaddress.IPv4Address("10.77.0.5")},
            ("10.77.0.5", 68),
            True,
            Destination(ipaddress.IPv4Address("10.77.0.5"), 68),
        ),
        ({}, ("10.77.0.7", 1068), True, Destination(ipaddress.IPv4Address("10.77.0.7"), 1068)),
    ],
)
def test_reply_destination(
    changes: dict[str, object], source: tuple[str, int], on_4011: bool, destination: Destination
) -> None:
    request = dataclasses.replace(discover(), **changes)  # type: ignore[arg-type]
    assert reply_destination(request, _arrival(source, on_4011)) == destination


def test_captured_uefi_ipxe_and_ovmf_discovers() -> None:
    """Real DISCOVERs from the lab: UEFI iPXE gets the script, OVMF's own PXE gets snponly.efi."""
    ipxe = decide(decode(IPXE_UEFI_DISCOVER), ON_67, known, POLICY)
    assert (ipxe.family, ipxe.ipxe, ipxe.bootfile) == (ArchFamily.UEFI_X64, True, "pvs.ipxe")
    ovmf = decide(decode(OVMF_DISCOVER), ON_67, known, POLICY)
    assert (ovmf.family, ovmf.ipxe, ovmf.bootfile) == (ArchFamily.UEFI_X64, False, "snponly.efi")
    assert decide(decode(OVMF_REQUEST), ON_67, known, POLICY).reply is None  # for the site server


@pytest.mark.parametrize(
    ("offer", "bootfile"), [(PVSD_OFFER_TO_IPXE_UEFI, b"pvs.ipxe"), (PVSD_OFFER_TO_OVMF, b"snponly.efi")]
)
def test_pvsd_offers_captured_in_the_lab(offer: bytes, bootfile: bytes) -> None:
    packet = decode(offer)
    assert (
        packet.message_type == MessageType.OFFER and packet.yiaddr == NO_ADDRESS and packet.file == bootfile
    )
    assert decode_pxe_options(packet.option(Option.VENDOR_SPECIFIC) or b"").discovery_control == 8


def test_the_server_offers_http_boot_only_when_its_http_service_is_on() -> None:
    from pvsd.config import DhcpConfig
    from pvsd.dhcp.server import boot_policy

    assert boot_policy(DhcpConfig(), "10.77.0.11").http_base is None
    on = boot_policy(DhcpConfig(), "10.77.0.11", 54321)
    assert on.http_base == "http://10.77.0.11:54321/boot/"
    reply = decide(
        discover(16, vendor=b"HTTPClient:Arch:00016:UNDI:003001"), ON_67, lambda mac: True, on
    ).reply
    assert reply is not None and reply.file == b"http://10.77.0.11:54321/boot/ipxe.efi"
