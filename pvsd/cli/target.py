"""`pvsd target ...`: be a target from the command line: copy a whole vDisk, test writes, or run
the agent that exports the streamed vDisk over NBD for QEMU."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from pvsd.boot.bootstrap import BOOTSTRAP_NAME
from pvsd.cli.common import Commands, Handler, size_argument
from pvsd.config import Config
from pvsd.errors import BadInput, Failure
from pvsd.log import get_logger
from pvsd.net.mac import parse_mac
from pvsd.processes import run
from pvsd.target.agent import run_agent
from pvsd.target.client import StreamClient
from pvsd.target.copy import copy_disk, write_and_check
from pvsd.target.discovery import discover_proxy
from pvsd.target.servers import Address, fetch_bootstrap, parse_servers
from pvsd.units import format_size

__all__ = ["register"]


def register(commands: Commands) -> None:
    target = commands.noun("target", "act as a target: log in by MAC and stream a vDisk")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--mac", required=True, help="the target's MAC address")
    servers = where.add_mutually_exclusive_group(required=False)
    servers.add_argument("--servers", metavar="HOST[:PORT],...", help="login servers, in order (port 6910)")
    servers.add_argument(
        "--bootstrap", metavar="URL", help="tftp://HOST/pvs.bootstrap: the farm's live servers"
    )
    where.add_argument("--json", action="store_true", help="print the result as JSON")

    def command(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        return target.command(name, handler, help, [where])

    copy = command("copy", _copy, "read the whole disk into a file and print its sha256 and throughput")
    copy.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE",
        help="where to write the disk (- for standard output; the summary then goes to standard error)",
    )
    copy.add_argument(
        "--rate", type=size_argument, metavar="BYTES", help="read at most this many bytes a second (e.g. 20M)"
    )
    boot = command("boot", _boot, "run the target agent: log in and export the vDisk over NBD for QEMU")
    boot.add_argument(
        "--dhcp",
        metavar="IFACE",
        help="find the farm as a PXE ROM does: DHCPDISCOVER on IFACE, the proxy offer, pvs.bootstrap by TFTP",
    )
    export = boot.add_mutually_exclusive_group()
    export.add_argument(
        "--nbd", metavar="ADDR:PORT", default="127.0.0.1:10809", help="NBD listen address (127.0.0.1:10809)"
    )
    export.add_argument("--nbd-unix", type=Path, metavar="PATH", help="listen on a unix socket instead")
    boot.add_argument("--export", default="vdisk", help="the NBD export name (vdisk)")
    boot.add_argument("--status", type=Path, metavar="FILE", help="status file (default [target] cache_dir)")
    status = target.command("status", _status, "show a running agent's status")
    status.add_argument("--mac", required=True)
    status.add_argument(
        "--status", type=Path, metavar="FILE", help="status file (default [target] cache_dir)"
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    test = command("write-test", _write_test, "write a pattern, flush, read it back and compare")
    test.add_argument("--offset", type=size_argument, default=0, metavar="BYTES", help="where to write (0)")
    test.add_argument("--size", type=size_argument, default=1 << 20, metavar="BYTES", help="how much (1M)")
    test.add_argument("--seed", type=int, default=1, help="pattern seed (1)")


def _servers(args: argparse.Namespace) -> list[Address]:
    if sum(bool(getattr(args, name, None)) for name in ("servers", "bootstrap", "dhcp")) != 1:
        choices = "--servers or --bootstrap" + (" or --dhcp" if hasattr(args, "dhcp") else "")
        raise BadInput(f"give one of {choices}")
    if args.servers:
        return parse_servers(args.servers)
    if args.bootstrap:
        return fetch_bootstrap(args.bootstrap)
    offer = discover_proxy(parse_mac(args.mac), args.dhcp)
    get_logger("target").info("proxy offer", server=str(offer.server), boot_file=offer.boot_file)
    return fetch_bootstrap(f"tftp://{offer.server}/{BOOTSTRAP_NAME}")


def _status_path(args: argparse.Namespace, config: Config) -> Path:
    if args.status is not None:
        path: Path = args.status
        return path
    return Path(config.target.cache_dir) / f"{parse_mac(args.mac).replace(':', '-')}.status.json"


def _boot(args: argparse.Namespace, config: Config) -> int:
    host, _, port = args.nbd.rpartition(":")
    if not host or not port.isdigit():
        raise BadInput(f"--nbd {args.nbd!r}: use ADDR:PORT, e.g. 127.0.0.1:10809")
    client = _client(args, config)
    status_path = _status_path(args, config)
    status_path.parent.mkdir(parents=True, exist_ok=True)
    status = run(
        run_agent(
            client,
            config.target,
            nbd_address=(host, int(port)),
            nbd_unix=args.nbd_unix,
            export=args.export,
            status_path=status_path,
            log=get_logger("agent"),
        )
    )
    print(
        f"agent stopped: read {format_size(status.bytes_read)}, wrote {format_size(status.bytes_written)}, "
        f"{len(status.failovers)} failovers"
    )
    return 0


def _status(args: argparse.Namespace, config: Config) -> int:
    path = _status_path(args, config)
    try:
        status = json.loads(path.read_text())
    except FileNotFoundError:
        raise Failure(f"no agent status at {path}: is `pvsd target boot --mac {args.mac}` running?") from None
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    age = time.time() - status["updated"]
    cache = status.get("cache") or {}
    print(f"target {status['mac']} (pid {status['pid']}), {status['mode']}, status {age:.0f} s old")
    print(f"  server    {status['server']} (session {status['session']}), NBD {status['nbd']}")
    print(
        f"  traffic   read {format_size(status['bytes_read'])} ({status['read_mb_per_s']} MB/s), "
        f"wrote {format_size(status['bytes_written'])}, {status['retransmits']} retransmits"
    )
    if cache:
        used, limit = cache.get("used_bytes", 0), cache.get("max_bytes_limit", 0)
        refused = status.get("writes_refused", 0)
        full = f", {refused} writes refused (cache full)" if refused else ""
        print(f"  cache     {format_size(used)} used of {format_size(limit)}{full}")
    for failover in status["failovers"]:
        print(f"  failover  {failover['from']} -> {failover['to']}, stalled {failover['stall_s']:.2f} s")
    return 0


def _client(args: argparse.Namespace, config: Config) -> StreamClient:
    try:
        mac = parse_mac(args.mac)
    except BadInput as error:
        raise BadInput(f"--mac: {error}") from None
    return StreamClient(mac, _servers(args), config.target, get_logger("target"))


def _copy(args: argparse.Namespace, config: Config) -> int:
    to_stdout = str(args.out) == "-"
    client = _client(args, config)
    if to_stdout:
        sys.stdout.flush()
        fd = os.dup(sys.stdout.fileno())
    else:
        try:  # before the login: a bad path must not cost a session
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as error:
            raise BadInput(f"--out: cannot write {args.out}: {error.strerror}") from None
    try:
        result = run(copy_disk(client, fd, args.rate))
    finally:
        os.close(fd)
    say = sys.stderr if to_stdout else sys.stdout
    if args.json:
        print(json.dumps(result), file=say)
        return 0
    print(
        f"copied {format_size(result['bytes'])} in {result['seconds']:.2f} s ({result['mb_per_s']} MB/s) "
        f"from {result['server']}, {result['retransmits']} retransmits",
        file=say,
    )
    for failover in result["failovers"]:
        print(
            f"failed over from {failover['from']} to {failover['to']}: stalled {failover['stall_s']:.2f} s",
            file=say,
        )
    print(f"sha256 {result['sha256']}")
    return 0


def _write_test(args: argparse.Namespace, config: Config) -> int:
    result = run(write_and_check(_client(args, config), args.offset, args.size, args.seed))
    if args.json:
        print(json.dumps(result))
    else:
        verdict = "read back equal" if result["match"] else "READ BACK DIFFERENT"
        print(
            f"wrote {format_size(result['bytes'])} at {result['offset']}, flushed, {verdict} "
            f"({result['seconds']:.2f} s, {result['server']})"
        )
    if not result["match"]:
        raise Failure("the data read back differs from what was written")
    return 0
