"""`make demo`, the guest part: a Linux VM boots from a streamed vDisk and survives its server's death.

Usage: demo_guest.py build IMAGE           build the guest's root file system (ext4, 64 MiB payload)
       demo_guest.py boot IMAGE --servers A,B --pid NAME=PID ...
                                           run the agent, boot QEMU through it, SIGKILL the serving
                                           server halfway through the guest's read, report the stall

The guest builders are the tests' (tests/support/guest.py): Debian's kernel, a busybox
initramfs, and a root file system whose init script prints checksums of what it read and wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support import guest  # noqa: E402 - after the path above

MAC = "52:54:00:12:34:57"
KILL_AFTER = 24 << 20  # bytes the guest has read when its server is killed


def build(image: Path) -> int:
    guest.require_guest_tools()
    root = guest.build_rootfs(image)
    (image.parent / (image.name + ".expected.json")).write_text(
        json.dumps({"payload": root.payload_sha256, "written": root.expected_write_sha256})
    )
    print(f"guest root file system {image}: ext4, a 64 MiB random file, an init script that checks it")
    return 0


def status(path: Path) -> dict[str, object]:
    try:
        value: dict[str, object] = json.loads(path.read_text())
        return value
    except (OSError, ValueError):
        return {}


def boot(image: Path, servers: str, pids: dict[str, int]) -> int:
    expected = json.loads((image.parent / (image.name + ".expected.json")).read_text())
    state = REPO / "var" / "demo"
    status_file = state / "agent.status.json"
    status_file.unlink(missing_ok=True)
    pvsd = str(REPO / ".venv" / "bin" / "pvsd")
    with (state / "agent.log").open("w") as log:
        agent = subprocess.Popen(
            [
                pvsd,
                "--log-format",
                "json",
                "target",
                "boot",
                "--mac",
                MAC,
                "--servers",
                servers,
                "--nbd",
                "127.0.0.1:10809",
                "--status",
                str(status_file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not status_file.exists() and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if agent.poll() is not None or not status_file.exists():
            print("the agent did not start; see var/demo/agent.log")
            return 1
        print(f"agent: logged in to {status(status_file)['server']}, exporting nbd://127.0.0.1:10809/vdisk")
        result: list[guest.GuestRun] = []
        runner = threading.Thread(
            target=lambda: result.append(guest.boot_guest("file=nbd://127.0.0.1:10809/vdisk", timeout=180))
        )
        started = time.monotonic()
        runner.start()
        killed = None
        while runner.is_alive() and killed is None:
            now = status(status_file)
            if int(str(now.get("bytes_read", 0))) > KILL_AFTER:
                killed = str(now["server"])
                os.kill(pids[killed], signal.SIGKILL)
                read_mib = int(str(now["bytes_read"])) >> 20
                print(f"guest has read {read_mib} MiB: SIGKILL {killed} (pid {pids[killed]})")
            time.sleep(0.05)
        runner.join(200)
        if not result:
            print("the guest did not finish")
            return 1
        run = result[0]
        print(f"guest finished in {time.monotonic() - started:.1f} s")
        for line in run.console.splitlines():
            if line.startswith(("PAYLOAD-SHA256", "WRITTEN-SHA256", "PVSD-GUEST", "GUEST-KERNEL")):
                print(f"  guest says: {line}")
        print(f"  expected:   PAYLOAD-SHA256 {expected['payload']}")
        print(f"  expected:   WRITTEN-SHA256 {expected['written']}")
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
    final = status(status_file)
    for failover in final.get("failovers", []):  # type: ignore[attr-defined]
        moved = f"{failover['from']} to {failover['to']}"
        print(f"agent failed over from {moved}: stall {failover['stall_s']:.3f} s")
    ok = (
        run.done
        and run.payload_sha256 == expected["payload"]
        and run.written_sha256 == expected["written"]
        and not run.io_errors
    )
    print("the guest read and wrote every byte right, with no I/O error" if ok else "THE GUEST SAW A PROBLEM")
    if killed:
        print(f"killed: {killed}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build")
    build_parser.add_argument("image", type=Path)
    boot_parser = commands.add_parser("boot")
    boot_parser.add_argument("image", type=Path)
    boot_parser.add_argument("--servers", required=True)
    boot_parser.add_argument("--pid", action="append", default=[], metavar="NAME=PID")
    args = parser.parse_args()
    try:
        if args.command == "build":
            return build(args.image)
        pids = {name: int(pid) for name, _, pid in (item.partition("=") for item in args.pid)}
        return boot(args.image, args.servers, pids)
    except guest.GuestToolMissing as error:
        print(f"cannot build the guest: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
