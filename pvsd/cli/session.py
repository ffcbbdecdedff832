"""`pvsd session ...`: which device streams from which server."""

from __future__ import annotations

import argparse

from pvsd.cli.common import Commands, age, open_farm, print_json, print_table, with_json
from pvsd.config import Config

__all__ = ["register"]


def register(commands: Commands) -> None:
    session = commands.noun("session", "targets' streaming sessions")
    with_json(session.command("list", _list, "which device streams from which server"))


def _list(args: argparse.Namespace, config: Config) -> int:
    store = open_farm(config)
    sessions = store.list_sessions()
    if args.json:
        print_json(sessions)
        return 0
    now = store.now()
    print_table(
        ["ID", "DEVICE", "MAC", "VDISK", "SERVER", "IO PORT", "SINCE", "LAST SEEN"],
        [
            [s.id, s.device, s.mac, s.vdisk or "-", s.server, s.io_port, age(now - s.since), age(s.idle)]
            for s in sessions
        ],
        "no sessions",
    )
    return 0
