"""The agent's settings inside a diskless guest, read from the kernel command line. Pure.

The per-device iPXE script (pvsd/boot/ipxe.py) writes them; the guest's /init and the agent
read them back from /proc/cmdline:

    pvsd.mac=52:54:00:12:34:56          the MAC the device is registered under
    pvsd.servers=10.0.0.11:6910,...     the farm's live login servers, the serving one first
    pvsd.vdisk=NAME                     the vDisk the device boots (for the logs and the check)
    pvsd.cache_mb=256                   standard mode, cache on the device: RAM for writes
    pvsd.root=/dev/nbd0p1               where the root file system is (default: found)
    pvsd.onfail=reboot|poweroff|shell   what the guest does when it cannot boot (default reboot)
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass

from pvsd.errors import BadInput
from pvsd.net.mac import parse_mac

__all__ = ["AGENT_ARGV0", "READY_FILE", "GuestSettings", "OnFail", "guest_arguments", "parse_cmdline"]

# What /init and the agent agree on: the agent's name (`@`: systemd spares it at shutdown), and
# the file it writes once the vDisk is attached.
AGENT_ARGV0 = "@pvsd-agent"
READY_FILE = "/run/pvsd-agent.json"
DEFAULT_CACHE_MB = 256
PREFIX = "pvsd."


class OnFail(enum.StrEnum):
    REBOOT = "reboot"
    POWEROFF = "poweroff"
    SHELL = "shell"


@dataclass(frozen=True)
class GuestSettings:
    mac: str
    servers: tuple[tuple[str, int], ...]
    vdisk: str = ""
    cache_mb: int = DEFAULT_CACHE_MB
    root: str = ""
    onfail: OnFail = OnFail.REBOOT


def guest_arguments(settings: GuestSettings) -> str:
    """The command-line words that `parse_cmdline` reads back (defaults left out)."""
    words = [
        f"pvsd.mac={settings.mac}",
        "pvsd.servers=" + ",".join(f"{host}:{port}" for host, port in settings.servers),
    ]
    if settings.vdisk:
        words.append(f"pvsd.vdisk={settings.vdisk}")
    if settings.cache_mb != DEFAULT_CACHE_MB:
        words.append(f"pvsd.cache_mb={settings.cache_mb}")
    if settings.root:
        words.append(f"pvsd.root={settings.root}")
    if settings.onfail is not OnFail.REBOOT:
        words.append(f"pvsd.onfail={settings.onfail}")
    return " ".join(words)


def _server(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInput(f"pvsd.servers: {text!r} is not ADDRESS:PORT")
    return host, int(port)


def parse_cmdline(text: str) -> GuestSettings:
    """Settings from the text of /proc/cmdline; BadInput names the word that is wrong."""
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise BadInput(f"the kernel command line cannot be split: {error}") from None
    values: dict[str, str] = {}
    for word in words:
        if word.startswith(PREFIX) and "=" in word:
            key, _, value = word.partition("=")
            values[key.removeprefix(PREFIX)] = value
    if "mac" not in values:
        raise BadInput("no pvsd.mac= on the kernel command line: boot through pvsd's device script")
    try:
        mac = parse_mac(values["mac"])
    except BadInput as error:
        raise BadInput(f"pvsd.mac: {error}") from None
    servers = tuple(_server(s) for s in values.get("servers", "").split(",") if s)
    if not servers:
        raise BadInput("no pvsd.servers= on the kernel command line: the guest knows no server to log in to")
    cache = values.get("cache_mb", str(DEFAULT_CACHE_MB))
    if not cache.isdigit():
        raise BadInput(f"pvsd.cache_mb: {cache!r} is not a number of MiB")
    try:
        onfail = OnFail(values.get("onfail", OnFail.REBOOT))
    except ValueError:
        raise BadInput(f"pvsd.onfail: {values['onfail']!r} is not reboot, poweroff or shell") from None
    return GuestSettings(mac, servers, values.get("vdisk", ""), int(cache), values.get("root", ""), onfail)
