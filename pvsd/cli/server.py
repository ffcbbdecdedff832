"""`pvsd serve` and `pvsd server ...`: run this server, list the farm's servers, forget one."""

from __future__ import annotations

import argparse
import dataclasses

from pvsd.cli.common import Commands, age, open_farm, print_json, print_table, with_json
from pvsd.config import Config
from pvsd.log import get_logger
from pvsd.processes import run

__all__ = ["register"]


def register(commands: Commands) -> None:
    serve = commands.command("serve", _serve, "run this server in the foreground until SIGTERM or SIGINT")
    serve.add_argument("--name", dest="server_name", help="[server] name")
    serve.add_argument("--address", help="[server] address: the advertised IPv4 address")
    serve.add_argument("--bind", help="[server] bind: the listen address (default: the advertised address)")
    serve.add_argument(
        "--take-over",
        action="store_true",
        help="replace a live pvsd serving under this server's name (it stops); without it, refuse to start",
    )
    server = commands.noun("server", "the farm's servers")
    with_json(server.command("list", _list, "each server's address, state and heartbeat age"))
    server.command("remove", _remove, "forget a stopped or dead server").add_argument("name")


def _serve(args: argparse.Namespace, config: Config) -> int:
    from pvsd.daemon import serve  # only `pvsd serve` needs the services

    log = get_logger("server").bind(server=config.server.name)
    run(serve(config, f"server:{config.server.name}", log, take_over=args.take_over))
    return 0


def _list(args: argparse.Namespace, config: Config) -> int:
    servers = open_farm(config).list_servers()
    dead_after = config.farm.dead_after
    if args.json:
        print_json(
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
    print_table(
        ["NAME", "ADDRESS", "STATE", "HEARTBEAT", "POWER", "SITE"],
        [
            [s.name, s.address, s.health(dead_after), age(s.heartbeat_age), f"{s.power:g}", s.site or "-"]
            for s in servers
        ],
        "no servers have joined this farm yet: start one with `pvsd serve`",
    )
    return 0


def _remove(args: argparse.Namespace, config: Config) -> int:
    open_farm(config).remove_server(args.name, config.farm.dead_after)
    print(f"server {args.name!r} removed")
    return 0
