"""`make demo`'s diskless part: a VM with no disk PXE-boots Linux from the lab's 2-server farm,
and the server it streams from is SIGKILLed while the OS reads its disk; the OS goes on.

Run by scripts/demo.sh against a lab that is up (`pvsd lab up --state var/lab`). It builds the
tests' Linux image (Debian's kernel and modules, busybox, a /sbin/init that reads 64 MiB, writes
16 MiB and prints both sums), imports it, assigns it to the demo VM and boots that VM through
the whole chain: firmware PXE, proxy DHCP, TFTP, pvs.ipxe, the device script, the kernel and
pvsd's agent overlay over HTTP, the login, the stream, switch_root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support import guest
from support.diskless import ATTACHED_MARKER, boot_chain

from pvsd.lab.lab import Lab
from pvsd.lab.qemu import Firmware

MAC = "52:54:00:de:00:01"


def main() -> int:
    state = Path("var/lab")
    lab = Lab(state, say=lambda message: print(f"lab: {message}", flush=True))
    env = {**os.environ, "PVSD_FARM__DATABASE": lab.database, "PVSD_SERVER__STORE": str(state / "store")}
    image = guest.build_rootfs(Path("var/demo/linux.img"), linux=True)
    for argv in (
        ["vdisk", "import", "linux", str(image.path), "--quiet"],
        ["device", "set", MAC, "--vdisk", "linux"],
    ):
        print("$ pvsd " + " ".join(argv), flush=True)
        subprocess.run([sys.executable, "-m", "pvsd", *argv], env=env, check=True)
    killed: list[str] = []

    def on_line(line: str) -> None:
        print(line, flush=True)
        if ATTACHED_MARKER in line and not killed:
            killed.append("pvs1" if '"server": "pvs1"' in line else "pvs2")
        elif "GUEST-INIT: root is" in line and len(killed) == 1:
            print(
                f"\n>>> demo: SIGKILL {killed[0]}, the server this VM streams from, while its OS reads\n",
                flush=True,
            )
            lab.kill(killed[0])
            killed.append("done")

    print("$ booting the diskless VM (BIOS, iPXE) through the whole chain", flush=True)
    run = boot_chain(lab, MAC, Firmware.BIOS, 300.0, on_line=on_line)
    problems = run.problems(image)
    if problems:
        print("demo: the diskless boot went wrong: " + "; ".join(problems), flush=True)
        return 1
    print(
        f"\ndemo: the OS ran to its end in {run.seconds:.1f} s with no disk, its server killed under it: "
        "both sums right, no I/O error",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
