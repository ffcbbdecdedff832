"""Build the compose farm's demo vDisk: a Linux root file system that runs until its VM stops.

Usage: demo-image.py IMAGE

The builder is the tests' (tests/support/guest.py): Debian's kernel in /boot, the modules the
diskless chain needs, busybox, and a 24 MiB payload. Its /sbin/init reads the whole payload
and writes a copy of 4 MiB of it on every pass, and prints one line per pass:
"PVSD-DEMO: pass N read SHA256 write ok". IMAGE.expected.json holds the payload's sha256.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, "/opt/pvsd/src/tests")

from support import guest

PAYLOAD_BYTES = 24 << 20

INIT_SH = """#!/bin/busybox sh
# The compose farm's demo OS: every pass reads the payload from the streamed vDisk (caches
# dropped first, so it crosses the network), writes a copy of part of it, and checks the copy.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
# 4: the kernel stops logging each drop_caches (the console is the container's log).
echo 4 > /proc/sys/vm/drop_caches
echo "GUEST-INIT: root is the streamed vDisk"
pass=0
while :; do
    pass=$((pass + 1))
    echo 3 > /proc/sys/vm/drop_caches
    read=$(sha256sum /data/random.bin | cut -d' ' -f1)
    skip=$((pass % 16))
    dd if=/data/random.bin of=/data/copy.bin bs=1M skip=$skip count=4 2>/dev/null
    sync
    echo 3 > /proc/sys/vm/drop_caches
    want=$(dd if=/data/random.bin bs=1M skip=$skip count=4 2>/dev/null | sha256sum | cut -d' ' -f1)
    got=$(sha256sum /data/copy.bin | cut -d' ' -f1)
    if [ "$want" = "$got" ]; then written=ok; else written=MISMATCH; fi
    echo "PVSD-DEMO: pass $pass read $read write $written"
    sleep 2
done
"""


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    root = guest.build_rootfs(out, size=96 << 20, payload_size=PAYLOAD_BYTES, init_sh=INIT_SH, linux=True)
    Path(f"{out}.expected.json").write_text(json.dumps({"payload": root.payload_sha256}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
