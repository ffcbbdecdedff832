"""What every `pvsd` command module shares: how a command is declared, the farm store it opens,
and how it prints tables and JSON."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pvsd.config import Config
from pvsd.errors import BadInput
from pvsd.farm.store import FarmStore, open_store
from pvsd.net.mac import parse_mac
from pvsd.units import parse_size

__all__ = [
    "Commands",
    "Handler",
    "Noun",
    "age",
    "mac_argument",
    "open_farm",
    "print_json",
    "print_table",
    "progress_bar",
    "size_argument",
    "with_json",
]

Handler = Callable[[argparse.Namespace, Config], int]


@dataclasses.dataclass(frozen=True)
class Commands:
    """The top-level subcommands and the options every command accepts (--config, --log-*)."""

    subparsers: Any
    common: argparse.ArgumentParser

    def command(self, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        """A command without a noun, such as `pvsd serve`."""
        sub: argparse.ArgumentParser = self.subparsers.add_parser(
            name, parents=[self.common], help=help, description=help
        )
        sub.set_defaults(handler=handler)
        return sub

    def noun(self, name: str, help: str) -> Noun:
        sub = self.subparsers.add_parser(name, help=help, description=help)
        return Noun(sub.add_subparsers(title="commands", metavar="COMMAND", required=True), self.common)


@dataclasses.dataclass(frozen=True)
class Noun:
    """One noun's group: `pvsd NOUN VERB ...`."""

    subparsers: Any
    common: argparse.ArgumentParser

    def command(
        self,
        name: str,
        handler: Handler,
        help: str,
        parents: Sequence[argparse.ArgumentParser] = (),
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = self.subparsers.add_parser(
            name, parents=[self.common, *parents], help=help, description=help
        )
        sub.set_defaults(handler=handler)
        return sub

    def noun(self, name: str, help: str) -> Noun:
        """A noun inside this one: `pvsd vdisk version new ...`."""
        sub = self.subparsers.add_parser(name, help=help, description=help)
        return Noun(sub.add_subparsers(title="commands", metavar="COMMAND", required=True), self.common)


def with_json(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return sub


def mac_argument(text: str) -> str:
    """argparse type: a MAC in any usual spelling, canonical on the way out."""
    try:
        return parse_mac(text)
    except BadInput as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("bad MAC address ")) from None


def size_argument(text: str) -> int:
    """argparse type: a size such as 8589934592, 8G or 20M."""
    try:
        return parse_size(text)
    except BadInput as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def actor() -> str:
    """Who makes a change, for the audit log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"cli:{user}@{socket.gethostname()}"


def open_farm(config: Config) -> FarmStore:
    return open_store(config.farm.database, actor())


def print_json(value: Any) -> None:
    def plain(item: Any) -> Any:
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return {key: plain(inner) for key, inner in dataclasses.asdict(item).items()}
        if isinstance(item, list | tuple):
            return [plain(inner) for inner in item]
        if isinstance(item, dict):
            return {key: plain(inner) for key, inner in item.items()}
        return item

    print(json.dumps(plain(value), indent=2, sort_keys=True))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> None:
    if not rows:
        print(empty)
        return
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(header), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def age(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f}s ago"


def progress_bar(label: str) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // total if total else width
        end = "\n" if done >= total else ""
        print(
            f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done * 100 // max(total, 1)}%",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    return show
