"""`pvsd lab ...`: the command-line face of the lab (pvsd/lab/lab.py does the work)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pvsd.cli.common import Commands, Handler
from pvsd.config import Config
from pvsd.errors import BadInput

__all__ = ["register"]


def register(commands: Commands) -> None:
    lab = commands.noun("lab", "a PXE lab in network namespaces on this machine (needs root)")
    # Every lab subcommand names the lab by its state folder.
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state", type=Path, default=Path("var/lab"), metavar="DIR", help="the lab's state folder (var/lab)"
    )

    def command(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        return lab.command(name, handler, help, [state])

    up = command("up", _up, "build the lab: bridge, site DHCP (dnsmasq), RAs, N pvsd servers, one farm")
    up.add_argument("--servers", type=int, default=2, metavar="N", help="how many pvsd servers (default 2)")
    up.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for every pvsd, e.g. PVSD_DHCP__STRATEGY__BIOS=via-4011 (repeatable)",
    )

    boot = command("boot", _boot, "boot a QEMU target until a console marker appears or time runs out")
    boot.add_argument("--firmware", choices=("bios", "uefi", "uefi-native", "uefi-http"), default="bios")
    boot.add_argument("--mac", help="the target's MAC (default: random 52:54:00:xx:xx:xx)")
    boot.add_argument(
        "--until", default=None, metavar="REGEX", help="console marker that ends the boot (pvsd device:)"
    )
    boot.add_argument("--timeout", type=float, default=90.0, metavar="S", help="give up after S seconds (90)")
    boot.add_argument("--quiet", action="store_true", help="do not echo the console")
    boot.add_argument(
        "--vdisk",
        metavar="NAME",
        help="boot this vDisk diskless: the MAC is registered on it (or moved to it) first; "
        "the boot runs until a login prompt or --until, with 768 MiB of RAM",
    )

    boot.add_argument(
        "--media",
        type=Path,
        metavar="FILE.iso",
        help="boot this ISO of `pvsd media build` from a CD instead of PXE (--firmware bios or uefi)",
    )

    command("down", _down, "remove the lab: processes, namespaces and state (also after a crash)")
    command("kill", _kill, "SIGKILL one pvsd server, for failover tests").add_argument(
        "server", help="pvs1, 1 or 10.77.0.11"
    )
    status = command("status", _status, "the lab's namespaces, processes and farm servers")
    status.add_argument("--json", action="store_true", help="print JSON")


def _lab(args: argparse.Namespace, extra_env: dict[str, str] | None = None) -> Any:
    # Imported here: `pvsd` commands other than `lab` need none of it.
    from pvsd.lab.lab import Lab

    def say(message: str) -> None:
        print(f"lab: {message}", file=sys.stderr, flush=True)

    return Lab(args.state, say=say, extra_env=extra_env or {})


def _up(args: argparse.Namespace, config: Config) -> int:
    extra: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("PVSD_"):
            raise BadInput(f"--env {item!r}: expected PVSD_SECTION__KEY=VALUE")
        extra[key] = value
    lab = _lab(args, extra)
    for server in lab.up(args.servers):
        print(f"{server.name}  {server.address}  namespace {server.namespace}")
    print(f"bridge namespace {lab.bridge_ns}; logs in {lab.state / 'logs'}")
    return 0


def _boot(args: argparse.Namespace, config: Config) -> int:
    from pvsd.lab.lab import DEFAULT_UNTIL

    lab = _lab(args)
    until = args.until if args.until is not None else DEFAULT_UNTIL
    memory = 256
    mac = args.mac
    if args.vdisk is not None:
        mac = _assign(lab, mac, args.vdisk)
        until = args.until if args.until is not None else VDISK_UNTIL
        memory = 768
    result = lab.boot(
        args.firmware,
        mac,
        until,
        args.timeout,
        echo=None if args.quiet else sys.stdout,
        memory_mb=memory,
        media=args.media,
    )
    if result.matched:
        print(f"\nlab: marker /{until}/ seen after {result.seconds:.1f} s: {result.match!r}", file=sys.stderr)
        return 0
    print(f"\nlab: marker /{until}/ not seen: {result.reason} after {result.seconds:.1f} s", file=sys.stderr)
    return 1


# What a booted OS prints when it is up: a getty's prompt, or the test images' last line.
VDISK_UNTIL = r"login:|PVSD-GUEST-DONE"


def _assign(lab: Any, mac: str | None, vdisk: str) -> str:
    """Register `mac` (a random one if None) on `vdisk` in the lab's farm; wait for the scripts."""
    from pvsd.farm.store import open_store
    from pvsd.lab.lab import random_mac
    from pvsd.net.mac import parse_mac

    mac = parse_mac(mac) if mac else random_mac()
    store = open_store(lab.database, "lab")
    try:
        store.get_vdisk(vdisk)  # NotFound names it
        if store.find_device(mac) is None:
            store.add_device(mac, "lab-" + mac.replace(":", "")[-6:], vdisk=vdisk)
        else:
            store.update_device(mac, vdisk=vdisk)
    finally:
        store.close()
    print(f"lab: {mac} boots vDisk {vdisk}", file=sys.stderr)
    time.sleep(2.5)  # the servers read the farm's devices once a heartbeat
    return mac


def _down(args: argparse.Namespace, config: Config) -> int:
    _lab(args).down()
    print("lab down")
    return 0


def _kill(args: argparse.Namespace, config: Config) -> int:
    server = _lab(args).kill(args.server)
    print(f"{server.name} ({server.address}) killed")
    return 0


def _status(args: argparse.Namespace, config: Config) -> int:
    status = _lab(args).status()
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    if not status["up"]:
        print(f"no lab is up at {status['state']}")
        return 0
    print(f"lab at {status['state']} (namespaces {status['prefix']}-*)")
    for name, process in status["processes"].items():
        print(f"  {name:10} pid {process['pid'] or '-':>7}  {'running' if process['running'] else 'stopped'}")
    farm = status["farm"]
    if isinstance(farm, list):
        for server in farm:
            print(f"  farm: {server['name']:8} {server['address']:12} {server['state']}")
    elif farm:
        print(f"  farm: {farm}")
    return 0
