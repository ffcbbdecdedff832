"""DHCP packets captured from real clients, read with dpkt from the files in tests/captures/.

See tests/captures/README.md for how each file was made. A named packet is picked by its
frame number, and checked against what it is meant to be (message type, client MAC and
ports) when this module loads, so a wrong frame fails loudly rather than testing the
wrong packet.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import dpkt

__all__ = [
    "ALL_CAPTURES",
    "CAPTURES",
    "DNSMASQ_4011_ACK",
    "DNSMASQ_PROXY_OFFER",
    "IPXE_BIOS_DISCOVER",
    "IPXE_BIOS_REQUEST_4011",
    "IPXE_UEFI_DISCOVER",
    "OVMF_DISCOVER",
    "OVMF_REQUEST",
    "PVSD_OFFER_TO_IPXE_UEFI",
    "PVSD_OFFER_TO_OVMF",
    "Captured",
]

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
BIOS_FILE = "ipxe-bios-vs-dnsmasq-proxy.pcapng"
UEFI_FILE = "pvsd-lab-uefi.pcap"


@dataclass(frozen=True)
class Captured:
    name: str  # "FILE#FRAME", for test ids
    source: tuple[str, int]
    destination: tuple[str, int]
    payload: bytes


def read_capture(file: str) -> list[Captured]:
    """Every UDP datagram of an Ethernet capture (pcapng or pcap), in frame order."""
    path = CAPTURES / file
    with path.open("rb") as stream:
        reader = dpkt.pcapng.Reader(stream) if path.suffix == ".pcapng" else dpkt.pcap.Reader(stream)
        if reader.datalink() != dpkt.pcap.DLT_EN10MB:
            raise ValueError(f"{path}: link type {reader.datalink()}, not Ethernet")
        datagrams = []
        for frame, (_, data) in enumerate(reader):
            ip = dpkt.ethernet.Ethernet(data).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP):
                udp = ip.data
                datagrams.append(
                    Captured(
                        f"{file}#{frame}",
                        (socket.inet_ntoa(ip.src), udp.sport),
                        (socket.inet_ntoa(ip.dst), udp.dport),
                        bytes(udp.data),
                    )
                )
        return datagrams


BIOS = read_capture(BIOS_FILE)
UEFI = read_capture(UEFI_FILE)
ALL_CAPTURES = (*BIOS, *UEFI)


def _frame(
    captured: list[Captured], frame: int, message_type: int, mac: str, ports: tuple[int, int]
) -> bytes:
    packet = captured[frame]
    dhcp = dpkt.dhcp.DHCP(packet.payload)
    found = (dict(dhcp.opts).get(dpkt.dhcp.DHCP_OPT_MSGTYPE), dhcp.chaddr.hex(":"), packet.source[1])
    expected = (bytes((message_type,)), mac, ports[0])
    if found != expected or packet.destination[1] != ports[1]:
        raise ValueError(
            f"{packet.name} is {found}, {packet.destination}: expected {expected}, port {ports[1]}"
        )
    return packet.payload


BIOS_MAC = "52:54:00:12:34:56"
# iPXE BIOS ROM (pxe-e1000.rom, iPXE 2019-01-25) DHCPDISCOVER, broadcast to port 67
IPXE_BIOS_DISCOVER = _frame(BIOS, 0, dpkt.dhcp.DHCPDISCOVER, BIOS_MAC, (68, 67))
# dnsmasq 2.90 proxy DHCP offer to it: option 43 with PXE menu sub-options 6/10/8/9
DNSMASQ_PROXY_OFFER = _frame(BIOS, 1, dpkt.dhcp.DHCPOFFER, BIOS_MAC, (67, 68))
# the same iPXE's DHCPREQUEST to the proxy's port 4011, with 43.71 (boot item)
IPXE_BIOS_REQUEST_4011 = _frame(BIOS, 6, dpkt.dhcp.DHCPREQUEST, BIOS_MAC, (68, 4011))
# dnsmasq's DHCPACK from port 4011 carrying the boot file
DNSMASQ_4011_ACK = _frame(BIOS, 7, dpkt.dhcp.DHCPACK, BIOS_MAC, (4011, 68))

IPXE_UEFI_MAC = "52:54:00:aa:00:07"
OVMF_MAC = "52:54:00:aa:00:09"
# QEMU's UEFI iPXE ROM (efi-e1000.rom under OVMF) DHCPDISCOVER, broadcast
IPXE_UEFI_DISCOVER = _frame(UEFI, 0, dpkt.dhcp.DHCPDISCOVER, IPXE_UEFI_MAC, (68, 67))
# pvsd's proxy offer to it (direct strategy: file pvs.ipxe, 43.6 = 8)
PVSD_OFFER_TO_IPXE_UEFI = _frame(UEFI, 2, dpkt.dhcp.DHCPOFFER, IPXE_UEFI_MAC, (67, 68))
# OVMF's own UEFI PXE client (virtio-net-pci, no iPXE ROM) DHCPDISCOVER
OVMF_DISCOVER = _frame(UEFI, 5, dpkt.dhcp.DHCPDISCOVER, OVMF_MAC, (68, 67))
# pvsd's proxy offer to it: file snponly.efi
PVSD_OFFER_TO_OVMF = _frame(UEFI, 7, dpkt.dhcp.DHCPOFFER, OVMF_MAC, (67, 68))
# OVMF's DHCPREQUEST to the site server (port 67), which pvsd must ignore
OVMF_REQUEST = _frame(UEFI, 8, dpkt.dhcp.DHCPREQUEST, OVMF_MAC, (68, 67))
