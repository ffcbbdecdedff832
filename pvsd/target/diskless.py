"""The agent inside a diskless guest: what BNIStack is to a PVS target, for Linux.

The guest's /init (pvsd/boot/guest_init.py) brings the NIC up and starts this module as
`@pvsd-agent`. It logs in with the MAC and servers on the kernel command line, attaches the
streamed vDisk to the kernel's NBD driver (`/dev/nbd0`, through a socketpair: kernel_nbd), says
so in READY_FILE, and then serves the driver's requests for the rest of the guest's life. When
the serving server dies, the stream client logs in to the next one with its ticket and resends
what was in flight: the OS sees latency, never an I/O error.

It outlives `switch_root`: it was started from the initramfs, which switch_root empties, so
every module it will ever need is imported before it says it is ready (`--probe` lists them for
the initramfs builder). /init starts it as `@pvsd-agent` (`exec -a`): systemd's shutdown spares
processes whose argv[0] starts with `@`, the daemons a root file system needs. It ignores
SIGTERM, SIGINT and SIGHUP: the root file system is served by this process, so it must be the
last one standing.

Where writes go follows the login reply, as for the host agent: RAM for a standard vDisk with
the cache on the device (gone at reboot, as in PVS), the server for the server cache and for
private vDisks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import structlog

from pvsd.config import TargetConfig
from pvsd.errors import Misuse, PvsdError
from pvsd.log import configure_logging, get_logger
from pvsd.target.agent import StreamedDisk, device_cache, mode_text
from pvsd.target.client import StreamClient
from pvsd.target.cmdline import READY_FILE, GuestSettings, parse_cmdline
from pvsd.target.kernel_nbd import KernelNbd
from pvsd.target.nbd import MemoryBackend, NbdServer

__all__ = ["main", "run"]

NBD_DEVICE = Path("/dev/nbd0")
RETRY_S = (1.0, 2.0, 5.0, 10.0)  # between login rounds when no server answers; the last repeats
STATUS_EVERY_S = 300.0
# Sequential reads of the root file system in requests of up to the driver's 1280 KiB.
READ_AHEAD_KIB = 2048
FAILOVER_ROUNDS = 1 << 30  # about forever: each round asks every server, 5 s each


async def _login(
    settings: GuestSettings, config: TargetConfig, log: structlog.stdlib.BoundLogger
) -> StreamClient:
    """Log in, round after round, until a server takes the device: a diskless guest has nothing
    better to do, and the farm may be booting too."""
    attempt = 0
    while True:
        client = StreamClient(settings.mac, list(settings.servers), config, log)
        try:
            await client.connect()
            # From now on a failover keeps trying for as long as it takes: the guest's root
            # depends on it, and any wait is better than an I/O error.
            client.login_rounds = FAILOVER_ROUNDS
            return client
        except PvsdError as error:
            await client.close()
            pause = RETRY_S[min(attempt, len(RETRY_S) - 1)]
            log.error("login failed; trying again", error=str(error), retry_in_s=pause, attempt=attempt + 1)
            attempt += 1
            await asyncio.sleep(pause)


async def run(settings: GuestSettings, log: structlog.stdlib.BoundLogger, ready: Path, device: Path) -> None:
    config = TargetConfig(cache_ram_mb=settings.cache_mb, cache_max_mb=0)
    client = await _login(settings, config, log)
    reply = client.reply
    if reply is None:
        raise Misuse("connect() returned without a login reply")
    disk = StreamedDisk(client, device_cache(reply, config, None), log)
    server = NbdServer(disk, settings.vdisk or "vdisk")
    kernel = KernelNbd(device, reply.disk_size, reply.sector_size, server.export.flags)
    serving = asyncio.create_task(server.serve_transmission(kernel.attach()), name="nbd")
    refused = kernel.set_read_ahead(READ_AHEAD_KIB)
    if refused is not None:
        log.warning("read-ahead left at the kernel's default", reason=refused)
    status = {
        "mac": settings.mac,
        "server": client.server_name,
        "session": client.session,
        "device": str(device),
        "size": reply.disk_size,
        "sector_size": reply.sector_size,
        "mode": mode_text(reply),
        "pid": os.getpid(),
    }
    await asyncio.to_thread(_write_ready, ready, status)
    log.info("vDisk attached", **status)
    while not serving.done():
        await asyncio.wait({serving}, timeout=STATUS_EVERY_S)
        log.info(
            "status",
            server=client.server_name,
            read_bytes=disk.bytes_read,
            written_bytes=disk.bytes_written,
            failovers=len(client.stats.failovers),
        )
    log.error("the kernel closed the NBD device", error=str(kernel.ended or "disconnected"))


def _write_ready(ready: Path, status: dict[str, object]) -> None:
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.write_text(json.dumps(status) + "\n")


async def _probe() -> None:
    """Exercise what the agent uses after switch_root (event loop, threads, unix sockets, NBD
    serving, logging, tracebacks), so that every module it needs is imported."""
    import socket

    ours, theirs = socket.socketpair()
    server = NbdServer(MemoryBackend(1 << 20), "probe")
    serving = asyncio.create_task(server.serve_transmission(ours))
    await asyncio.to_thread(time.monotonic)
    theirs.close()
    await serving
    try:
        raise RuntimeError("probe")
    except RuntimeError:
        traceback.format_exc()
    get_logger("agent").info("probe", value=json.dumps({"ok": True}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pvsd-agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cmdline", default="/proc/cmdline", help="where the kernel command line is")
    parser.add_argument(
        "--ready", type=Path, default=Path(READY_FILE), help="written once the vDisk is attached"
    )
    parser.add_argument("--device", type=Path, default=NBD_DEVICE)
    parser.add_argument("--probe", action="store_true", help="import what the agent needs, list it, exit")
    args = parser.parse_args(argv)
    # A serial console is a tty that shows escape codes as they are: plain lines.
    configure_logging("info", "console", sys.stderr, colors=False)
    if args.probe:
        asyncio.run(_probe())
        loaded = sorted({str(f) for m in list(sys.modules.values()) if (f := getattr(m, "__file__", None))})
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        print(json.dumps({"files": loaded, "path": sys.path, "stdlib": sys.base_prefix, "version": version}))
        return 0
    log = get_logger("agent")
    try:
        settings = parse_cmdline(Path(args.cmdline).read_text())
    except (OSError, PvsdError) as error:
        log.error("cannot start the diskless agent", error=str(error))
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # The root file system is served by this process: it goes down with the guest, not before.
        signal.signal(signum, signal.SIG_IGN)
    log.info("diskless agent starting", mac=settings.mac, servers=len(settings.servers), vdisk=settings.vdisk)
    asyncio.run(run(settings, log.bind(mac=settings.mac), args.ready, args.device))
    return 1  # run() returns only when the kernel dropped the device


if __name__ == "__main__":
    sys.exit(main())
