"""QEMU targets for the lab: the command line per firmware, and a run that ends at a console marker.

QEMU runs under TCG here (no KVM), with `-nographic`: the firmware's and iPXE's console is
on QEMU's stdout, so a run reads it, echoes it, and stops QEMU as soon as the marker shows
up or the time is up. QEMU is always stopped before `run_until` returns.
"""

from __future__ import annotations

import enum
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from pvsd.errors import Failure, Misuse

__all__ = ["BootResult", "Firmware", "clean_console", "qemu_command", "run_until"]

QEMU = "qemu-system-x86_64"
BIOS_ROM = "/usr/lib/ipxe/qemu/pxe-e1000.rom"
UEFI_ROM = "/usr/lib/ipxe/qemu/efi-e1000.rom"
OVMF = "/usr/share/ovmf/OVMF.fd"
# Firmware consoles paint with ANSI escapes (OVMF) and carriage returns (iPXE progress);
# markers are matched on the text without them.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>c]|\r")
_KEEP_CONSOLE = 2_000_000  # characters of console kept in memory per run
_LINE_WAIT_S = 2.0  # after a match, how long to wait for the rest of its line


class Firmware(enum.StrEnum):
    BIOS = "bios"  # SeaBIOS + iPXE's BIOS ROM on an e1000
    UEFI = "uefi"  # OVMF + iPXE's EFI ROM on an e1000
    UEFI_NATIVE = "uefi-native"  # OVMF's own PXE client on virtio-net (no option ROM)
    UEFI_HTTP = "uefi-http"  # OVMF's own HTTP boot client on virtio-net: its PXE turned off


def qemu_command(
    firmware: Firmware, mac: str, tap: str, memory_mb: int = 256, media: str | None = None
) -> list[str]:
    """The QEMU command line for one target on the lab's tap device; with `media` (an ISO of
    `pvsd media build`), the target boots it from a CD and its NIC has no boot ROM: BIOS on an
    e1000 (the media's iPXE drives it), any UEFI on virtio-net (the media's GRUB uses OVMF's
    driver)."""
    argv = [
        QEMU,
        "-nographic",
        "-accel",
        "tcg",
        "-m",
        str(memory_mb),
        # A firmware that gives up reboots; end QEMU instead, so a run never loops.
        "-no-reboot",
        "-netdev",
        f"tap,id=n0,ifname={tap},script=no,downscript=no",
    ]
    if media is not None:
        if firmware is Firmware.BIOS:
            return [*argv, "-device", f"e1000,netdev=n0,mac={mac},romfile=", "-cdrom", media, "-boot", "d"]
        # OVMF connects only the devices of QEMU's boot order: the NIC must be on it for GRUB.
        return [
            *argv,
            *("-machine", "q35", "-bios", OVMF),
            *("-drive", f"file={media},media=cdrom,if=none,id=cd0,readonly=on"),
            *("-device", "ide-cd,drive=cd0,bootindex=0"),
            *("-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1"),
        ]
    if firmware is Firmware.BIOS:
        argv += ["-device", f"e1000,netdev=n0,mac={mac},romfile={BIOS_ROM}", "-boot", "n"]
    elif firmware is Firmware.UEFI:
        argv += ["-machine", "q35", "-bios", OVMF, "-device", f"e1000,netdev=n0,mac={mac},romfile={UEFI_ROM}"]
    else:
        # OVMF has no e1000 driver but has virtio-net; an empty romfile keeps iPXE out of it.
        argv += ["-machine", "q35", "-bios", OVMF, "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile="]
    if firmware is Firmware.UEFI_HTTP:
        # OVMF tries PXEv4, PXEv6, then HTTPv4: its fw_cfg knobs (edk2 since 2020-05) drop the PXE
        # boot options, so the first one it tries is HTTPv4 (vendor class HTTPClient, arch 16).
        for knob in ("IPv4PXESupport", "IPv6PXESupport"):
            argv += ["-fw_cfg", f"name=opt/org.tianocore/{knob},string=n"]
    return argv


@dataclass(frozen=True)
class BootResult:
    matched: bool
    seconds: float
    """From QEMU's start to the marker (or to the end of the run)."""
    console: str
    """The console text without escapes, as far as it was read."""
    reason: str
    """Why the run ended: "marker", "timeout" or "qemu exited (N)"."""
    match: str = ""


def clean_console(text: str) -> str:
    return _ESCAPES.sub("", text)


def run_until(
    argv: Sequence[str],
    until: re.Pattern[str],
    timeout: float,
    echo: TextIO | None = None,
    on_start: Callable[[int], None] | None = None,
    on_text: Callable[[str], None] | None = None,
) -> BootResult:
    """Run QEMU, echo its console, and stop it when `until` matches or `timeout` passes.
    `on_text` sees the console's text as it comes (e.g. to kill a server at some point)."""
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C for the caller is not QEMU's to see
        )
    except FileNotFoundError as error:
        raise Failure(f"{argv[0]} is not installed") from error
    if process.stdout is None:
        raise Misuse("QEMU was started without a stdout pipe")
    if on_start is not None:
        on_start(process.pid)
    fd = process.stdout.fileno()
    raw = ""
    clean = ""
    matched: re.Match[str] | None = None
    matched_at = 0.0
    reason = "timeout"
    try:
        while True:
            now = time.monotonic()
            if matched is not None:
                # Keep reading briefly so the echoed console shows the marker's whole line.
                if "\n" in clean[matched.end() :] or now - matched_at > _LINE_WAIT_S:
                    break
                wait = matched_at + _LINE_WAIT_S - now
            else:
                wait = started + timeout - now
                if wait <= 0:
                    break
            ready, _, _ = select.select([fd], [], [], min(wait, 0.5))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                if matched is None:
                    reason = f"qemu exited ({process.wait()})"
                break
            text = chunk.decode("utf-8", errors="replace")
            if echo is not None:
                echo.write(text)
                echo.flush()
            if on_text is not None:
                on_text(text)
            raw = (raw + text)[-_KEEP_CONSOLE:]
            if matched is None:
                # Search from a little before the new text: a marker may straddle two reads.
                searched_from = max(0, len(clean) - 512)
                clean = clean_console(raw)
                found = until.search(clean, searched_from)
                if found is not None:
                    matched, matched_at, reason = found, time.monotonic(), "marker"
            else:
                clean = clean_console(raw)
    finally:
        _stop(process)
    seconds = (matched_at if matched is not None else time.monotonic()) - started
    return BootResult(
        matched is not None, seconds, clean, reason, matched.group(0) if matched is not None else ""
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM QEMU (it exits at once), then SIGKILL if it does not within a few seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    if process.stdout is not None:
        process.stdout.close()
