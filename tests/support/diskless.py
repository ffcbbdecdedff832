"""Booting diskless QEMU guests on a lab (pvsd/lab): the image, the farm records, and the run.

The guest has no disk at all: an e1000 on the lab's bridge, the Linux image's own kernel, and
pvsd's agent overlay as the initramfs. The agent logs in to the lab's servers, attaches the
vDisk to /dev/nbd0 and switch_roots into the image, whose /sbin/init is the test's
`_INIT_SH` (support/guest.py): read the payload, write 16 MiB, print both sums, power off.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pvsd.boot.agent_initramfs import AgentModule, build_agent_initramfs
from pvsd.boot.linux_image import module_order
from pvsd.lab import network
from pvsd.lab.lab import Lab
from pvsd.lab.qemu import Firmware
from support import guest

ATTACHED_MARKER = "pvsd-init: vDisk attached"


@dataclass(frozen=True)
class DisklessFarm:
    lab: Lab
    env: dict[str, str]
    image: guest.RootImage

    def pvsd(self, *argv: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "pvsd", *argv],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def servers_arg(self) -> str:
        """The kernel command line's server list, as a device script writes it."""
        return "pvsd.servers=" + ",".join(f"{s.address}:6910" for s in self.lab.servers())


@contextlib.contextmanager
def lab_farm(
    state: Path, image: guest.RootImage, mac: str, mode: str, servers_env: Mapping[str, str] | None = None
) -> Iterator[DisklessFarm]:
    """A 2-server lab with `image` imported as vDisk `linux` (`mode`) and `mac` registered on it,
    `servers_env` added to each server's environment; the lab is taken down at the end,
    whatever happened."""
    lab = Lab(state, say=print, extra_env=servers_env or {})
    try:
        lab.up(servers=2)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PVSD_")},
            "PVSD_FARM__DATABASE": lab.database,
            "PVSD_SERVER__STORE": str(lab.state / "store"),
        }
        farm = DisklessFarm(lab, env, image)
        farm.pvsd("vdisk", "import", "linux", str(image.path), "--mode", mode, "--quiet")
        farm.pvsd("device", "add", mac, "--name", "diskless-" + mac[-2:], "--vdisk", "linux")
        yield farm
    finally:
        lab.down(keep_state=True)


def host_agent_overlay(out: Path) -> Path:
    """The agent overlay with the modules of the installed Debian kernel, the same files the
    test image carries in its /lib/modules (support/guest.py copies them from there)."""
    vmlinuz = guest.kernel()
    version = vmlinuz.name.removeprefix("vmlinuz-")
    modules = Path("/lib/modules") / version
    order, _ = module_order(
        (modules / "modules.dep").read_text(),
        (modules / "modules.builtin").read_text(),
        guest.DISKLESS_MODULES,
    )
    build_agent_initramfs(
        out,
        version,
        [
            AgentModule(Path(path).name.split(".ko", 1)[0].replace("-", "_"), (modules / path).read_bytes())
            for path in order
        ],
    )
    return out


def boot_direct(
    lab: Lab,
    mac: str,
    initrd: Path,
    append: str,
    timeout: float,
    on_line: Callable[[str], None] | None = None,
    memory_mib: int = 768,
) -> guest.GuestRun:
    """Boot the kernel and overlay straight from QEMU (no firmware, no iPXE) on the lab's
    bridge; the agent does everything from the login on."""
    tap = "t" + mac.replace(":", "")[-8:]
    network.add_tap(lab.bridge_ns, tap, "br0")
    try:
        argv = [
            "ip",
            "netns",
            "exec",
            lab.bridge_ns,
            guest.QEMU,
            "-nographic",
            "-no-reboot",
            "-accel",
            "tcg",
            "-m",
            str(memory_mib),
            "-kernel",
            str(guest.kernel()),
            "-initrd",
            str(initrd),
            "-append",
            append,
            "-netdev",
            f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device",
            f"e1000,netdev=n0,mac={mac}",
        ]
        stops = (guest.DONE_MARKER, guest.FAIL_MARKER, "pvsd-init: FAILED")
        console, seconds, line = guest._run_qemu(argv, timeout, stops, grace=5, on_line=on_line)
        return guest.guest_run(console, seconds, line, timeout)
    finally:
        network.delete_link(lab.bridge_ns, tap)


def boot_chain(
    lab: Lab,
    mac: str,
    firmware: Firmware,
    timeout: float,
    on_line: Callable[[str], None] | None = None,
    memory_mib: int = 768,
    media: Path | None = None,
) -> guest.GuestRun:
    """The whole chain from firmware PXE (or from boot `media`) to the OS's done marker
    (pvsd/lab's QEMU target)."""
    pending = [""]

    def on_text(text: str) -> None:
        *lines, pending[0] = (pending[0] + text.replace("\r", "")).split("\n")
        for line in lines:
            if on_line is not None:
                on_line(line)

    stops = f"{guest.DONE_MARKER}|{guest.FAIL_MARKER}|pvsd-init: FAILED"
    result = lab.boot(
        firmware, mac, until=stops, timeout=timeout, memory_mb=memory_mib, on_text=on_text, media=media
    )
    line = guest.DONE_MARKER if result.matched and guest.DONE_MARKER in result.console else None
    return guest.guest_run(result.console, result.seconds, line, timeout)
