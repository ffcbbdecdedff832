"""The `pvsd` command: serve, and manage the farm. One module per noun, each registering its own
subcommands; this one builds the parser from them and runs the chosen handler.

Errors go to stderr as one line: exit code 2 for bad input, 1 for failures, never a
traceback (unless --log-level debug, for a bug report).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from pvsd import __version__
from pvsd.cli import bootstrap, config, device, farm, lab, media, server, session, site, target, vdisk
from pvsd.cli.common import Commands, Handler
from pvsd.config import load_config
from pvsd.errors import PvsdError
from pvsd.log import LOG_FORMATS, configure_logging

__all__ = ["build_parser", "main"]

# In the order `pvsd --help` lists them.
NOUNS = (server, farm, site, device, vdisk, session, bootstrap, media, config, target, lab)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # argparse: usage errors (2), --help and --version (0)
        return exit.code if isinstance(exit.code, int) else 2
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    debug = getattr(args, "log_level", None) == "debug"
    try:
        loaded = load_config(getattr(args, "config", None), overrides=_flag_overrides(args))
        debug = loaded.log.level == "debug"
        configure_logging(loaded.log.level, getattr(args, "log_format", "auto"))
        handler: Handler = args.handler
        return handler(args, loaded)
    except PvsdError as error:
        print(f"pvsd: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0  # `pvsd ... | head` closed our stdout: not an error
    except Exception as error:
        if debug:
            traceback.print_exc()
        print(
            f"pvsd: internal error: {type(error).__name__}: {error} "
            "(this is a bug; rerun with --log-level debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags that set config keys; each wins over the file and the environment."""
    pairs = {
        "log.level": getattr(args, "log_level", None),
        "farm.database": getattr(args, "database", None),
        "server.name": getattr(args, "server_name", None),
        "server.address": getattr(args, "address", None),
        "server.bind": getattr(args, "bind", None),
    }
    return {key: value for key, value in pairs.items() if value is not None}


def build_parser() -> argparse.ArgumentParser:
    # Global options are accepted before and after the subcommand: `pvsd --config F server list`
    # and `pvsd server list --config F` mean the same. SUPPRESS keeps a later default from
    # overwriting an earlier value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS, help="config file (else $PVSD_CONFIG)"
    )
    common.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=argparse.SUPPRESS,
        help="log as console text or JSON lines",
    )
    common.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=argparse.SUPPRESS,
        help="[log] level",
    )
    parser = argparse.ArgumentParser(
        prog="pvsd",
        parents=[common],
        description="pvsd: highly available network boot (proxy DHCP, TFTP, vDisks)",
    )
    parser.add_argument("--version", action="version", version=f"pvsd {__version__}")
    commands = Commands(parser.add_subparsers(title="commands", metavar="COMMAND"), common)
    for noun in NOUNS:
        noun.register(commands)
    return parser
