"""`pvsd bootstrap ...`: what targets download to find the farm's servers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pvsd.boot.bootstrap import BOOTSTRAP_NAME, bootstrap_document, render_bootstrap
from pvsd.boot.ipxe import device_script, device_script_name, ipxe_bootstrap, unknown_device_script
from pvsd.cli.common import Commands, mac_argument, open_farm
from pvsd.config import Config
from pvsd.farm.records import ServerHealth

__all__ = ["register"]


def register(commands: Commands) -> None:
    bootstrap = commands.noun("bootstrap", "what targets download to find the farm's servers")
    show = bootstrap.command("show", _show, f"print the {BOOTSTRAP_NAME} a target gets from a server")
    show.add_argument("--server", help="the serving server (default: [server] name)")
    show.add_argument(
        "--format",
        choices=("json", "ipxe"),
        default="json",
        help="json: pvs.bootstrap for the target agent; ipxe: pvs.ipxe for iPXE",
    )
    show.add_argument(
        "--mac", type=mac_argument, help="with --format ipxe: also the script this device gets next"
    )


def _show(args: argparse.Namespace, config: Config) -> int:
    store = open_farm(config)
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
        print(f"\n# ---- then {device_script_name(args.mac)}, from the first server that answers:")
        template = Path(config.boot.script).read_text() if config.boot.script else None
        sys.stdout.write(device_script(device, template) if device else unknown_device_script())
    return 0
