"""Diskless guests: a VM with no disk runs its Linux vDisk through pvsd's agent inside the guest.

A lab (namespaces, dnsmasq as the site DHCP, two pvsd servers sharing one farm and store), a
Linux image the test builds (Debian's kernel in /boot, a subset of its modules, busybox, and a
/sbin/init that reads a 64 MiB payload, writes 16 MiB, drops caches and prints both sums), and
a QEMU guest whose only storage is what the agent streams. The serving server is SIGKILLed
while the OS reads: the OS must finish with both sums right and no I/O error in its kernel log.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import guest, needs
from support.diskless import (
    ATTACHED_MARKER,
    DisklessFarm,
    boot_chain,
    boot_direct,
    host_agent_overlay,
    lab_farm,
)

from pvsd.lab.qemu import Firmware

pytestmark = pytest.mark.timeout(420)

MAC = "52:54:00:d1:00:01"
BOOT_TIMEOUT_S = 240.0
SERVERS = "10.77.0.11:6910,10.77.0.12:6910"


def _require() -> None:
    needs.lab_host()
    needs.tools(("depmod", "kmod"))
    guest.require_guest_tools()


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require()
    return host_agent_overlay(tmp_path_factory.mktemp("overlay") / "pvsd-agent.cpio.gz")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> guest.RootImage:
    _require()
    return guest.build_rootfs(tmp_path_factory.mktemp("image") / "linux.img", linux=True)


@pytest.fixture
def farm(tmp_path: Path, image: guest.RootImage) -> Iterator[DisklessFarm]:
    _require()
    with lab_farm(tmp_path / "lab", image, MAC, "standard") as farm:
        yield farm


def _append(extra: str = "") -> str:
    return (
        f"console=ttyS0 panic=-1 pvsd.mac={MAC} pvsd.servers={SERVERS} pvsd.onfail=poweroff {extra}".strip()
    )


def _serving(console: str) -> str:
    for line in console.splitlines():
        if ATTACHED_MARKER in line:
            return "pvs1" if '"server": "pvs1"' in line else "pvs2"
    raise AssertionError("the agent never attached the vDisk:\n" + console[-3000:])


def test_a_diskless_guest_runs_its_os_from_the_streamed_vdisk(
    farm: DisklessFarm, overlay: Path, image: guest.RootImage
) -> None:
    run = boot_direct(farm.lab, MAC, overlay, _append(), BOOT_TIMEOUT_S)
    print(f"diskless guest: done after {run.seconds:.1f} s")
    assert run.problems(image) == [], run.console[-4000:]
    assert "switch_root to /sbin/init" in run.console


def test_the_os_keeps_running_when_its_server_is_killed_while_it_reads(
    farm: DisklessFarm, overlay: Path, image: guest.RootImage
) -> None:
    """SIGKILL the serving server as the OS starts reading its 64 MiB file: the agent logs in
    to the other server with its ticket, and the OS sees latency, not an I/O error."""
    killed: list[str] = []
    attached: list[str] = []

    def on_line(line: str) -> None:
        if ATTACHED_MARKER in line:
            attached.append(line)
        if "GUEST-INIT: root is" in line and not killed and attached:
            name = _serving(attached[0])
            killed.append(name)
            threading.Thread(target=farm.lab.kill, args=(name,), daemon=True).start()

    run = boot_direct(farm.lab, MAC, overlay, _append(), BOOT_TIMEOUT_S, on_line=on_line)
    assert killed, run.console[-3000:]
    assert run.problems(image) == [], run.console[-4000:]
    assert "failed over" in run.console, run.console[-3000:]


@pytest.mark.parametrize("firmware", [Firmware.BIOS, Firmware.UEFI, Firmware.UEFI_NATIVE])
def test_the_whole_chain_boots_the_os_with_no_disk(
    farm: DisklessFarm, image: guest.RootImage, firmware: Firmware
) -> None:
    """Firmware PXE -> proxy DHCP -> TFTP -> pvs.ipxe -> the device script -> the kernel and the
    agent overlay over HTTP -> login -> stream -> switch_root: nothing on the host but the lab."""
    run = boot_chain(farm.lab, MAC, firmware, BOOT_TIMEOUT_S)
    print(f"diskless {firmware} chain: done after {run.seconds:.1f} s")
    assert run.problems(image) == [], run.console[-4000:]
    assert "pvsd: booting linux version 1 from pvs" in run.console


def test_a_server_killed_during_the_download_costs_the_boot_nothing(
    farm: DisklessFarm, image: guest.RootImage
) -> None:
    """SIGKILL the server the device script is loading from: iPXE moves to the next server of the
    script, and the agent logs in to a live one."""
    killed: list[str] = []

    def on_line(line: str) -> None:
        found = re.search(r"pvsd: loading the kernel from (pvs\d)", line)
        if found and not killed:
            killed.append(found.group(1))
            farm.lab.kill(found.group(1))

    run = boot_chain(farm.lab, MAC, Firmware.BIOS, BOOT_TIMEOUT_S, on_line=on_line)
    assert killed, run.console[-3000:]
    assert run.problems(image) == [], run.console[-4000:]
    other = "pvs2" if killed[0] == "pvs1" else "pvs1"
    assert f"pvsd: booting linux version 1 from {other}" in run.console, run.console[-3000:]


_PERSIST_SH = """#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
echo "GUEST-INIT: root is the streamed vDisk"
boots=$(cat /data/boots 2>/dev/null || echo 0)
echo "PERSISTED $boots earlier boot(s)"
echo $((boots + 1)) > /data/boots
sync
{stop_writes}echo "{done}"
poweroff -f
"""


@pytest.mark.parametrize(
    ("mode", "second"), [("private", "PERSISTED 1 earlier"), ("standard", "PERSISTED 0 earlier")]
)
def test_private_keeps_what_the_os_wrote_across_a_reboot_and_standard_starts_clean(
    tmp_path: Path, overlay: Path, mode: str, second: str
) -> None:
    _require()
    script = _PERSIST_SH.format(
        stop_writes=guest.STOP_WRITES_SH.format(fail=guest.FAIL_MARKER), done=guest.DONE_MARKER
    )
    image = guest.build_rootfs(
        tmp_path / "persist.img", size=96 << 20, payload_size=24 << 20, init_sh=script, linux=True
    )
    with lab_farm(tmp_path / "lab", image, MAC, mode) as farm:
        first = boot_direct(farm.lab, MAC, overlay, _append(), BOOT_TIMEOUT_S)
        assert first.done and "PERSISTED 0 earlier" in first.console, first.console[-3000:]
        again = boot_direct(farm.lab, MAC, overlay, _append(), BOOT_TIMEOUT_S)
        assert again.done and second in again.console, again.console[-3000:]
        assert again.io_errors == []
