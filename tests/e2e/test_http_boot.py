"""End to end: BIOS iPXE in the lab loads a 64 MiB file over HTTP from a pvsd server's /boot/
(what a device script does with a kernel and initramfs), by a [boot] script template."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import needs
from support.pvsd import wait_for

from pvsd.lab.lab import Lab
from pvsd.lab.qemu import BIOS_ROM, Firmware

MAC = "52:54:00:77:00:21"
SIZE = 64 << 20
TEMPLATE = """#!ipxe
echo pvsd device: {{name}} {{mac}}
initrd http://10.77.0.11:54321/boot/big.img || initrd http://10.77.0.12:54321/boot/big.img
imgstat
echo pvsd http boot: done
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    needs.lab_host()
    needs.files((str(BIOS_ROM), "ipxe-qemu"))
    template = tmp_path / "device.ipxe"
    template.write_text(TEMPLATE)
    lab = Lab(tmp_path / "lab", say=print, extra_env={"PVSD_BOOT__SCRIPT": str(template)})
    tftp_root = lab.state / "tftp"  # the lab's [tftp] root, which /boot/ serves too
    tftp_root.mkdir(parents=True)
    with (tftp_root / "big.img").open("wb") as out:
        out.write(os.urandom(1 << 20) * (SIZE >> 20))
    try:
        lab.up(servers=2)
        yield lab
    finally:
        lab.down(keep_state=True)


def test_bios_ipxe_loads_64_mib_over_http(lab: Lab) -> None:
    added = subprocess.run(
        [sys.executable, "-m", "pvsd", "device", "add", MAC, "--name", "http-vm"],
        env={**os.environ, "PVSD_FARM__DATABASE": lab.database},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert added.returncode == 0, added.stderr
    wait_for(
        lambda: all(
            MAC in lab.server_log(name) and "device script published" in lab.server_log(name)
            for name in ("pvs1", "pvs2")
        ),
        timeout=30,
    )
    result = lab.boot(Firmware.BIOS, MAC, until=r"pvsd http boot: done", timeout=240, memory_mb=512)
    print(f"--- console ({result.reason} after {result.seconds:.1f} s) ---")
    print(result.console[-4000:])
    assert result.matched, f"no marker: {result.reason} after {result.seconds:.1f} s"
    assert "pvsd device: http-vm" in result.console
    assert re.search(rf"big\.img : {SIZE} bytes", result.console), "imgstat does not show 64 MiB"
    served = [
        line
        for name in ("pvs1", "pvs2")
        for line in lab.server_log(name).splitlines()
        if '"boot file served"' in line
    ]
    assert any('"name": "big.img"' in line and f'"bytes": {SIZE}' in line for line in served), served
