"""`pvsd media ...`: boot media (an ISO) for machines on a network without PXE."""

from __future__ import annotations

import argparse
from ipaddress import AddressValueError, IPv4Address, IPv4Interface, NetmaskValueError
from pathlib import Path

from pvsd.boot.media import MediaNetwork
from pvsd.boot.media_iso import build_media
from pvsd.cli.common import Commands, open_farm
from pvsd.config import Config
from pvsd.errors import BadInput
from pvsd.farm.records import ServerHealth

__all__ = ["register"]


def register(commands: Commands) -> None:
    media = commands.noun(
        "media",
        "boot media (ISO) for networks without PXE: iPXE (BIOS) or GRUB (UEFI) asks the servers over HTTP",
    )
    build = media.command(
        "build",
        _build,
        "write an ISO (BIOS and UEFI) that asks the farm's live servers for the device's boot",
    )
    build.add_argument("--out", type=Path, required=True, metavar="FILE.iso", help="the ISO to write")
    build.add_argument(
        "--ip",
        type=_interface,
        metavar="ADDR/PREFIX",
        help="a static address on the first NIC (default: DHCP)",
    )
    build.add_argument("--gateway", type=_address, metavar="ADDR", help="with --ip: the default gateway")
    build.add_argument("--dns", type=_address, metavar="ADDR", help="with --ip: the DNS server")
    build.add_argument(
        "--server",
        action="append",
        metavar="NAME",
        help="embed only these servers (repeatable; each must be live); default: every live server",
    )


def _interface(text: str) -> IPv4Interface:
    if "/" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} needs a prefix length, e.g. 192.168.1.20/24")
    try:
        interface = IPv4Interface(text)
    except (AddressValueError, NetmaskValueError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not ADDR/PREFIX: {error}") from None
    if interface.ip in (interface.network.network_address, interface.network.broadcast_address) and (
        interface.network.prefixlen < 31
    ):
        raise argparse.ArgumentTypeError(
            f"{interface.ip} is the network or broadcast address of {interface.network}"
        )
    return interface


def _address(text: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except (AddressValueError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address") from None


def _build(args: argparse.Namespace, config: Config) -> int:
    network = MediaNetwork(args.ip, args.gateway, args.dns)
    store = open_farm(config)
    servers = store.list_servers()
    if args.server:
        known = {s.name for s in servers}
        unknown = sorted(set(args.server) - known)
        if unknown:
            raise BadInput(
                f"no server named {', '.join(unknown)} in the farm "
                f"(it has: {', '.join(sorted(known)) or 'none'})"
            )
        dead = sorted(
            s.name
            for s in servers
            if s.name in args.server and s.health(config.farm.dead_after) is not ServerHealth.ALIVE
        )
        if dead:
            raise BadInput(
                f"server {', '.join(dead)} is not live; the media would send targets to a dead server"
            )
        servers = [s for s in servers if s.name in args.server]
    embedded = build_media(
        args.out,
        servers,
        config.server.name,
        network,
        config.bootstrap,
        config.api.port,
        config.farm.dead_after,
        store.get_farm().name,
    )
    address = "DHCP" if network.dhcp else network.address
    print(f"wrote {args.out}: boot media for BIOS and UEFI (ISOLINUX + iPXE, GRUB EFI), {address}")
    for index, server in enumerate(embedded, 1):
        port = server.ports.get("api", config.api.port)
        print(f"  {index}. {server.name}  http://{server.address}:{port}/boot/")
    return 0
