"""`pvsd serve` and `pvsd server ...`: run this server, list the farm's servers, forget one."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pvsd.api.status import STATUS_PATH
from pvsd.cli.common import Commands, age, open_farm, print_json, print_table, with_json
from pvsd.config import Config
from pvsd.farm.errors import StoreUnavailable
from pvsd.farm.membership import OWNER_WAIT_HEARTBEATS
from pvsd.farm.records import Server, ServerState
from pvsd.farm.snapshot import SnapshotError, read_snapshot
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
    serve.add_argument(
        "--trust-database",
        action="store_true",
        help="use the farm database as found, even if it looks older than this server's snapshot "
        "(restored from a backup) or holds another farm",
    )
    server = commands.noun("server", "the farm's servers")
    with_json(server.command("list", _list, "each server's address, state and heartbeat age"))
    server.command("remove", _remove, "forget a stopped or dead server").add_argument("name")


def _serve(args: argparse.Namespace, config: Config) -> int:
    from pvsd.daemon import serve  # only `pvsd serve` needs the services

    log = get_logger("server").bind(server=config.server.name)
    run(
        serve(
            config,
            f"server:{config.server.name}",
            log,
            take_over=args.take_over,
            trust_database=args.trust_database,
        )
    )
    return 0


STATUS_TIMEOUT_S = 1.0  # a server that does not answer its status at once is shown as not answering

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


def database_states(servers: list[Server]) -> dict[str, dict[str, Any] | None]:
    """How each server sees the farm database now, from its `GET /farm/status` (None: no answer)."""

    def ask(server: Server) -> dict[str, Any] | None:
        port = server.ports.get("api")
        if not port or server.state is ServerState.STOPPED:
            return None
        try:
            url = f"http://{server.address}:{port}{STATUS_PATH}"
            with urllib.request.urlopen(url, timeout=STATUS_TIMEOUT_S) as answer:
                status = json.load(answer)
        except (OSError, ValueError):
            return None
        return status if isinstance(status, dict) else None

    if not servers:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(servers))) as pool:
        return dict(zip((s.name for s in servers), pool.map(ask, servers), strict=True))


def _snapshot_servers(config: Config) -> tuple[list[Server], str] | None:
    """The servers of the newest farm snapshot on this host, and whose it is."""
    newest = None
    for folder in sorted(Path(config.farm.offline_dir).glob("*/")):
        try:
            snapshot = read_snapshot(folder)
        except SnapshotError:
            continue
        if newest is None or snapshot.taken_at > newest[0].taken_at:
            newest = (snapshot, folder.name)
    if newest is None:
        return None
    taken = datetime.fromtimestamp(newest[0].taken_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return list(newest[0].servers), f"{newest[1]}'s snapshot of {taken}"


def _list(args: argparse.Namespace, config: Config) -> int:
    dead_after = config.farm.dead_after
    try:
        servers = observed_servers(open_farm(config), config)
        source = None
    except StoreUnavailable as error:
        fallback = _snapshot_servers(config)
        if fallback is None:
            raise
        servers, source = fallback
        print(
            f"{error}\nshowing the servers of {source}; STATE is whether each answers now",
            file=sys.stderr,
        )
    states = database_states(servers)

    def health(server: Server) -> str:
        if source is None:
            return str(server.health(dead_after))
        return "answers" if states.get(server.name) else "no answer"

    if args.json:
        print_json(
            [
                {
                    **dataclasses.asdict(server),
                    "recorded_state": server.state,
                    "state": health(server),
                    "database": states.get(server.name),
                }
                for server in servers
            ]
        )
        return 0

    def database(server: Server) -> str:
        status = states.get(server.name)
        if status is None:
            return "-"
        queued = int(status.get("queued") or 0)
        return str(status.get("database")) + (f" ({queued} queued)" if queued else "")

    print_table(
        ["NAME", "ADDRESS", "STATE", "HEARTBEAT", "POWER", "SITE", "DATABASE"],
        [
            [
                s.name,
                s.address,
                health(s),
                "-" if source else age(s.heartbeat_age),
                f"{s.power:g}",
                s.site or "-",
                database(s),
            ]
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
