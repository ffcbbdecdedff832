"""`pvsd config ...`: the effective configuration, and every key with its default."""

from __future__ import annotations

import argparse
import sys

from pvsd.cli.common import Commands
from pvsd.config import Config, render_toml

__all__ = ["register"]


def register(commands: Commands) -> None:
    config = commands.noun("config", "the configuration")
    config.command("show", _show, "print the effective config (file, environment, defaults)")
    config.command("defaults", _defaults, "print every key with its default and help")


def _show(args: argparse.Namespace, config: Config) -> int:
    sys.stdout.write(render_toml(config, with_help=False))
    return 0


def _defaults(args: argparse.Namespace, config: Config) -> int:
    sys.stdout.write(render_toml(Config(), with_help=True))
    return 0
