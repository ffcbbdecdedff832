"""The iPXE script of the boot media (the seed's BDM): for a network with no PXE, or where proxy
DHCP and TFTP are not allowed, a machine boots iPXE from an ISO and reaches its device script
straight over HTTP.

Pure: the caller passes the servers. The script embeds every live server (this one first, the
others by name, as pvs.ipxe does), takes an address by DHCP or from static settings, and tries
each server's `/boot/pvsd/device/<mac>.ipxe` with `chain --timeout`, so a dead server costs
seconds. It holds no time and no random value: the same farm gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from pvsd.boot.ipxe import DEVICE_SCRIPT_PREFIX
from pvsd.config import BootstrapConfig
from pvsd.errors import BadInput
from pvsd.farm.records import Server, ServerHealth

__all__ = [
    "HTTP_BOOT_PATH",
    "MEDIA_NICS",
    "MEDIA_SCRIPT_NAME",
    "MediaNetwork",
    "media_script",
    "media_servers",
]

# Where every server's HTTP service publishes the files TFTP serves; shared with pvsd/api.
HTTP_BOOT_PATH = "/boot/"
# The name of the script on the media (ISOLINUX's INITRD); iPXE runs it as an embedded image.
MEDIA_SCRIPT_NAME = "servers.ipxe"
# With DHCP, the NICs tried in turn. A missing netN fails at once, so a few spare cost nothing.
MEDIA_NICS = 4


@dataclass(frozen=True)
class MediaNetwork:
    """How the booted machine gets its address: DHCP when `address` is None, else static on net0."""

    address: IPv4Interface | None = None
    gateway: IPv4Address | None = None
    dns: IPv4Address | None = None

    def __post_init__(self) -> None:
        if self.address is None and (self.gateway is not None or self.dns is not None):
            raise BadInput(
                "a gateway or DNS server needs a static address (--ip ADDR/PREFIX); DHCP gives its own"
            )
        if self.address is not None and self.gateway is not None:
            if self.gateway not in self.address.network:
                raise BadInput(f"gateway {self.gateway} is outside {self.address.network}")
            if self.gateway == self.address.ip:
                raise BadInput(f"gateway {self.gateway} is the machine's own address")

    @property
    def dhcp(self) -> bool:
        return self.address is None


def media_servers(this: str, servers: Iterable[Server], dead_after: float) -> list[Server]:
    """The live servers, this one first, then the others by name (the order pvs.ipxe uses)."""
    live = [s for s in servers if s.health(dead_after) is ServerHealth.ALIVE]
    return sorted(live, key=lambda s: (s.name != this, s.name))


def media_script(
    servers: Sequence[Server],
    network: MediaNetwork,
    settings: BootstrapConfig,
    api_port: int,
    farm: str = "",
) -> str:
    """The script, trying `servers` in the order given. A server's recorded `api` port wins over
    `api_port`, which is for servers that recorded none."""
    if not servers:
        raise BadInput("boot media need at least one server to ask")
    names = ", ".join(s.name for s in servers)
    lines = [
        "#!ipxe",
        f"# pvsd boot media{f' of farm {farm}' if farm else ''}: asks {names}, in this order, over HTTP",
        f"echo pvsd media: {len(servers)} server(s): {names}",
    ]
    if settings.shell_prompt_ms:
        lines.append(
            f"prompt --key 0x02 --timeout {settings.shell_prompt_ms} "
            "pvsd: press Ctrl-B for the iPXE shell... && shell ||"
        )
    lines += [":network", *_network_lines(network), ":up", "echo pvsd media: ${nic} is ${${nic}/ip}"]
    for index, server in enumerate(servers):
        port = server.ports.get("api", api_port)
        target = f"http://{server.address}:{port}{HTTP_BOOT_PATH}{DEVICE_SCRIPT_PREFIX}${{${{nic}}/mac:hexhyp}}.ipxe"
        lines += [
            f":server{index}",
            f"echo pvsd media: asking {server.name} at {server.address}:{port}",
            f"chain --timeout {settings.chain_timeout_ms} {target} || goto server{index + 1}",
            "goto done",
        ]
    lines += [f":server{len(servers)}", "echo pvsd media: no server answered for ${${nic}/mac}", ":recover"]
    lines += _recovery_lines(settings)
    lines += [":done", "exit", ""]
    return "\n".join(lines)


def _network_lines(network: MediaNetwork) -> list[str]:
    if network.address is None:
        # `ifconf -c dhcp` answers in about 1 s where `dhcp` waits 17 s for IPv6 (DESIGN.md 5).
        lines = ["echo pvsd media: asking DHCP for an address"]
        lines += [
            f"ifconf -c dhcp net{n} && set nic net{n} && goto up || echo pvsd media: no DHCP answer on net{n}"
            for n in range(MEDIA_NICS)
        ]
        return [*lines, "echo pvsd media: no address by DHCP on any NIC", "goto recover"]
    lines = [
        "set nic net0",
        f"set net0/ip {network.address.ip}",
        f"set net0/netmask {network.address.netmask}",
    ]
    if network.gateway is not None:
        lines.append(f"set net0/gateway {network.gateway}")
    if network.dns is not None:
        lines.append(f"set net0/dns {network.dns}")
    return [
        f"echo pvsd media: static address {network.address} on net0",
        *lines,
        "ifopen net0 || goto recover",
    ]


def _recovery_lines(settings: BootstrapConfig) -> list[str]:
    """What the bootstrap does when every server is lost: keep trying, or reboot after a while."""
    if settings.recovery == "reboot":
        return [
            f"prompt --timeout {settings.reboot_delay_s * 1000} "
            "pvsd media: rebooting; press a key to retry now && goto network || reboot",
        ]
    return ["prompt --timeout 5000 pvsd media: retrying in 5 s; press a key to retry now ||", "goto network"]
