"""`pvsd lab ...`: the command-line face of the lab (filled in by the lab's own module)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the `lab` command group to the parser's subcommands."""
    lab = commands.add_parser("lab", help="a PXE lab in network namespaces on this machine")
    lab.add_subparsers(title="commands", metavar="COMMAND", required=True)
