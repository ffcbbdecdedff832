"""`pvsd farm ...`: create the farm database, summarise it, and read its audit log."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from pvsd.cli.common import Commands, open_farm, print_json, print_table, with_json
from pvsd.cli.common import actor as cli_actor
from pvsd.config import Config
from pvsd.farm.records import ServerHealth
from pvsd.farm.store import init_farm

__all__ = ["register"]


def register(commands: Commands) -> None:
    farm = commands.noun("farm", "create and inspect the farm")
    init = farm.command("init", _init, "create the farm database, or upgrade it in place")
    init.add_argument("--database", metavar="URL", help="[farm] database: sqlite:///PATH or postgresql://...")
    init.add_argument("--name", default="farm", help="the farm's name (default: farm)")
    with_json(farm.command("show", _show, "summarise the farm"))
    audit = with_json(farm.command("audit", _audit, "show the newest changes: who, what, when"))
    audit.add_argument("--limit", type=int, default=50, help="how many entries (default 50)")


def _init(args: argparse.Namespace, config: Config) -> int:
    store, farm, created = init_farm(config.farm.database, args.name, cli_actor())
    store.close()
    if created:
        print(f"farm {farm.name!r} created in {store.url} (schema version {farm.schema_version})")
    else:
        print(
            f"farm {farm.name!r} already exists in {store.url} "
            f"(schema version {farm.schema_version}); kept it"
        )
    return 0


def _show(args: argparse.Namespace, config: Config) -> int:
    store = open_farm(config)
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
        print_json(info)
    else:
        for key, value in info.items():
            print(f"{key.replace('_', ' ')}: {value}")
    return 0


def _audit(args: argparse.Namespace, config: Config) -> int:
    entries = open_farm(config).list_audit(args.limit)
    if args.json:
        print_json(entries)
        return 0
    print_table(
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
