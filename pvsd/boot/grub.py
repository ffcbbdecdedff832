"""GRUB scripts for the UEFI half of the boot media: the media's own `grub.cfg`, and the device
scripts that every server publishes beside the iPXE ones, at `pvsd/grub/MAC.cfg`.

Why GRUB: Debian's ipxe.efi (1.0.0+git-20190125) cannot run a script from the media
(pvsd/boot/media_iso.py says why), while Debian's GRUB EFI (2.06) brings DHCP, HTTP with a
port (`(http,ADDRESS:PORT)/path`), `linux` and `initrd` of its own. So on UEFI the media boots
GRUB, GRUB asks each server in turn for the device's GRUB script, and that script loads the
same kernel, initramfs and agent overlay as the iPXE device script, from each live server in
turn (`if linux ...; then ...`), with the same kernel command line.

Pure: the caller passes the devices and servers. GRUB's own quirks, learnt on OVMF here:
- `net_bootp` names a card's interface `efinetN:dhcp`; its MAC is `net_efinetN_dhcp_mac`,
  and `net_default_mac` stays empty;
- a script `source`d over HTTP that is missing or unreachable returns without a word, so
  every step echoes its own line;
- a server whose process died answers with a reset at once; a server whose host is gone
  costs GRUB's ARP and TCP timeouts (about 33 s), which cannot be shortened.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pvsd.boot.ipxe import (
    AGENT_OVERLAY_NAME,
    KERNEL_NAME,
    DisklessBoot,
    agent_overlay_path,
    boot_file_path,
    device_line,
    live_first,
)
from pvsd.boot.media import HTTP_BOOT_PATH, MEDIA_NICS, MediaNetwork
from pvsd.config import BootstrapConfig
from pvsd.errors import BadInput
from pvsd.farm.records import Device, Server
from pvsd.target.cmdline import GuestSettings, guest_arguments

__all__ = [
    "GRUB_SCRIPT_PREFIX",
    "grub_device_script",
    "grub_media_config",
    "grub_refusal_script",
    "grub_script_name",
    "grub_unknown_device_script",
    "grub_word",
]

GRUB_SCRIPT_PREFIX = "pvsd/grub/"
# The MAC as the media's grub.cfg turns GRUB's aa:bb:... into the names below GRUB_SCRIPT_PREFIX.
_MAC_PATTERN = "^(..):(..):(..):(..):(..):(..)$"
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_.,:=/+@%-]+")


def grub_script_name(mac: str) -> str:
    """`pvsd/grub/52-54-00-12-34-56.cfg`, the name the media's grub.cfg asks for."""
    return f"{GRUB_SCRIPT_PREFIX}{mac.replace(':', '-')}.cfg"


def grub_word(text: str) -> str:
    """One word of a GRUB command: as it is when plain, else in single quotes (GRUB expands
    nothing inside them; a quote itself is closed, escaped and reopened)."""
    if _PLAIN_WORD.fullmatch(text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def _echo(text: str) -> str:
    return f"echo {grub_word(text)}"


def grub_unknown_device_script() -> str:
    """For a MAC the farm does not know. GRUB cannot print the MAC it asked for from here."""
    return grub_refusal_script(None, "this MAC is not registered: pvsd device add MAC --name NAME")


def grub_refusal_script(device: Device | None, reason: str) -> str:
    """Say why on the console and return: the media's grub.cfg goes on to the next server,
    then follows [bootstrap] recovery, as pvs.ipxe does for the iPXE refusal."""
    head = device_line(device) if device is not None else "pvsd device: unknown MAC"
    return "\n".join(
        ["# pvsd device script (GRUB)", _echo(head), _echo(f"pvsd: cannot boot: {reason}"), "sleep 5", ""]
    )


def grub_device_script(
    device: Device, boot: DisklessBoot, this: Server, servers: Sequence[Server], dead_after: float
) -> str:
    """The GRUB twin of pvsd/boot/ipxe.py diskless_script: the kernel, the image's initramfs and
    the agent overlay from each live server in turn, this one first, then boot."""
    ordered = live_first(this, servers, dead_after)
    guest = GuestSettings(
        mac=device.mac,
        servers=tuple((s.address, s.ports.get("login", 6910)) for s in ordered),
        vdisk=boot.vdisk,
    )
    # GRUB hands the initramfs over itself: no `initrd=` words as the EFI stub needs from iPXE.
    words = [*boot.cmdline.split(), *guest_arguments(guest).split()]
    arguments = " ".join(grub_word(word) for word in words)
    lines = [
        f"# pvsd device script (GRUB) for {device.name}: each live server, the one that sent it first",
        _echo(device_line(device)),
        _echo(f"pvsd: {boot.vdisk} version {boot.version}, kernel {boot.kernel_version}"),
    ]
    for server in ordered:
        base = f"(http,{server.address}:{server.ports.get('api', 54321)}){HTTP_BOOT_PATH}"
        initrds = [f"{base}{agent_overlay_path(boot.vdisk, boot.version)}"]
        if boot.has_initrd:
            initrds.insert(0, f"{base}{boot_file_path(boot.vdisk, boot.version, 'initrd')}")
        lines += [
            _echo(f"pvsd: loading the kernel from {server.name} at {server.address}"),
            f"if linux {base}{boot_file_path(boot.vdisk, boot.version, KERNEL_NAME)} {arguments}; then",
            f"  if initrd {' '.join(initrds)}; then",
            "    " + _echo(f"pvsd: booting {boot.vdisk} version {boot.version} from {server.name}"),
            "    boot",
            "  fi",
            "fi",
            _echo(f"pvsd: {server.name} did not give the kernel and {AGENT_OVERLAY_NAME}"),
        ]
    lines += [_echo("pvsd: no server could give this device its kernel"), ""]
    return "\n".join(lines)


def grub_media_config(
    servers: Sequence[Server],
    network: MediaNetwork,
    settings: BootstrapConfig,
    api_port: int,
    farm: str = "",
) -> str:
    """The media's grub.cfg: an address, then each server's `pvsd/grub/MAC.cfg` in the order
    given, then [bootstrap] recovery. A server's recorded `api` port wins over `api_port`."""
    if not servers:
        raise BadInput("boot media need at least one server to ask")
    names = ", ".join(s.name for s in servers)
    lines = [
        f"# pvsd boot media (UEFI: GRUB){f' of farm {farm}' if farm else ''}: asks {names}, in this order",
        _echo(f"pvsd media: {len(servers)} server(s): {names}"),
        "set pvsd_mac=",
        *_grub_network_lines(network),
        'if [ -z "$pvsd_mac" ]; then',
        "  " + _echo("pvsd media: no address on any NIC"),
        "else",
        f"  regexp --set=1:m1 --set=2:m2 --set=3:m3 --set=4:m4 --set=5:m5 --set=6:m6 "
        f'{grub_word(_MAC_PATTERN)} "$pvsd_mac"',
        '  set pvsd_name="${m1}-${m2}-${m3}-${m4}-${m5}-${m6}"',
        '  echo "pvsd media: $pvsd_mac is $pvsd_ip"',
        "fi",
        "function pvsd_ask {",
    ]
    for server in servers:
        port = server.ports.get("api", api_port)
        script = f"(http,{server.address}:{port}){HTTP_BOOT_PATH}{GRUB_SCRIPT_PREFIX}${{pvsd_name}}.cfg"
        lines += [
            "  " + _echo(f"pvsd media: asking {server.name} at {server.address}:{port}"),
            f'  source "{script}"',
        ]
    lines += ["  " + _echo("pvsd media: no server booted this machine"), "}"]
    if settings.recovery == "reboot":
        lines += [
            'if [ -n "$pvsd_mac" ]; then pvsd_ask; fi',
            _echo(f"pvsd media: rebooting in {settings.reboot_delay_s} s"),
            f"sleep {settings.reboot_delay_s}",
            "reboot",
            "",
        ]
    else:
        lines += [
            'if [ -n "$pvsd_mac" ]; then',
            "  while true; do",
            "    pvsd_ask",
            "    " + _echo("pvsd media: retrying in 5 s"),
            "    sleep 5",
            "  done",
            "fi",
            _echo("pvsd media: rebooting in 30 s to try DHCP again"),
            "sleep 30",
            "reboot",
            "",
        ]
    return "\n".join(lines)


def _grub_network_lines(network: MediaNetwork) -> list[str]:
    if network.address is None:
        lines = [_echo("pvsd media: asking DHCP for an address"), "net_bootp"]
        for n in range(MEDIA_NICS):
            lines += [
                f'if [ -z "$pvsd_mac" -a -n "$net_efinet{n}_dhcp_ip" ]; then',
                f'  set pvsd_mac="$net_efinet{n}_dhcp_mac"',
                f'  set pvsd_ip="$net_efinet{n}_dhcp_ip"',
                "fi",
            ]
        return lines
    address = network.address
    lines = [
        _echo(f"pvsd media: static address {address} on efinet0"),
        f"net_add_addr pvsd efinet0 {address.ip}",
        f"net_add_route pvsd_local {address.network} pvsd",
    ]
    if network.gateway is not None:
        lines.append(f"net_add_route pvsd_default 0.0.0.0/0 gw {network.gateway}")
    if network.dns is not None:
        lines.append(f"net_add_dns {network.dns}")
    return [
        *lines,
        'if [ -n "$net_pvsd_mac" ]; then',
        '  set pvsd_mac="$net_pvsd_mac"',
        f"  set pvsd_ip={address.ip}",
        "fi",
    ]
