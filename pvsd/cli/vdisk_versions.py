"""`pvsd vdisk version ...`, `promote`, `revert`, `merge`, `versions`, `placement`: a vDisk's versions
as PVS has them (the rules: pvsd/farm/versions.py; the files: pvsd/vdisk/version_files.py).

The commands that touch an image (version new, promote out of maintenance, revert to maintenance,
merge, version delete) act on this server's store, `[server] store` of the config they run with:
run them on the server that holds the image, as that server (`--config` of its pvsd).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

from pvsd.cli.common import Noun, open_farm, print_json, print_table, with_json
from pvsd.config import Config
from pvsd.errors import BadInput
from pvsd.farm.records import ReplicaState, VDisk, VDiskVersion, VersionState
from pvsd.farm.store import FarmStore
from pvsd.farm.versions import check_promote
from pvsd.units import format_size
from pvsd.vdisk.image import image_path, verify_image
from pvsd.vdisk.version_files import clone_version, remove_version_files, seal_image

__all__ = ["register_versions"]


def register_versions(vdisk: Noun) -> None:
    version = vdisk.noun("version", "make and delete a vDisk's versions")
    new = version.command(
        "new", _new, "a maintenance version on top of the newest, on this server (its home)"
    )
    new.add_argument("name")
    delete = version.command(
        "delete", _delete, "forget a version no device boots and no target streams; servers drop their copies"
    )
    delete.add_argument("name")
    delete.add_argument("version", type=int)
    versions = with_json(
        vdisk.command("versions", _versions, "a vDisk's versions: parent, state, sha256, size, servers")
    )
    versions.add_argument("name")
    promote = vdisk.command(
        "promote",
        _promote,
        "move a version up: maintenance -> test -> production (at each device's next boot)",
    )
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    promote.add_argument("state", choices=("test", "production"))
    promote.add_argument(
        "--at",
        metavar="TIME",
        type=_when,
        help="promote at this time instead of now: ISO 8601, e.g. 2026-12-04T06:00 (local) or ...+01:00",
    )
    revert = vdisk.command(
        "revert", _revert, "move a version one step back: production -> test -> maintenance"
    )
    revert.add_argument("name")
    revert.add_argument("version", type=int)
    merge = vdisk.command(
        "merge",
        _merge,
        "a merged version of the newest sealed one: an update on its base, or --base a new base",
    )
    merge.add_argument("name")
    merge.add_argument("--base", action="store_true", help="a new base (no parent), so older versions can go")
    merge.add_argument(
        "--state", choices=("test", "production"), default="test", help="its state (default test)"
    )
    placement = vdisk.command(
        "placement", _placement, "which servers should hold a vDisk's versions (default: every server)"
    )
    placement.add_argument("name")
    placement.add_argument("servers", nargs="*", metavar="SERVER", help="these servers only")
    placement.add_argument("--all", action="store_true", help="every server again")


def active_within(config: Config) -> float:
    """How recently a session must have been seen to count as streaming."""
    return config.stream.idle_timeout + 2 * config.farm.heartbeat_interval


def _when(text: str) -> float:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: give ISO 8601, e.g. 2026-12-04T06:00 or 2026-12-04T06:00+01:00"
        ) from None
    return moment.timestamp()  # a naive time is this host's local time


def _this_server(store: FarmStore, config: Config) -> str:
    name = config.server.name
    if name not in {s.name for s in store.list_servers()}:
        raise BadInput(
            f"this server ({name}, [server] name) is not in the farm: run the command on a server "
            "that has started `pvsd serve` at least once, with its config"
        )
    return name


def warn_versions(vdisk: VDisk, config: Config) -> None:
    """PVS's rule of thumb: past [farm] max_versions, merge and delete."""
    if len(vdisk.versions) > config.farm.max_versions:
        print(
            f"warning: vDisk {vdisk.name} has {len(vdisk.versions)} versions, more than [farm] max_versions "
            f"({config.farm.max_versions}): merge them (pvsd vdisk merge {vdisk.name} --base) and delete "
            f"the old ones (pvsd vdisk version delete {vdisk.name} N)",
            file=sys.stderr,
        )


def _new(args: argparse.Namespace, config: Config) -> int:
    store = open_farm(config)
    here = _this_server(store, config)
    folder = Path(config.server.store)

    def place(parent: int, number: int) -> None:
        clone_version(folder, args.name, parent, number, sealed=False)

    version = store.new_version(args.name, here, place)
    print(
        f"{args.name} version {version.number}: maintenance, made from version {version.parent} on {here} "
        f"({image_path(folder, args.name, version.number)}). Boot one device of type maintenance to "
        f"change it, shut it down, then: pvsd vdisk promote {args.name} {version.number} test"
    )
    warn_versions(store.get_vdisk(args.name), config)
    return 0


def _delete(args: argparse.Namespace, config: Config) -> int:
    store = open_farm(config)
    store.delete_version(args.name, args.version, active_within(config))
    removed = remove_version_files(Path(config.server.store), args.name, args.version)
    here = f"; {len(removed)} file(s) removed here" if removed else ""
    print(f"{args.name} version {args.version} deleted{here}; other servers drop their copies")
    return 0


def _describe_state(version: VDiskVersion) -> str:
    text = str(version.state)
    if version.pending:
        text += " (pending)"
    if version.promote_to is not None and version.promote_at is not None:
        at = datetime.datetime.fromtimestamp(version.promote_at).isoformat(timespec="minutes")
        text += f", {version.promote_to} at {at}"
    return text


def _versions(args: argparse.Namespace, config: Config) -> int:
    store = open_farm(config)
    vdisk = store.get_vdisk(args.name)
    holders: dict[int, list[str]] = {}
    for replica in store.list_replicas(args.name):
        version = vdisk.version(replica.version)
        if replica.state is ReplicaState.VERIFIED and version and replica.sha256 == version.sha256:
            holders.setdefault(replica.version, []).append(replica.server)
    if args.json:
        print_json(
            [
                {
                    "number": v.number,
                    "parent": v.parent,
                    "state": str(v.state),
                    "pending": v.pending,
                    "sha256": v.sha256,
                    "size": vdisk.size,
                    "created_at": v.created_at,
                    "servers": sorted(holders.get(v.number, [])),
                    "home": v.home,
                    "promote_to": None if v.promote_to is None else str(v.promote_to),
                    "promote_at": v.promote_at,
                    "boots_diskless": v.boot is not None,
                }
                for v in vdisk.versions
            ]
        )
        return 0
    print_table(
        ["VERSION", "PARENT", "STATE", "SIZE", "SHA256", "SERVERS"],
        [
            [
                v.number,
                "-" if v.parent is None else v.parent,
                _describe_state(v),
                format_size(vdisk.size),
                (v.sha256 or ("(being written)" if v.home else "-"))[:16],
                ", ".join(sorted(holders.get(v.number, []))) or "-",
            ]
            for v in vdisk.versions
        ],
        f"vDisk {args.name} has no versions",
    )
    warn_versions(vdisk, config)
    return 0


def _promote(args: argparse.Namespace, config: Config) -> int:
    store = open_farm(config)
    target = VersionState(args.state)
    vdisk = store.get_vdisk(args.name)
    version = check_promote(vdisk, args.version, target)
    if version.home is None:
        store.promote(args.name, args.version, target, at=args.at)
        when = (
            f"at {datetime.datetime.fromtimestamp(args.at).isoformat(timespec='minutes')}"
            if args.at is not None
            else "now"
        )
        pending = " It is pending until every server holds it verified." if version.pending else ""
        print(
            f"{args.name} version {args.version}: {version.state} -> {args.state} {when}; each device takes "
            f"it at its next boot (a running target keeps its version).{pending}"
        )
        return 0
    if args.at is not None:
        raise BadInput(
            f"{args.name} version {args.version} is in maintenance: promote it to test now, "
            "and schedule the step to production with --at"
        )
    image = image_path(Path(config.server.store), args.name, args.version)
    if not image.is_file():
        raise BadInput(
            f"{args.name} version {args.version} is in maintenance on {version.home}, and this "
            f"server's store has no {image}: run the promote on {version.home}"
        )
    writer = store.writer(args.name, args.version, active_within(config))
    if writer is not None:
        raise BadInput(
            f"{args.name} version {args.version} is being written by {writer.device} on {writer.server}: "
            "shut that device down first"
        )
    started = time.monotonic()
    index = seal_image(image)
    store.seal_version(args.name, args.version, index.sha256, target, active_within(config))
    print(
        f"{args.name} version {args.version}: maintenance -> {args.state}, sealed with sha256 {index.sha256} "
        f"({format_size(index.size)} hashed in {time.monotonic() - started:.1f} s); the other servers copy "
        "it now, and each device takes it at its next boot"
    )
    return 0


def _revert(args: argparse.Namespace, config: Config) -> int:
    store = open_farm(config)
    was = store.get_vdisk(args.name).version(args.version)
    version = store.revert(args.name, args.version, config.server.name, active_within(config))
    where = f" on {version.home}: its copies on other servers are dropped" if version.home else ""
    print(f"{args.name} version {args.version}: {was.state if was else '?'} -> {version.state}{where}")
    return 0


def _merge(args: argparse.Namespace, config: Config) -> int:
    store = open_farm(config)
    here = _this_server(store, config)
    folder = Path(config.server.store)
    vdisk = store.get_vdisk(args.name)

    def place(source: int, number: int) -> None:
        record = vdisk.version(source)
        image = image_path(folder, args.name, source)
        check = verify_image(image, record.sha256 if record and record.sha256 else "", vdisk.size)
        if not check.ok:
            raise BadInput(
                f"{args.name} version {source} is not verified in this server's store ({check.reason}): "
                "merge on a server that holds it"
            )
        clone_version(folder, args.name, source, number, sealed=True)

    version = store.merge_version(
        args.name, args.base, VersionState(args.state), here, active_within(config), place
    )
    kind = "a new base" if version.parent is None else f"an update on base version {version.parent}"
    print(
        f"{args.name} version {version.number}: merged, {kind}, {version.state}, sha256 {version.sha256}; "
        "older versions can be deleted with pvsd vdisk version delete"
    )
    warn_versions(store.get_vdisk(args.name), config)
    return 0


def _placement(args: argparse.Namespace, config: Config) -> int:
    store = open_farm(config)
    if args.all and args.servers:
        raise BadInput("give SERVER names or --all, not both")
    if args.all or args.servers:
        vdisk = store.set_placement(args.name, [] if args.all else args.servers)
    else:
        vdisk = store.get_vdisk(args.name)
    where = ", ".join(vdisk.placement) if vdisk.placement else "every server of the farm"
    print(f"{args.name}: its versions belong on {where}")
    return 0
