"""`pvsd vdisk ...`: virtual disks, their versions, and which server holds which."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

from pvsd.boot.linux_image import find_linux_boot
from pvsd.boot.version_boot import boot_summary, stage_boot_files
from pvsd.cli.common import (
    Commands,
    open_farm,
    print_json,
    print_table,
    progress_bar,
    size_argument,
    with_json,
)
from pvsd.cli.vdisk_versions import active_within, register_versions, warn_versions
from pvsd.config import Config
from pvsd.errors import BadInput
from pvsd.farm.records import (
    AccessMode,
    Replica,
    ReplicaState,
    ServerHealth,
    VDisk,
    VDiskShape,
    WriteCache,
)
from pvsd.names import check_name
from pvsd.units import format_approx, format_size
from pvsd.vdisk.formats import CONVERTIBLE, convert_to_raw, probe_image
from pvsd.vdisk.image import boot_folder, check_source, discard_image, image_path, import_image, move_image

__all__ = ["register"]


def register(commands: Commands) -> None:
    vdisk = commands.noun("vdisk", "virtual disks and their versions")
    geometry = argparse.ArgumentParser(add_help=False)
    geometry.add_argument("--sector-size", type=int, choices=(512, 4096), default=512)
    geometry.add_argument("--mode", choices=[m.value for m in AccessMode], default=AccessMode.STANDARD.value)
    geometry.add_argument(
        "--cache",
        choices=[c.value for c in WriteCache],
        default=WriteCache.DEVICE.value,
        help="standard mode: where writes go (device: the target's RAM and disk; server: an overlay)",
    )
    create = vdisk.command("create", _create, "record a new, empty vDisk (version 0)", [geometry])
    create.add_argument("name")
    create.add_argument(
        "--size", type=size_argument, required=True, metavar="BYTES", help="e.g. 8589934592 or 8G"
    )
    imported = vdisk.command(
        "import", _import, "copy a disk image into this server's store as the next version", [geometry]
    )
    imported.add_argument("name")
    imported.add_argument(
        "file", help="a disk image: raw, or qcow2, VHD, VHDX, VMDK or VDI (converted with qemu-img)"
    )
    imported.add_argument("--quiet", action="store_true", help="no progress bar")
    imported.add_argument(
        "--kernel", type=Path, metavar="FILE", help="the kernel to boot diskless, in place of the image's own"
    )
    imported.add_argument(
        "--initrd", type=Path, metavar="FILE", help="the initramfs to boot with, in place of the image's own"
    )
    imported.add_argument(
        "--no-boot",
        action="store_true",
        help="a plain disk: look for no kernel (it boots through the host agent, not diskless)",
    )
    imported.add_argument(
        "--cmdline",
        default="",
        metavar="TEXT",
        help="kernel command line of this version, after [boot] cmdline",
    )
    with_json(vdisk.command("list", _list, "list vDisks"))
    replicas = with_json(vdisk.command("replicas", _replicas, "which server holds which version"))
    replicas.add_argument("name", nargs="?", help="only this vDisk")
    register_versions(vdisk)
    sync = vdisk.command(
        "sync", _sync, "whether every live server of its placement holds a version; --wait follows"
    )
    sync.add_argument("name")
    sync.add_argument("--version", type=int, metavar="N", help="this version (default: the newest)")
    sync.add_argument("--wait", action="store_true", help="wait until every live server has it verified")
    sync.add_argument(
        "--timeout", type=float, default=3600.0, metavar="S", help="with --wait, give up after S seconds"
    )
    remove = vdisk.command("remove", _remove, "remove a vDisk no device is assigned and no target streams")
    remove.add_argument("name")
    remove.add_argument(
        "--force",
        action="store_true",
        help="remove it even while targets stream it: their sessions end, and they stop with VDISK_REMOVED",
    )


def _create(args: argparse.Namespace, config: Config) -> int:
    vdisk = open_farm(config).create_vdisk(
        args.name, args.size, sector_size=args.sector_size, mode=args.mode, cache=args.cache
    )
    print(f"vDisk {vdisk.name!r} created: {format_size(vdisk.size)}, {_mode_text(vdisk)}, version 0")
    return 0


def _mode_text(vdisk: VDisk) -> str:
    if vdisk.mode is AccessMode.PRIVATE:
        return "private mode"
    return f"standard mode, write cache on the {vdisk.cache}"


def _import(args: argparse.Namespace, config: Config) -> int:
    """Import an image (raw, or a hypervisor's format through qemu-img) as the next version."""
    source = Path(args.file)
    info = probe_image(source) if source.is_file() else None
    if info is None or info.raw:
        return _import_raw(args, config, source)
    folder = image_path(Path(config.server.store), args.name, 0).parent
    folder.mkdir(parents=True, exist_ok=True)
    converted = folder / f".import-{os.getpid()}.raw"
    print(
        f"converting {source} ({CONVERTIBLE[info.format]}, {format_size(info.virtual_size)}) to a raw image",
        file=sys.stderr,
    )
    try:
        convert_to_raw(source, info, converted)
        return _import_raw(args, config, converted, shown=source)
    finally:
        converted.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if the import left it empty


def _import_raw(args: argparse.Namespace, config: Config, source: Path, shown: Path | None = None) -> int:
    """Copy a raw image into this server's store as the vDisk's next version, verified."""
    # Nothing is written, to the farm or to the store, before the source is known to be good;
    # then the farm records the vDisk, its version and this server's replica in one transaction.
    store = open_farm(config)
    existing = next((v for v in store.list_vdisks() if v.name == args.name), None)
    sector_size = existing.sector_size if existing is not None else args.sector_size
    size = check_source(source, sector_size)
    if existing is not None and existing.size != size:
        raise BadInput(
            f"{shown or source} is {size} bytes but vDisk {args.name!r} is {existing.size}: "
            "a new version must keep the disk's size"
        )
    check_name("vDisk", args.name)
    for given in (args.kernel, args.initrd):
        if given is not None and not given.is_file():
            raise BadInput(f"{given} is not a file")
    if args.no_boot and (args.kernel or args.initrd or args.cmdline):
        raise BadInput("--no-boot imports a plain disk: it takes no --kernel, --initrd or --cmdline")
    # Before anything is written: a bad image changes nothing.
    found = None
    if not args.no_boot:
        try:
            found = find_linux_boot(source, sector_size)
        except BadInput:
            if args.kernel is None:
                raise
            # with --kernel the image need not hold a bootable root; its modules are used if it has one
    if found is None and args.kernel is None and not args.no_boot:
        print(
            f"{shown or source} holds no Linux root file system: "
            "it boots through the host agent, not diskless"
        )
    store_folder = Path(config.server.store)
    folder = image_path(store_folder, args.name, 0).parent
    staged = folder / f".import-{os.getpid()}.img"
    staged_boot = folder / f".import-{os.getpid()}.boot"
    label = (shown or source).name
    progress = progress_bar(f"importing {label}") if sys.stderr.isatty() and not args.quiet else None
    here = config.server.name if config.server.name in {s.name for s in store.list_servers()} else None
    try:
        boot = stage_boot_files(source, found, args.kernel, args.initrd, args.cmdline, staged_boot)
        result = import_image(source, staged, progress, sector_size=sector_size)
        shape = VDiskShape(result.size, sector_size, AccessMode(args.mode), WriteCache(args.cache))

        def place(number: int) -> None:
            if boot is None:
                move_image(staged, image_path(store_folder, args.name, number))
                return
            destination = boot_folder(store_folder, args.name, number)
            shutil.rmtree(destination, ignore_errors=True)  # left by a vDisk of this name removed before
            staged_boot.rename(destination)
            try:
                move_image(staged, image_path(store_folder, args.name, number))
            except BaseException:
                # the version is not recorded: its boot files must not outlive the failed import
                shutil.rmtree(destination, ignore_errors=True)
                raise

        version = store.import_version(args.name, shape, result.sha256, here, place=place, boot=boot)
    finally:
        discard_image(staged)
        shutil.rmtree(staged_boot, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if the import left it empty
    if boot is not None:
        print(boot_summary(boot, found))
    destination = image_path(Path(config.server.store), args.name, version.number)
    if here is not None:
        held = f"replica on {here} verified"
    else:
        held = "servers using this store report their replica at their next scan"
    print(
        f"vDisk {args.name!r} version {version.number} imported: {format_size(result.size)}, "
        f"sha256 {result.sha256}, {destination} ({held})"
    )
    warn_versions(store.get_vdisk(args.name), config)
    return 0


def _list(args: argparse.Namespace, config: Config) -> int:
    vdisks = open_farm(config).list_vdisks()
    if args.json:
        print_json(vdisks)
        return 0
    print_table(
        ["NAME", "SIZE", "MODE", "CACHE", "VERSIONS", "PRODUCTION"],
        [
            [
                v.name,
                format_size(v.size),
                v.mode,
                "-" if v.mode is AccessMode.PRIVATE else v.cache,
                len(v.versions),
                max((ver.number for ver in v.versions if ver.state == "production"), default="-"),
            ]
            for v in vdisks
        ],
        "no vDisks: create one with `pvsd vdisk create NAME --size BYTES`",
    )
    return 0


def _replicas(args: argparse.Namespace, config: Config) -> int:
    store = open_farm(config)
    replicas = store.list_replicas(args.name)
    if args.json:
        print_json(replicas)
        return 0
    health = {s.name: s.health(config.farm.dead_after) for s in store.list_servers()}
    sizes = {v.name: v.size for v in store.list_vdisks()}
    print_table(
        ["VDISK", "VERSION", "SERVER", "STATE", "FETCHED", "SHA256"],
        [
            [
                r.vdisk,
                r.version,
                r.server,
                replica_state_text(r, sizes.get(r.vdisk, 0), health.get(r.server)),
                format_size(r.fetched_bytes),
                (r.sha256 or "-")[:16],
            ]
            for r in replicas
        ],
        "no replicas: servers report the images in their [server] store",
    )
    return 0


def replica_state_text(replica: Replica, size: int, health: ServerHealth | None) -> str:
    """`verified`, `copying 42% at 12.0 MiB/s`, ..., or `unreachable` for a server that is not alive."""
    if health is not ServerHealth.ALIVE:
        return f"unreachable ({replica.state})"
    if replica.state is ReplicaState.COPYING:
        percent = replica.copied_bytes * 100 // size if size else 0
        rate = f" at {format_approx(replica.rate_bps)}/s" if replica.rate_bps else ""
        return f"copying {percent}%{rate}"
    return str(replica.state)


def _sync(args: argparse.Namespace, config: Config) -> int:
    """Show (and with --wait, follow) the copies of a version until every live server holds it."""
    store = open_farm(config)
    vdisk = store.get_vdisk(args.name)
    if not vdisk.versions:
        raise BadInput(f"vDisk {args.name!r} has no version yet")
    number = args.version if args.version is not None else vdisk.versions[-1].number
    if number not in {v.number for v in vdisk.versions}:
        raise BadInput(f"vDisk {args.name!r} has no version {number}")
    record = vdisk.version(number)
    if record is not None and record.home is not None:
        raise BadInput(
            f"{args.name} version {number} is in maintenance on {record.home}: it is copied to the other "
            f"servers once promoted (pvsd vdisk promote {args.name} {number} test)"
        )
    deadline = time.monotonic() + args.timeout
    show = progress_bar(f"{args.name} v{number}") if sys.stderr.isatty() else None
    while True:
        live = {
            s.name
            for s in store.list_servers()
            if s.health(config.farm.dead_after) is ServerHealth.ALIVE
            and (not vdisk.placement or s.name in vdisk.placement)
        }
        replicas = {r.server: r for r in store.list_replicas(args.name) if r.version == number}
        held = sum(
            vdisk.size if r.state is ReplicaState.VERIFIED else r.copied_bytes
            for name, r in replicas.items()
            if name in live
        )
        lacking = sorted(
            n for n in live if replicas.get(n) is None or replicas[n].state is not ReplicaState.VERIFIED
        )
        if show is not None:
            show(held, vdisk.size * max(len(live), 1))
        if not lacking:
            print(f"{args.name} version {number}: verified on every live server ({', '.join(sorted(live))})")
            return 0
        if not args.wait or time.monotonic() > deadline:
            states = ", ".join(
                f"{n}: "
                + (
                    replica_state_text(replicas[n], vdisk.size, ServerHealth.ALIVE)
                    if n in replicas
                    else "missing"
                )
                for n in lacking
            )
            print(f"{args.name} version {number}: not yet on {states}")
            return 1
        time.sleep(1.0)


def _remove(args: argparse.Namespace, config: Config) -> int:
    ended = open_farm(config).remove_vdisk(args.name, active_within(config), force=args.force)
    print(f"vDisk {args.name!r} removed" + (f"; {ended} session(s) ended" if ended else ""))
    return 0
