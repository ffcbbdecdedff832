"""The `pvsd` command: serve, and manage the farm (servers, sites, devices, vDisks, sessions).

Errors go to stderr as one line: exit code 2 for bad input, 1 for failures, never a
traceback (unless --log-level debug, for a bug report).
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pvsd import __version__
from pvsd.boot.bootstrap import BOOTSTRAP_NAME, bootstrap_document, render_bootstrap
from pvsd.boot.ipxe import device_script, device_script_name, ipxe_bootstrap, unknown_device_script
from pvsd.config import Config, load_config, render_toml
from pvsd.errors import BadInput, PvsdError
from pvsd.farm.records import (
    AccessMode,
    DeviceType,
    ReplicaState,
    ServerHealth,
    VDisk,
    VersionState,
    WriteCache,
)
from pvsd.farm.store import UNSET, FarmStore, init_farm, open_store
from pvsd.lab.commands import register as register_lab
from pvsd.log import LOG_FORMATS, configure_logging, get_logger
from pvsd.net.mac import parse_mac
from pvsd.processes import run
from pvsd.target.commands import register as register_target
from pvsd.units import format_size, parse_size
from pvsd.vdisk.image import image_path, import_image

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace, Config], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # argparse: usage errors (2), --help and --version (0)
        return exit.code if isinstance(exit.code, int) else 2
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    debug = getattr(args, "log_level", None) == "debug"
    try:
        config = load_config(getattr(args, "config", None), overrides=_flag_overrides(args))
        debug = config.log.level == "debug"
        configure_logging(config.log.level, getattr(args, "log_format", "auto"))
        handler: Handler = args.handler
        return handler(args, config)
    except PvsdError as error:
        print(f"pvsd: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0  # `pvsd ... | head` closed our stdout: not an error
    except Exception as error:
        if debug:
            traceback.print_exc()
        print(
            f"pvsd: internal error: {type(error).__name__}: {error} "
            "(this is a bug; rerun with --log-level debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags that set config keys; each wins over the file and the environment."""
    pairs = {
        "log.level": getattr(args, "log_level", None),
        "farm.database": getattr(args, "database", None),
        "server.name": getattr(args, "server_name", None),
        "server.address": getattr(args, "address", None),
        "server.bind": getattr(args, "bind", None),
    }
    return {key: value for key, value in pairs.items() if value is not None}


def _actor() -> str:
    """Who makes a change, for the audit log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"cli:{user}@{socket.gethostname()}"


def _store(config: Config) -> FarmStore:
    return open_store(config.farm.database, _actor())


# -- output -------------------------------------------------------------------------------------------


def _print_json(value: Any) -> None:
    def plain(item: Any) -> Any:
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return {key: plain(inner) for key, inner in dataclasses.asdict(item).items()}
        if isinstance(item, list | tuple):
            return [plain(inner) for inner in item]
        if isinstance(item, dict):
            return {key: plain(inner) for key, inner in item.items()}
        return item

    print(json.dumps(plain(value), indent=2, sort_keys=True))


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> None:
    if not rows:
        print(empty)
        return
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(header), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f}s ago"


# -- farm ---------------------------------------------------------------------------------------------


def _farm_init(args: argparse.Namespace, config: Config) -> int:
    store, farm, created = init_farm(config.farm.database, args.name, _actor())
    store.close()
    if created:
        print(f"farm {farm.name!r} created in {store.url} (schema version {farm.schema_version})")
    else:
        print(
            f"farm {farm.name!r} already exists in {store.url} "
            f"(schema version {farm.schema_version}); kept it"
        )
    return 0


def _farm_show(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    farm = store.get_farm()
    servers = store.list_servers()
    alive = sum(server.health(config.farm.dead_after) is ServerHealth.ALIVE for server in servers)
    info = {
        "name": farm.name,
        "database": store.url,
        "schema_version": farm.schema_version,
        "servers": len(servers),
        "servers_alive": alive,
        "devices": len(store.list_devices()),
        "vdisks": len(store.list_vdisks()),
        "sessions": len(store.list_sessions()),
    }
    if args.json:
        _print_json(info)
    else:
        for key, value in info.items():
            print(f"{key.replace('_', ' ')}: {value}")
    return 0


def _farm_audit(args: argparse.Namespace, config: Config) -> int:
    entries = _store(config).list_audit(args.limit)
    if args.json:
        _print_json(entries)
        return 0
    from datetime import UTC, datetime

    _print_table(
        ["WHEN (UTC)", "WHO", "WHAT", "SUBJECT", "DETAIL"],
        [
            [
                datetime.fromtimestamp(entry.at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                entry.actor,
                entry.action,
                entry.subject,
                entry.detail,
            ]
            for entry in reversed(entries)
        ],
        "no audit entries",
    )
    return 0


# -- serve and servers --------------------------------------------------------------------------------


def _serve(args: argparse.Namespace, config: Config) -> int:
    from pvsd.daemon import serve

    log = get_logger("server").bind(server=config.server.name)
    actor = f"server:{config.server.name}"
    run(serve(config, actor, log))
    return 0


def _server_list(args: argparse.Namespace, config: Config) -> int:
    servers = _store(config).list_servers()
    dead_after = config.farm.dead_after
    if args.json:
        _print_json(
            [
                {
                    **dataclasses.asdict(server),
                    "recorded_state": server.state,
                    "state": server.health(dead_after),
                }
                for server in servers
            ]
        )
        return 0
    _print_table(
        ["NAME", "ADDRESS", "STATE", "HEARTBEAT", "POWER", "SITE"],
        [
            [s.name, s.address, s.health(dead_after), _age(s.heartbeat_age), f"{s.power:g}", s.site or "-"]
            for s in servers
        ],
        "no servers have joined this farm yet: start one with `pvsd serve`",
    )
    return 0


def _server_remove(args: argparse.Namespace, config: Config) -> int:
    _store(config).remove_server(args.name, config.farm.dead_after)
    print(f"server {args.name!r} removed")
    return 0


# -- sites --------------------------------------------------------------------------------------------


def _site_add(args: argparse.Namespace, config: Config) -> int:
    site = _store(config).add_site(args.name, args.description)
    print(f"site {site.name!r} added")
    return 0


def _site_list(args: argparse.Namespace, config: Config) -> int:
    sites = _store(config).list_sites()
    if args.json:
        _print_json(sites)
    else:
        _print_table(["NAME", "DESCRIPTION"], [[s.name, s.description] for s in sites], "no sites")
    return 0


def _site_remove(args: argparse.Namespace, config: Config) -> int:
    _store(config).remove_site(args.name)
    print(f"site {args.name!r} removed")
    return 0


# -- devices ------------------------------------------------------------------------------------------


def _device_add(args: argparse.Namespace, config: Config) -> int:
    device = _store(config).add_device(
        args.mac, args.name, vdisk=args.vdisk, site=args.site, type=args.type, enabled=not args.disabled
    )
    print(f"device {device.mac} ({device.name}) added" + (f", vDisk {device.vdisk}" if device.vdisk else ""))
    return 0


def _device_list(args: argparse.Namespace, config: Config) -> int:
    devices = _store(config).list_devices()
    if args.json:
        _print_json(devices)
        return 0
    _print_table(
        ["MAC", "NAME", "VDISK", "TYPE", "ENABLED", "SITE"],
        [
            [d.mac, d.name, d.vdisk or "-", d.type, "yes" if d.enabled else "no", d.site or "-"]
            for d in devices
        ],
        "no devices: add one with `pvsd device add MAC --name NAME`",
    )
    return 0


def _device_show(args: argparse.Namespace, config: Config) -> int:
    device = _store(config).get_device(args.mac)
    if args.json:
        _print_json(device)
    else:
        for key, value in dataclasses.asdict(device).items():
            print(f"{key}: {value if value is not None else '-'}")
    return 0


def _device_set(args: argparse.Namespace, config: Config) -> int:
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
    store = _store(config)
    device = store.update_device(args.mac, **{key: changes.get(key, UNSET) for key in changes})
    print(
        f"device {device.mac} ({device.name}) updated: " + ", ".join(f"{k}={v}" for k, v in changes.items())
    )
    return 0


def _device_remove(args: argparse.Namespace, config: Config) -> int:
    device = _store(config).remove_device(args.mac)
    print(f"device {device.mac} ({device.name}) removed")
    return 0


# -- vDisks -------------------------------------------------------------------------------------------


def _vdisk_create(args: argparse.Namespace, config: Config) -> int:
    vdisk = _store(config).create_vdisk(
        args.name, args.size, sector_size=args.sector_size, mode=args.mode, cache=args.cache
    )
    print(f"vDisk {vdisk.name!r} created: {format_size(vdisk.size)}, {_mode_text(vdisk)}, version 0")
    return 0


def _mode_text(vdisk: VDisk) -> str:
    if vdisk.mode is AccessMode.PRIVATE:
        return "private mode"
    return f"standard mode, write cache on the {vdisk.cache}"


def _vdisk_import(args: argparse.Namespace, config: Config) -> int:
    """Copy a raw image into this server's store as the vDisk's next version, verified."""
    store = _store(config)
    source = Path(args.file)
    try:
        size = source.stat().st_size
    except OSError as error:
        raise BadInput(f"cannot read {source}: {error.strerror}") from None
    existing = next((v for v in store.list_vdisks() if v.name == args.name), None)
    if existing is None:
        existing = store.create_vdisk(
            args.name, size, sector_size=args.sector_size, mode=args.mode, cache=args.cache
        )
    elif existing.size != size:
        raise BadInput(
            f"{source} is {size} bytes but vDisk {args.name!r} is {existing.size}: "
            "a new version must keep the disk's size"
        )
    number = max(v.number for v in existing.versions) + 1
    destination = image_path(Path(config.server.store), args.name, number)
    progress = _progress_bar(f"importing {source.name}") if sys.stderr.isatty() and not args.quiet else None
    result = import_image(source, destination, progress, sector_size=existing.sector_size)
    version = store.add_version(args.name, VersionState.PRODUCTION, sha256=result.sha256)
    servers = {s.name for s in store.list_servers()}
    if config.server.name in servers:
        store.report_replica(
            config.server.name, args.name, version.number, result.sha256, ReplicaState.VERIFIED
        )
        held = f"replica on {config.server.name} verified"
    else:
        held = "servers using this store report their replica at their next scan"
    print(
        f"vDisk {args.name!r} version {version.number} imported: {format_size(result.size)}, "
        f"sha256 {result.sha256}, {destination} ({held})"
    )
    return 0


def _progress_bar(label: str) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // total if total else width
        end = "\n" if done >= total else ""
        print(
            f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done * 100 // max(total, 1)}%",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    return show


def _vdisk_list(args: argparse.Namespace, config: Config) -> int:
    vdisks = _store(config).list_vdisks()
    if args.json:
        _print_json(vdisks)
        return 0
    _print_table(
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


def _vdisk_replicas(args: argparse.Namespace, config: Config) -> int:
    replicas = _store(config).list_replicas(args.name)
    if args.json:
        _print_json(replicas)
        return 0
    _print_table(
        ["VDISK", "VERSION", "SERVER", "STATE", "SHA256"],
        [[r.vdisk, r.version, r.server, r.state, (r.sha256 or "-")[:16]] for r in replicas],
        "no replicas: servers report the images in their [server] store",
    )
    return 0


def _vdisk_remove(args: argparse.Namespace, config: Config) -> int:
    _store(config).remove_vdisk(args.name)
    print(f"vDisk {args.name!r} removed")
    return 0


# -- sessions -----------------------------------------------------------------------------------------


def _session_list(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    sessions = store.list_sessions()
    if args.json:
        _print_json(sessions)
        return 0
    now = store.now()
    _print_table(
        ["ID", "DEVICE", "MAC", "VDISK", "SERVER", "IO PORT", "SINCE", "LAST SEEN"],
        [
            [s.id, s.device, s.mac, s.vdisk or "-", s.server, s.io_port, _age(now - s.since), _age(s.idle)]
            for s in sessions
        ],
        "no sessions",
    )
    return 0


# -- bootstrap and config ----------------------------------------------------------------------------


def _bootstrap_show(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    name = args.server or config.server.name
    this = store.get_server(name)
    health = this.health(config.farm.dead_after)
    if health is not ServerHealth.ALIVE:
        print(
            f"pvsd: warning: server {name!r} is {health}: targets get no bootstrap from it now",
            file=sys.stderr,
        )
    farm, servers, dead_after = store.get_farm().name, store.list_servers(), config.farm.dead_after
    if args.format == "json":
        sys.stdout.write(
            render_bootstrap(bootstrap_document(farm, this, servers, dead_after, config.bootstrap)).decode()
        )
        return 0
    sys.stdout.write(ipxe_bootstrap(farm, this, servers, dead_after, config.bootstrap))
    if args.mac:
        device = store.find_device(args.mac)
        mac = parse_mac(args.mac)
        print(f"\n# ---- then {device_script_name(mac)}, from the first server that answers:")
        template = Path(config.boot.script).read_text() if config.boot.script else None
        sys.stdout.write(device_script(device, template) if device else unknown_device_script())
    return 0


def _config_show(args: argparse.Namespace, config: Config) -> int:
    sys.stdout.write(render_toml(config, with_help=False))
    return 0


def _config_defaults(args: argparse.Namespace, config: Config) -> int:
    sys.stdout.write(render_toml(Config(), with_help=True))
    return 0


# -- the parser ---------------------------------------------------------------------------------------


def _mac(text: str) -> str:
    try:
        return parse_mac(text)
    except BadInput as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("bad MAC address ")) from None


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except BadInput as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    # Global options are accepted before and after the subcommand: `pvsd --config F server list`
    # and `pvsd server list --config F` mean the same. SUPPRESS keeps a later default from
    # overwriting an earlier value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS, help="config file (else $PVSD_CONFIG)"
    )
    common.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=argparse.SUPPRESS,
        help="log as console text or JSON lines",
    )
    common.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=argparse.SUPPRESS,
        help="[log] level",
    )

    parser = argparse.ArgumentParser(
        prog="pvsd",
        parents=[common],
        description="pvsd: highly available network boot (proxy DHCP, TFTP, vDisks)",
    )
    parser.add_argument("--version", action="version", version=f"pvsd {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(group: Any, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    def group(name: str, help: str) -> Any:
        sub = commands.add_parser(name, help=help, description=help)
        return sub.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def with_json(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return sub

    serve = command(commands, "serve", _serve, "run this server in the foreground until SIGTERM or SIGINT")
    serve.add_argument("--name", dest="server_name", help="[server] name")
    serve.add_argument("--address", help="[server] address: the advertised IPv4 address")
    serve.add_argument("--bind", help="[server] bind: the listen address (default: the advertised address)")

    farm = group("farm", "create and inspect the farm")
    init = command(farm, "init", _farm_init, "create the farm database, or upgrade it in place")
    init.add_argument("--database", metavar="URL", help="[farm] database: sqlite:///PATH or postgresql://...")
    init.add_argument("--name", default="farm", help="the farm's name (default: farm)")
    with_json(command(farm, "show", _farm_show, "summarise the farm"))
    audit = with_json(command(farm, "audit", _farm_audit, "show the newest changes: who, what, when"))
    audit.add_argument("--limit", type=int, default=50, help="how many entries (default 50)")

    server = group("server", "the farm's servers")
    with_json(command(server, "list", _server_list, "each server's address, state and heartbeat age"))
    command(server, "remove", _server_remove, "forget a stopped or dead server").add_argument("name")

    site = group("site", "sites: groups of servers and devices")
    site_add = command(site, "add", _site_add, "add a site")
    site_add.add_argument("name")
    site_add.add_argument("--description", default="")
    with_json(command(site, "list", _site_list, "list sites"))
    command(site, "remove", _site_remove, "remove a site with no devices").add_argument("name")

    device = group("device", "target devices, known by MAC")
    device_add = command(device, "add", _device_add, "add a device")
    device_add.add_argument("mac", type=_mac, help="aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff or aabbccddeeff")
    device_add.add_argument("--name", required=True)
    device_add.add_argument("--vdisk", help="assign this vDisk")
    device_add.add_argument("--site")
    device_add.add_argument(
        "--type", choices=[t.value for t in DeviceType], default=DeviceType.PRODUCTION.value
    )
    device_add.add_argument("--disabled", action="store_true", help="add it disabled: it may not log in")
    with_json(command(device, "list", _device_list, "list devices"))
    with_json(command(device, "show", _device_show, "show one device")).add_argument("mac", type=_mac)
    device_set = command(device, "set", _device_set, "change a device")
    device_set.add_argument("mac", type=_mac)
    device_set.add_argument("--name", dest="new_name")
    vdisk_choice = device_set.add_mutually_exclusive_group()
    vdisk_choice.add_argument("--vdisk", help="assign this vDisk")
    vdisk_choice.add_argument("--no-vdisk", action="store_true", help="unassign the vDisk")
    site_choice = device_set.add_mutually_exclusive_group()
    site_choice.add_argument("--site")
    site_choice.add_argument("--no-site", action="store_true")
    device_set.add_argument("--type", choices=[t.value for t in DeviceType])
    enabled = device_set.add_mutually_exclusive_group()
    enabled.add_argument("--enable", dest="enabled", action="store_const", const=True)
    enabled.add_argument("--disable", dest="enabled", action="store_const", const=False)
    command(device, "remove", _device_remove, "remove a device").add_argument("mac", type=_mac)

    vdisk = group("vdisk", "virtual disks and their versions")
    vdisk_create = command(vdisk, "create", _vdisk_create, "record a new, empty vDisk (version 0)")
    vdisk_create.add_argument("name")
    vdisk_create.add_argument(
        "--size", type=_size, required=True, metavar="BYTES", help="e.g. 8589934592 or 8G"
    )
    vdisk_create.add_argument("--sector-size", type=int, choices=(512, 4096), default=512)
    vdisk_create.add_argument(
        "--mode", choices=[m.value for m in AccessMode], default=AccessMode.STANDARD.value
    )

    def cache_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--cache",
            choices=[c.value for c in WriteCache],
            default=WriteCache.DEVICE.value,
            help="standard mode: where writes go (device: the target's RAM and disk; server: an overlay)",
        )

    cache_option(vdisk_create)
    vdisk_import = command(
        vdisk, "import", _vdisk_import, "copy a raw image into this server's store as the next version"
    )
    vdisk_import.add_argument("name")
    vdisk_import.add_argument("file", help="a raw disk image")
    vdisk_import.add_argument("--sector-size", type=int, choices=(512, 4096), default=512)
    vdisk_import.add_argument(
        "--mode", choices=[m.value for m in AccessMode], default=AccessMode.STANDARD.value
    )
    cache_option(vdisk_import)
    vdisk_import.add_argument("--quiet", action="store_true", help="no progress bar")
    with_json(command(vdisk, "list", _vdisk_list, "list vDisks"))
    replicas = with_json(command(vdisk, "replicas", _vdisk_replicas, "which server holds which version"))
    replicas.add_argument("name", nargs="?", help="only this vDisk")
    command(vdisk, "remove", _vdisk_remove, "remove a vDisk no device uses").add_argument("name")

    bootstrap = group("bootstrap", "what targets download to find the farm's servers")
    show = command(
        bootstrap, "show", _bootstrap_show, f"print the {BOOTSTRAP_NAME} a target gets from a server"
    )
    show.add_argument("--server", help="the serving server (default: [server] name)")
    show.add_argument(
        "--format",
        choices=("json", "ipxe"),
        default="json",
        help="json: pvs.bootstrap for the target agent; ipxe: pvs.ipxe for iPXE",
    )
    show.add_argument("--mac", type=_mac, help="with --format ipxe: also the script this device gets next")

    config_group = group("config", "the configuration")
    command(config_group, "show", _config_show, "print the effective config (file, environment, defaults)")
    command(config_group, "defaults", _config_defaults, "print every key with its default and help")

    register_lab(commands, common)
    register_target(commands, common)

    session = group("session", "targets' streaming sessions")
    with_json(command(session, "list", _session_list, "which device streams from which server"))
    return parser
