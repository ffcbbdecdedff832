"""`pvsd serve` and `pvsd server ...`: run this server, list the farm's servers, forget one."""

from __future__ import annotations

import argparse
import dataclasses
import time

from pvsd.cli.common import Commands, age, open_farm, print_json, print_table, with_json
from pvsd.config import Config
from pvsd.farm.membership import OWNER_WAIT_HEARTBEATS
from pvsd.farm.records import Server
from pvsd.farm.store import FarmStore
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


# A stamp further in the future than this says the writer's clock is ahead (farm/heartbeats.py).
CLOCK_AHEAD_S = 1.0


def observed_servers(store: FarmStore, config: Config) -> list[Server]:
    """The farm's servers, with the ones whose heartbeat stamp is in the future (a writer's clock
    ahead of ours) judged by watching the stamp for one and a half heartbeats: a stamp that
    does not move is a dead server's."""
    servers = store.list_servers()
    ahead = {s.name for s in servers if s.heartbeat_age is not None and s.heartbeat_age < -CLOCK_AHEAD_S}
    if not ahead:
        return servers
    time.sleep(config.farm.heartbeat_interval * OWNER_WAIT_HEARTBEATS)
    before = {s.name: (s.last_heartbeat, s.instance) for s in servers}
    judged = []
    for server in store.list_servers():
        if server.name in ahead:
            moved = before.get(server.name) != (server.last_heartbeat, server.instance)
            server = dataclasses.replace(server, heartbeat_age=0.0 if moved else None)
        judged.append(server)
    return judged


def _list(args: argparse.Namespace, config: Config) -> int:
    servers = observed_servers(open_farm(config), config)
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
    store = open_farm(config)
    judged = next((s for s in observed_servers(store, config) if s.name == args.name), None)
    stuck = None
    if judged is not None and judged.heartbeat_age is None and judged.last_heartbeat is not None:
        stuck = (judged.last_heartbeat, judged.instance)
    store.remove_server(args.name, config.farm.dead_after, stuck)
    print(f"server {args.name!r} removed")
    return 0
