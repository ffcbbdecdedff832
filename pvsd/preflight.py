"""What a server checks of its config before it serves: that what it offers can be served.

A proxy offer names a boot file per firmware; a target that gets a name this server's TFTP
cannot serve stops with "file not found", far from any log. So `pvsd serve` logs an error
naming each such file at start, and `pvsd config check` prints the same without serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pvsd.boot.bootstrap import BOOTSTRAP_NAME
from pvsd.boot.ipxe import IPXE_BOOTSTRAP_NAME
from pvsd.config import Config
from pvsd.tftp.codec import TftpError
from pvsd.tftp.sources import find_file

__all__ = ["Problem", "boot_file_problems", "config_problems"]

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
