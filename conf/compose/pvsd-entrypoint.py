"""The compose farm's pvs1..3 services: join the farm (creating it on the first start), import
the demo vDisk where asked (pvs1's first start), then run `pvsd serve` as the container's
process.

Environment: PVSD_SERVER__NAME, PVSD_SERVER__ADDRESS and PVSD_FARM__DATABASE, as for any pvsd;
PVSD_DEMO_MACS, a comma-separated list of MACs to register on the demo vDisk when the farm has
no vDisk named demo. Every line this prints is one JSON event, as pvsd's own logs are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEMO = "demo"
DEMO_IMAGE = Path("/var/lib/pvsd/demo.img")
INIT_TIMEOUT_S = 60.0


def say(event: str, level: str = "info", **fields: object) -> None:
    print(json.dumps({"event": event, "level": level, "logger": "compose", **fields}), flush=True)


def pvsd(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pvsd", *argv], capture_output=True, text=True, timeout=300, check=False)


def join_farm() -> bool:
    """`pvsd farm init` until it works: it creates the farm or upgrades it in place, under an
    advisory lock, so three servers starting at once make it once. False when the database
    stays unreachable: the server then starts from its snapshot, as a restart in an outage does."""
    deadline = time.monotonic() + INIT_TIMEOUT_S
    while True:
        done = pvsd("farm", "init", "--name", "compose")
        if done.returncode == 0:
            say("farm ready", output=done.stdout.strip())
            return True
        if time.monotonic() > deadline:
            say("farm database unreachable: starting from the snapshot", "warning", error=done.stderr.strip())
            return False
        time.sleep(1.0)


def import_demo(macs: list[str]) -> None:
    listed = pvsd("vdisk", "list", "--json")
    if listed.returncode != 0 or any(v.get("name") == DEMO for v in json.loads(listed.stdout or "[]")):
        return
    say("building the demo vDisk", image=str(DEMO_IMAGE))
    built = subprocess.run(
        [sys.executable, "/etc/pvsd/compose/demo-image.py", str(DEMO_IMAGE)], capture_output=True, text=True
    )
    if built.returncode != 0:
        say("the demo vDisk could not be built", "error", error=built.stderr.strip()[-2000:])
        return
    steps = [("vdisk", "import", DEMO, str(DEMO_IMAGE), "--quiet")]
    steps += [
        ("device", "add", mac, "--name", f"target{n}", "--vdisk", DEMO) for n, mac in enumerate(macs, 1)
    ]
    for step in steps:
        done = pvsd(*step)
        if done.returncode != 0:
            say("demo set-up step failed", "error", step=" ".join(step), error=done.stderr.strip())
            return
    DEMO_IMAGE.unlink(missing_ok=True)
    say("demo vDisk imported", vdisk=DEMO, devices=macs)


def main() -> int:
    Path("/var/lib/pvsd/tftp").mkdir(parents=True, exist_ok=True)
    joined = join_farm()
    macs = [m for m in os.environ.get("PVSD_DEMO_MACS", "").split(",") if m]
    if joined and macs:
        import_demo(macs)
    # pvsd becomes the container's main process: it gets docker stop's SIGTERM itself.
    os.execvp("pvsd", ["pvsd", "--log-format", "json", "serve"])  # noqa: S606 - no shell wanted


if __name__ == "__main__":
    sys.exit(main())
