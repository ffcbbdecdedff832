"""`pvsd site ...`: sites, groups of servers and devices."""

from __future__ import annotations

import argparse

from pvsd.cli.common import Commands, open_farm, print_json, print_table, with_json
from pvsd.config import Config

__all__ = ["register"]


def register(commands: Commands) -> None:
    site = commands.noun("site", "sites: groups of servers and devices")
    add = site.command("add", _add, "add a site")
    add.add_argument("name")
    add.add_argument("--description", default="")
    with_json(site.command("list", _list, "list sites"))
    site.command("remove", _remove, "remove a site with no devices").add_argument("name")


def _add(args: argparse.Namespace, config: Config) -> int:
    site = open_farm(config).add_site(args.name, args.description)
    print(f"site {site.name!r} added")
    return 0


def _list(args: argparse.Namespace, config: Config) -> int:
    sites = open_farm(config).list_sites()
    if args.json:
        print_json(sites)
    else:
        print_table(["NAME", "DESCRIPTION"], [[s.name, s.description] for s in sites], "no sites")
    return 0


def _remove(args: argparse.Namespace, config: Config) -> int:
    open_farm(config).remove_site(args.name)
    print(f"site {args.name!r} removed")
    return 0
