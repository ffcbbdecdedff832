"""What a server checks of its config before it serves: that what it offers can be served.

A proxy offer names a boot file per firmware; a target that gets a name this server's TFTP
cannot serve stops with "file not found", far from any log. So `pvsd serve` logs an error
naming each such file at start, and `pvsd config check` prints the same without serving.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
from dataclasses import dataclass
from pathlib import Path

from pvsd.boot.bootstrap import BOOTSTRAP_NAME
from pvsd.boot.ipxe import IPXE_BOOTSTRAP_NAME
from pvsd.config import Config
from pvsd.tftp.codec import TftpError
from pvsd.tftp.sources import find_file

__all__ = [
    "Problem",
    "address_problem",
    "bind_hint",
    "boot_file_problems",
    "config_problems",
    "host_problems",
]

# The boot files a proxy offer names and TFTP serves (the HTTP-boot ones go over HTTP).
TFTP_BOOT_FILES = {
    "bios": "BIOS",
    "uefi_x64": "x64 UEFI",
    "uefi_ia32": "32-bit UEFI",
    "uefi_arm64": "ARM64 UEFI",
}
GENERATED = (BOOTSTRAP_NAME, IPXE_BOOTSTRAP_NAME)


@dataclass(frozen=True)
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def tftp_roots(config: Config) -> list[Path]:
    roots = [Path(config.tftp.root)]
    if config.tftp.ipxe_dir:
        roots.append(Path(config.tftp.ipxe_dir))
    return roots


def boot_file_problems(config: Config) -> list[Problem]:
    """Every boot file the proxy offers that this server's TFTP cannot serve, with the reason."""
    if not config.dhcp.enabled:
        return []
    files = config.dhcp.bootfiles
    offered = {key: getattr(files, key) for key in TFTP_BOOT_FILES if getattr(files, key)}
    if not config.tftp.enabled:
        return [
            Problem(
                f"dhcp.bootfiles.{key}",
                f"{name} is offered to {TFTP_BOOT_FILES[key]} clients but [tftp] enabled = false here",
            )
            for key, name in offered.items()
        ]
    roots = tftp_roots(config)
    where = " or ".join(str(root) for root in roots)
    problems = []
    for key, name in offered.items():
        if name.lstrip("/") in GENERATED:
            continue
        try:
            find_file(roots, name)
        except TftpError as refusal:
            problems.append(
                Problem(
                    f"dhcp.bootfiles.{key}",
                    f"{name} is offered to {TFTP_BOOT_FILES[key]} clients but cannot be served from "
                    f"{where}: {refusal.message} (install Debian's ipxe package, or put the file in "
                    f"[tftp] root)",
                )
            )
    return problems


def config_problems(config: Config) -> list[Problem]:
    """What `pvsd config check` reports: the boot files, and the folders and files the config names."""
    problems = []
    if config.tftp.enabled and not Path(config.tftp.root).is_dir():
        problems.append(
            Problem("tftp.root", f"{config.tftp.root} is not a folder: only generated files will be served")
        )
    problems += boot_file_problems(config)
    if config.boot.script and not Path(config.boot.script).is_file():
        problems.append(Problem("boot.script", f"{config.boot.script} is not a readable file"))
    if config.stream.enabled and not Path(config.server.store).is_dir():
        problems.append(
            Problem(
                "server.store", f"{config.server.store} is not a folder: this server holds no vDisk images"
            )
        )
    return problems


def host_problems(config: Config) -> list[Problem]:
    """What only this host can answer: the user, the folders, the addresses and the ports.

    Each port is bound for a moment, as `pvsd serve` would bind it, so a port that a running
    pvsd (or another TFTP or DHCP server) holds shows up here as in use.
    """
    problems = []
    if config.server.user:
        try:
            pwd.getpwnam(config.server.user)
        except KeyError:
            problems.append(Problem("server.user", f"no user {config.server.user!r} on this host"))
    if config.stream.enabled:
        cache = Path(config.stream.cache_dir)
        parent = next((p for p in (cache, *cache.parents) if p.exists()), Path())
        if not os.access(parent, os.W_OK | os.X_OK):
            problems.append(Problem("stream.cache_dir", f"{cache} cannot be created or written ({parent})"))
    bind = config.server.bind or config.server.address
    owned = address_problem(bind)
    if owned is not None:
        key = "server.bind" if config.server.bind else "server.address"
        problems.append(Problem(key, f"cannot listen on {bind}: {owned}"))
        return problems  # every port below would say the same
    for key, host, port, kind in _listeners(config, bind):
        problem = _bind_problem(kind, host, port)
        if problem is not None:
            problems.append(Problem(key, f"cannot listen on {host}:{port}: {problem}"))
    return problems


def _listeners(config: Config, bind: str) -> list[tuple[str, str, int, socket.SocketKind]]:
    udp = socket.SOCK_DGRAM
    listeners = []
    if config.tftp.enabled:
        listeners.append(("tftp.port", config.tftp.bind or bind, config.tftp.port, udp))
    if config.dhcp.enabled:
        listeners.append(("dhcp.port", config.dhcp.bind or "0.0.0.0", config.dhcp.port, udp))  # noqa: S104
    if config.login.enabled:
        listeners.append(("login.port", bind, config.login.port, udp))
    if config.stream.enabled:
        first, last = (int(part) for part in config.stream.ports.split("-"))
        listeners += [("stream.ports", bind, port, udp) for port in range(first, last + 1)]
    return listeners  # [api] is not served yet: its port is checked once it is


def bind_hint(error: OSError, in_use: str = "a pvsd, or another TFTP/DHCP server, is running") -> str:
    """Why a bind failed, in the words an operator needs (`in_use` says what holds the port)."""
    hints = {
        errno.EADDRINUSE: f"in use ({in_use})",
        errno.EADDRNOTAVAIL: "not an address of this host (set [server] bind or address to one of its own)",
        errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
    }
    return hints.get(error.errno or 0, error.strerror or str(error))


def address_problem(host: str) -> str | None:
    """Why this host cannot listen on `host` at all, or None."""
    return _bind_problem(socket.SOCK_DGRAM, host, 0)


def _bind_problem(kind: socket.SocketKind, host: str, port: int) -> str | None:
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            return bind_hint(error)
    return None
