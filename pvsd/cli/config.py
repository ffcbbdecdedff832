"""`pvsd config ...`: the effective configuration, and every key with its default."""

from __future__ import annotations

import argparse
import sys

from pvsd.cli.common import Commands, open_farm
from pvsd.config import Config, render_toml
from pvsd.farm.errors import StoreError
from pvsd.preflight import Problem, config_problems, host_problems

__all__ = ["register"]


def register(commands: Commands) -> None:
    config = commands.noun("config", "the configuration")
    config.command("show", _show, "print the effective config (file, environment, defaults)")
    config.command("defaults", _defaults, "print every key with its default and help")
    config.command(
        "check",
        _check,
        "check the config without serving: every offered boot file servable, folders there, database up",
    )


def _show(args: argparse.Namespace, config: Config) -> int:
    sys.stdout.write(render_toml(config, with_help=False))
    return 0


def _defaults(args: argparse.Namespace, config: Config) -> int:
    sys.stdout.write(render_toml(Config(), with_help=True))
    return 0


def _check(args: argparse.Namespace, config: Config) -> int:
    """A bad config never gets here: loading it fails first, naming the key (exit 2)."""
    problems = config_problems(config) + host_problems(config)
    try:
        open_farm(config).close()
    except StoreError as error:
        problems.append(Problem("farm.database", str(error)))
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        print(f"config check: {len(problems)} problem(s)")
        return 1
    print("config check: no problems")
    return 0
