"""Diskless network boot against a local-disk boot of the same Linux image, in one run.

Run it from the checkout (as root, after `make .venv/.installed` and the Debian packages):

    make bench-netboot                          # 3 boots per row
    .venv/bin/python bench/netboot.py --quick   # 1 boot per row

It builds the tests' Linux image (tests/support/guest.py: Debian's kernel in /boot, a subset of
its modules, busybox, and a /sbin/init that reads a 64 MiB payload, writes 16 MiB, drops caches,
checks both sums and powers off) and boots it under QEMU (TCG, 768 MiB) as:

- `local`: on a local virtio disk, with Debian's own initramfs (/boot/initrd.img-VERSION,
  `root=/dev/vda`): the reference;
- `diskless-direct`: no disk; QEMU loads the kernel and pvsd's agent overlay itself (no
  firmware), the agent streams the vDisk from a 2-server lab farm (pvsd/lab);
- `diskless-bios` and `diskless-uefi`: the whole chain, no disk: firmware PXE, proxy DHCP,
  TFTP, pvs.ipxe, the device script, the kernel and the overlay over HTTP, the login and the
  stream;
- `media-bios` and `media-uefi`: the same from the boot media (`pvsd media build`) on a CD:
  ISOLINUX and iPXE, or GRUB, instead of the firmware's PXE, proxy DHCP and TFTP.

For each it records the seconds from QEMU's start to the OS's first line (`GUEST-INIT`, printed
by the image's /sbin/init) and to its last (the done marker), whether both sums were right, and
for the chain rows the download: from the device script's first kernel request to its `boot`.
Goal (issue 12): diskless within 1.5x of the local-disk boot. It prints a table and writes the
figures, the commands and the machine to bench/results/netboot-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RESULTS, machine_info, print_machine, progress, report_header, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support import guest
from support.diskless import boot_chain, boot_direct, host_agent_overlay, lab_farm

from pvsd.lab.qemu import Firmware

MAC = "52:54:00:be:00:01"
TIMEOUT_S = 300.0
FIRST_LINE = "GUEST-INIT"


class Marks:
    """Seconds from the start of a boot to the OS's first line (FIRST_LINE), and how long the
    device script took from its first kernel request to `boot`: the kernel and initramfs
    download (the chain rows only; the direct row loads them from QEMU)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seconds: float | None = None
        self.loading: float | None = None
        self.download_s: float | None = None

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        if self.loading is None and "pvsd: loading the kernel from" in line:
            self.loading = now
        if self.loading is not None and self.download_s is None and "pvsd: booting " in line:
            self.download_s = round(now - self.loading, 1)
        if self.seconds is None and FIRST_LINE in line:
            self.seconds = round(now - self.started, 1)


def _local(image: guest.RootImage, first: Marks) -> tuple[str, float, bool]:
    vmlinuz = guest.kernel()
    initrd = Path("/boot") / vmlinuz.name.replace("vmlinuz-", "initrd.img-")
    run = guest.boot_guest(
        f"file={image.path},snapshot=on",
        timeout=TIMEOUT_S,
        initrd=initrd,
        append="root=/dev/vda rw",
        on_line=first,
    )
    return run.console, run.seconds, run.problems(image) == []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one boot per row")
    parser.add_argument(
        "--rows", default="local,diskless-direct,diskless-bios,diskless-uefi,media-bios,media-uefi"
    )
    args = parser.parse_args()
    started = time.time()
    boots = 1 if args.quick else 3
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pvsd-bench-netboot-") as tmp:
        work = Path(tmp)
        progress("building the Linux image and the agent overlay")
        image = guest.build_rootfs(work / "linux.img", linux=True)
        overlay = host_agent_overlay(work / "pvsd-agent.cpio.gz")
        wanted = args.rows.split(",")
        with lab_farm(work / "lab", image, MAC, "standard") as farm:
            for row in wanted:
                times: list[tuple[float | None, float, bool, float | None]] = []
                media = work / "pvsd.iso"
                if row.startswith("media-") and not media.exists():
                    farm.pvsd("media", "build", "--out", str(media), env={"PVSD_SERVER__NAME": "pvs1"})
                for attempt in range(boots):
                    progress(f"{row}: boot {attempt + 1} of {boots}")
                    first = Marks()
                    if row == "local":
                        console, seconds, ok = _local(image, first)
                    elif row == "diskless-direct":
                        append = (
                            f"console=ttyS0 panic=-1 pvsd.mac={MAC} {farm.servers_arg()} pvsd.onfail=poweroff"
                        )
                        run = boot_direct(farm.lab, MAC, overlay, append, TIMEOUT_S, on_line=first)
                        console, seconds, ok = run.console, run.seconds, run.problems(image) == []
                    else:
                        firmware = Firmware.BIOS if row.endswith("-bios") else Firmware.UEFI
                        from_media = media if row.startswith("media-") else None
                        run = boot_chain(farm.lab, MAC, firmware, TIMEOUT_S, on_line=first, media=from_media)
                        console, seconds, ok = run.console, run.seconds, run.problems(image) == []
                    times.append((first.seconds, round(seconds, 1), ok, first.download_s))
                    if not ok:
                        progress(f"{row}: the boot failed; console tail:\n{console[-1500:]}")
                rows[row] = {
                    "boots": [
                        {"first_line_s": f, "done_s": d, "sums_right": ok, "download_s": dl}
                        for f, d, ok, dl in times
                    ],
                    "median_done_s": statistics.median(d for _, d, _, _ in times),
                }
    reference = rows.get("local", {}).get("median_done_s")
    print(f"\n{'row':<18} {'first line s':>12} {'done s':>8} {'vs local':>9} {'download s':>11} {'sums':>5}")
    for row, result in rows.items():
        first = statistics.median(b["first_line_s"] or 0 for b in result["boots"])
        ratio = f"{result['median_done_s'] / reference:.2f}x" if reference else "-"
        downloads = [b["download_s"] for b in result["boots"] if b["download_s"] is not None]
        download = f"{statistics.median(downloads):.1f}" if downloads else "-"
        sums = "ok" if all(b["sums_right"] for b in result["boots"]) else "WRONG"
        print(f"{row:<18} {first:>12.1f} {result['median_done_s']:>8.1f} {ratio:>9} {download:>11} {sums:>5}")
    print("goal: diskless within 1.5x of the local-disk boot; the kernel and initramfs download under 2 s")
    tools = {"qemu": ["qemu-system-x86_64", "--version"]}
    machine = machine_info(tools)
    report = {**report_header("netboot", args.quick, started, machine), "rows": rows}
    output = RESULTS / f"netboot-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(output, report)
    print_machine(report["machine"], output)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.TimeoutExpired as error:
        print(f"timed out: {error}", file=sys.stderr)
        sys.exit(1)
