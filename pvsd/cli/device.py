"""`pvsd device ...`: target devices, known by MAC."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from pvsd.cli.common import Commands, mac_argument, open_farm, print_json, print_table, with_json
from pvsd.config import Config
from pvsd.errors import BadInput
from pvsd.farm.records import DeviceType
from pvsd.farm.store import UNSET

__all__ = ["register"]


def register(commands: Commands) -> None:
    device = commands.noun("device", "target devices, known by MAC")
    add = device.command("add", _add, "add a device")
    add.add_argument("mac", type=mac_argument, help="aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff or aabbccddeeff")
    add.add_argument("--name", required=True)
    add.add_argument("--vdisk", help="assign this vDisk")
    add.add_argument("--site")
    add.add_argument("--type", choices=[t.value for t in DeviceType], default=DeviceType.PRODUCTION.value)
    add.add_argument("--disabled", action="store_true", help="add it disabled: it may not log in")
    with_json(device.command("list", _list, "list devices"))
    with_json(device.command("show", _show, "show one device")).add_argument("mac", type=mac_argument)
    change = device.command("set", _set, "change a device")
    change.add_argument("mac", type=mac_argument)
    change.add_argument("--name", dest="new_name")
    vdisk_choice = change.add_mutually_exclusive_group()
    vdisk_choice.add_argument("--vdisk", help="assign this vDisk")
    vdisk_choice.add_argument("--no-vdisk", action="store_true", help="unassign the vDisk")
    site_choice = change.add_mutually_exclusive_group()
    site_choice.add_argument("--site")
    site_choice.add_argument("--no-site", action="store_true")
    change.add_argument("--type", choices=[t.value for t in DeviceType])
    enabled = change.add_mutually_exclusive_group()
    enabled.add_argument("--enable", dest="enabled", action="store_const", const=True)
    enabled.add_argument("--disable", dest="enabled", action="store_const", const=False)
    device.command("remove", _remove, "remove a device").add_argument("mac", type=mac_argument)


def _add(args: argparse.Namespace, config: Config) -> int:
    device = open_farm(config).add_device(
        args.mac, args.name, vdisk=args.vdisk, site=args.site, type=args.type, enabled=not args.disabled
    )
    print(f"device {device.mac} ({device.name}) added" + (f", vDisk {device.vdisk}" if device.vdisk else ""))
    return 0


def _list(args: argparse.Namespace, config: Config) -> int:
    devices = open_farm(config).list_devices()
    if args.json:
        print_json(devices)
        return 0
    print_table(
        ["MAC", "NAME", "VDISK", "TYPE", "ENABLED", "SITE"],
        [
            [d.mac, d.name, d.vdisk or "-", d.type, "yes" if d.enabled else "no", d.site or "-"]
            for d in devices
        ],
        "no devices: add one with `pvsd device add MAC --name NAME`",
    )
    return 0


def _show(args: argparse.Namespace, config: Config) -> int:
    device = open_farm(config).get_device(args.mac)
    if args.json:
        print_json(device)
    else:
        for key, value in dataclasses.asdict(device).items():
            print(f"{key}: {value if value is not None else '-'}")
    return 0


def _set(args: argparse.Namespace, config: Config) -> int:
    changes: dict[str, Any] = {}
    if args.new_name is not None:
        changes["name"] = args.new_name
    if args.no_vdisk:
        changes["vdisk"] = None
    elif args.vdisk is not None:
        changes["vdisk"] = args.vdisk
    if args.no_site:
        changes["site"] = None
    elif args.site is not None:
        changes["site"] = args.site
    if args.type is not None:
        changes["type"] = args.type
    if args.enabled is not None:
        changes["enabled"] = args.enabled
    if not changes:
        raise BadInput(
            "nothing to change: give --name, --vdisk, --no-vdisk, --site, --type, --enable or --disable"
        )
    store = open_farm(config)
    device = store.update_device(args.mac, **{key: changes.get(key, UNSET) for key in changes})
    print(
        f"device {device.mac} ({device.name}) updated: " + ", ".join(f"{k}={v}" for k, v in changes.items())
    )
    return 0


def _remove(args: argparse.Namespace, config: Config) -> int:
    device = open_farm(config).remove_device(args.mac)
    print(f"device {device.mac} ({device.name}) removed")
    return 0
