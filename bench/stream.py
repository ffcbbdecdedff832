"""vDisk streaming benchmark: pvsd's stream protocol against qemu-nbd (NBD over TCP), on loopback.

Run it from the checkout (as root, after `make .venv/.installed` and the Debian packages
fio, libnbd-bin and qemu-utils):

    make bench-stream                          # the full run: a 256 MiB image, 16 targets
    .venv/bin/python bench/stream.py --quick   # a smoke run: 32 MiB, 4 targets, 2 s IOPS runs
    .venv/bin/python bench/stream.py --help

It generates one random raw image, serves it read-only with pvsd (on 127.0.0.11, login port
6910, I/O ports 6911-6912) and with `qemu-nbd` (on a free TCP port of 127.0.0.1), and measures:

- sequential read of the whole disk (MB/s, 10^6 bytes/s) by 1 target (best of the repeats)
  and by N targets at once (total bytes / wall time from the first launch to the last exit);
  pvsd targets are `pvsd target copy --out /dev/null --json` processes, one device (MAC) each, and
  every copy's sha256 is checked against the image's; qemu-nbd is read by `nbdcopy ... null:`
  and by fio's nbd engine (rw=read bs=1M iodepth=16), the better of the two is its figure;
- 4 KiB random reads (IOPS) by 1 and N targets, `depth` reads in flight each for a fixed time:
  pvsd by this script's own driver on StreamClient (`--_iops-worker`, one process per target;
  every 64th block is compared with the image), qemu-nbd by fio (nbd engine, rw=randread bs=4k,
  numjobs 1 and N);

for pvsd in three settings: "LAN" (target MTU 1506, `[stream] max_burst` 32768, PVS's
defaults, 2 I/O workers), "large datagrams" (MTU 65535, max_burst 262144) and LAN with
`[stream] workers = 1` (N-target sequential read only).

It prints a table and the goals, and writes every figure, the exact commands, the tool
versions and the date to bench/results/stream-<timestamp>.json. Every process it starts runs
in a process group of its own and is stopped on exit, on failure and on Ctrl-C; the temp
folder is removed. A wrong sha256 from any pvsd copy fails the run (exit code 1).

Goals (from the issue):

- at MTU 1506, one target reads at least 117 MB/s (a saturated gigabit link);
- with large datagrams, one target reads at least 0.5x qemu-nbd;
- N targets together read at least as fast as N qemu-nbd clients;
- 4 KiB random-read IOPS at least 0.5x qemu-nbd's (fio).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    PVSD,
    RESULTS,
    BenchError,
    init_pvsd_farm,
    launch,
    log_tail,
    machine_info,
    print_machine,
    print_servers,
    progress,
    pvsd_other_services_off,
    raise_interrupt,
    report_header,
    server_log_summary,
    stop_group,
    stop_servers,
    write_json,
)

MIB = 1 << 20
BLOCK = 4096
VERIFY_EVERY = 64  # the IOPS driver compares every 64th block it reads with the image
MAX_IOPS_READS = 50_000_000  # a bound on one driver's reads, whatever the time says

PVSD_HOST = "127.0.0.11"
LOGIN_PORT = 6910
STREAM_PORTS = "6911-6912"
NBD_HOST = "127.0.0.1"
EXPORT = "disk"
VDISK = "disk"

START_TIMEOUT = 60.0  # seconds for a server to serve its first read (pvsd verifies the image first)
PAUSE_BETWEEN_RUNS = 0.5
GOAL_LAN_MB_S = 117.0  # a saturated gigabit link


def mac_of(index: int) -> str:
    return f"52:54:00:5b:{index >> 8:02x}:{index & 0xFF:02x}"


# -- settings and plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    quick: bool
    size: int
    targets: int
    repeats: int
    iops_seconds: float
    depth: int
    timeout: float
    output: Path


@dataclass(frozen=True)
class PvsdSetting:
    key: str
    label: str
    mtu: int
    max_burst: int
    workers: int


LAN = PvsdSetting("lan", "MTU 1506 (LAN)", 1506, 32768, 2)
LARGE = PvsdSetting("large", "MTU 65535 (large datagrams)", 65535, 262144, 2)
LAN_W1 = PvsdSetting("lan-w1", "MTU 1506, stream workers 1", 1506, 32768, 1)
PVSD_SETTINGS = (LAN, LARGE, LAN_W1)


@dataclass(frozen=True)
class Measurement:
    """One row of the table: pvsd in one setting against qemu-nbd's best tool for the same load."""

    key: str
    kind: str  # "seq" or "iops"
    targets: int
    setting: PvsdSetting

    @property
    def unit(self) -> str:
        return "MB/s" if self.kind == "seq" else "IOPS"

    @property
    def peer_key(self) -> str:
        return f"{self.kind}-{'1' if self.targets == 1 else 'n'}"

    def label(self, settings: Settings) -> str:
        who = "1 target" if self.targets == 1 else f"{self.targets} targets"
        what = "sequential read" if self.kind == "seq" else f"4 KiB random read, depth {settings.depth}"
        return f"{what}, {who}, {self.setting.label}"


def plan(settings: Settings) -> list[Measurement]:
    n = settings.targets
    rows = []
    for setting in (LAN, LARGE):
        rows.append(Measurement(f"seq-1-{setting.key}", "seq", 1, setting))
    for setting in (LAN, LARGE, LAN_W1):
        rows.append(Measurement(f"seq-{n}-{setting.key}", "seq", n, setting))
    for targets in (1, n):
        for setting in (LAN, LARGE):
            rows.append(Measurement(f"iops-{targets}-{setting.key}", "iops", targets, setting))
    return rows


# -- results -----------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One tool's figures for one measurement."""

    value: float | None = None
    runs: list[float] = field(default_factory=list)
    attempts: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)

    def add_error(self, error: str) -> None:
        self.failures += 1
        if len(self.errors) < 10:
            self.errors.append(error)

    def keep_best(self) -> None:
        self.value = max(self.runs) if self.runs else None


@dataclass
class Image:
    path: Path
    size: int
    sha256: str


@dataclass
class Server:
    name: str
    address: str
    argv: list[str]
    env: dict[str, str]  # set on top of the benchmark's environment
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None


class Running:
    """Every server and client process of the run; leaving the context stops each process group."""

    def __init__(self) -> None:
        self.servers: list[Server] = []
        self.clients: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_clients()
        stop_servers(self.servers)

    def spawn(
        self, argv: list[str], env: dict[str, str], stdin: int | None = None
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=client_env(env),
            start_new_session=True,  # its own group: stop_group reaches whatever it forks
        )
        self.clients.append(proc)
        return proc

    def stop_clients(self) -> None:
        for proc in self.clients:
            if proc.poll() is None:
                stop_group(proc, timeout=2.0)
            with contextlib.suppress(OSError, ValueError, subprocess.TimeoutExpired):
                proc.communicate(timeout=2.0)
        self.clients.clear()

    def start(self, server: Server, cwd: Path) -> None:
        launch(server, server.argv, cwd)
        self.servers.append(server)

    def stop(self, server: Server) -> None:
        stop_servers([server])


def client_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVSD_")}
    env.update(extra)
    return env


@dataclass
class ProcResult:
    returncode: int | None
    stdout: str
    stderr: str


def run_parallel(
    running: Running, argvs: Sequence[list[str]], env: dict[str, str], timeout: float
) -> tuple[float, list[ProcResult], bool]:
    """Start every argv at once; wall time from the first launch to the last exit, outputs, timed out."""
    start = time.perf_counter()
    procs = [running.spawn(argv, env) for argv in argvs]
    deadline = start + timeout
    timed_out = False
    outputs: list[ProcResult] = []
    # communicate() drains each pipe while waiting: a chatty process cannot block on a full pipe.
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(0.01, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            timed_out = True
            break
        outputs.append(
            ProcResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
        )
    wall = time.perf_counter() - start
    if timed_out:
        running.stop_clients()
        outputs += [ProcResult(None, "", "killed at the run's timeout")] * (len(procs) - len(outputs))
    else:
        running.clients = [proc for proc in running.clients if proc not in procs]
    return wall, outputs, timed_out


def last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    return value
    return None


def error_of(result: ProcResult) -> str:
    lines = result.stderr.strip().splitlines()
    return f"exit {result.returncode}: {lines[-1][:300] if lines else 'no message'}"


# -- the image ---------------------------------------------------------------------------------------


def make_image(path: Path, size: int) -> Image:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for offset in range(0, size, MIB):
            chunk = os.urandom(min(MIB, size - offset))
            digest.update(chunk)
            out.write(chunk)
    path.chmod(0o644)
    return Image(path, size, digest.hexdigest())


# -- qemu-nbd and its clients ------------------------------------------------------------------------


def free_tcp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def qemu_nbd_server(work: Path, image: Image, targets: int) -> tuple[Server, str]:
    port = free_tcp_port(NBD_HOST)
    # -e: nbdcopy opens up to 4 connections per copy, so N copies need 4N.
    argv = ["qemu-nbd", "--read-only", "--format=raw", f"--bind={NBD_HOST}", f"--port={port}"]
    argv += [
        f"--export-name={EXPORT}",
        f"--shared={max(32, 4 * targets + 8)}",
        "--persistent",
        str(image.path),
    ]
    server = Server("qemu-nbd", f"{NBD_HOST}:{port} (TCP)", argv, {}, work / "logs" / "qemu-nbd.log")
    return server, f"nbd://{NBD_HOST}:{port}/{EXPORT}"


def wait_tcp(server: Server, host: str, port: int) -> None:
    assert server.proc is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(
                f"{server.name} exited with {server.proc.returncode}: {log_tail(server.log_path)}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
            return
        time.sleep(0.1)
    raise BenchError(f"{server.name} did not accept connections on {host}:{port}")


def check_nbd_content(uri: str, image: Image, timeout: float) -> None:
    """Read the whole export once through nbdcopy and compare it with the image."""
    done = subprocess.run(
        ["nbdcopy", uri, "-"], capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )
    actual = hashlib.sha256(done.stdout).hexdigest()
    if done.returncode != 0 or actual != image.sha256:
        raise BenchError(f"qemu-nbd serves other bytes than the image (nbdcopy exit {done.returncode})")


def fio_argv(uri: str, image: Image, rw: str, jobs: int, settings: Settings) -> list[str]:
    argv = ["fio", f"--name={rw}", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--size={image.size}"]
    argv += [f"--numjobs={jobs}", "--group_reporting", "--output-format=json"]
    if rw == "read":
        return [*argv, "--bs=1M", "--iodepth=16"]
    return [
        *argv,
        "--bs=4k",
        f"--iodepth={settings.depth}",
        "--time_based",
        f"--runtime={settings.iops_seconds:g}",
    ]


def fio_run(running: Running, argv: list[str], timeout: float) -> tuple[float, dict[str, Any] | None, str]:
    """Wall time, fio's group "read" figures (or None) and an error ("" when fine)."""
    wall, [result], timed_out = run_parallel(running, [argv], {}, timeout)
    if timed_out:
        return wall, None, f"timeout after {timeout:.0f} s"
    if result.returncode != 0:
        return wall, None, error_of(result)
    try:
        report = json.loads(result.stdout[result.stdout.index("{") :])
        job = report["jobs"][0]
    except (ValueError, KeyError, IndexError) as error:
        return wall, None, f"unreadable fio output: {error}"
    if job.get("error"):
        return wall, None, f"fio job error {job['error']}"
    return wall, job["read"], ""


def measure_nbd_seq(
    running: Running, uri: str, image: Image, targets: int, settings: Settings
) -> dict[str, Cell]:
    """nbdcopy and fio reading the whole export: 1 client (best of the repeats) or N at once."""
    repeats = settings.repeats if targets == 1 else 1
    nbdcopy = Cell(command=["nbdcopy", uri, "null:"], detail={"instances": targets})
    fio = Cell(command=fio_argv(uri, image, "read", targets, settings))
    for _ in range(repeats):
        nbdcopy.attempts += 1
        wall, results, timed_out = run_parallel(running, [nbdcopy.command] * targets, {}, settings.timeout)
        failed = [error_of(r) for r in results if r.returncode != 0]
        if timed_out or failed:
            nbdcopy.add_error(f"timeout after {settings.timeout:.0f} s" if timed_out else failed[0])
        else:
            nbdcopy.runs.append(round(targets * image.size / wall / 1e6, 1))
        time.sleep(PAUSE_BETWEEN_RUNS)
        fio.attempts += 1
        wall, read, error = fio_run(running, fio.command, settings.timeout)
        if read is None:
            fio.add_error(error)
        elif read["io_bytes"] < targets * image.size:
            fio.add_error(f"fio read {read['io_bytes']} bytes of {targets * image.size}")
        else:
            # Single: fio's own rate; N jobs: the same total bytes / wall as every N-target figure.
            mb_s = read["bw_bytes"] / 1e6 if targets == 1 else read["io_bytes"] / wall / 1e6
            fio.runs.append(round(mb_s, 1))
            fio.detail = {"fio_bw_mb_s": round(read["bw_bytes"] / 1e6, 1), "wall_s": round(wall, 3)}
        time.sleep(PAUSE_BETWEEN_RUNS)
    nbdcopy.keep_best()
    fio.keep_best()
    return {"nbdcopy": nbdcopy, "fio": fio}


def measure_nbd_iops(
    running: Running, uri: str, image: Image, targets: int, settings: Settings
) -> dict[str, Cell]:
    fio = Cell(command=fio_argv(uri, image, "randread", targets, settings), attempts=1)
    _, read, error = fio_run(running, fio.command, settings.iops_seconds + settings.timeout)
    if read is None:
        fio.add_error(error)
    else:
        fio.value = round(read["iops"])
        fio.runs = [fio.value]
        lat = read.get("clat_ns", {}).get("percentile", {})
        fio.detail = {
            "ios": read.get("total_ios"),
            "clat_p50_us": round(lat.get("50.000000", 0) / 1000, 1),
            "clat_p99_us": round(lat.get("99.000000", 0) / 1000, 1),
        }
    return {"fio": fio}


# -- pvsd --------------------------------------------------------------------------------------------


def setup_pvsd_farm(work: Path, image: Image, targets: int) -> dict[str, str]:
    """A farm with the image as a vDisk and one device per target; returns the env the server needs."""
    (work / "store").mkdir()
    env = {
        "PVSD_FARM__DATABASE": init_pvsd_farm(work),
        "PVSD_SERVER__STORE": str(work / "store"),
        "PVSD_STREAM__CACHE_DIR": str(work / "cache"),
    }
    commands = [["vdisk", "import", VDISK, str(image.path), "--no-boot", "--quiet"]]
    commands += [["device", "add", mac_of(i), "--name", f"t{i}", "--vdisk", VDISK] for i in range(targets)]
    for command in commands:
        done = subprocess.run(
            [str(PVSD), "--log-level", "warning", *command],
            capture_output=True,
            timeout=300,
            check=False,
            cwd=work,
            env=client_env(env),
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise BenchError(
                f"pvsd {' '.join(command)} failed: {done.stderr.decode(errors='replace').strip()}"
            )
    return env


def services_off() -> dict[str, str]:
    """Every pvsd service off but login and stream."""
    try:
        off = pvsd_other_services_off("stream")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        raise BenchError(f"`pvsd config defaults` failed: {error}") from None
    return {k: v for k, v in off.items() if k != "PVSD_LOGIN__ENABLED"}


def pvsd_server(work: Path, farm_env: dict[str, str], setting: PvsdSetting) -> Server:
    env = {
        **farm_env,
        "PVSD_LOGIN__PORT": str(LOGIN_PORT),
        "PVSD_STREAM__PORTS": STREAM_PORTS,
        "PVSD_STREAM__WORKERS": str(setting.workers),
        "PVSD_STREAM__MAX_BURST": str(setting.max_burst),
    }
    argv = [str(PVSD), "--log-format", "json", "--log-level", "warning"]
    argv += ["serve", "--name", "pvs1", "--address", PVSD_HOST]
    return Server(
        f"pvsd ({setting.key})",
        f"{PVSD_HOST}:{LOGIN_PORT}",
        argv,
        env,
        work / "logs" / f"pvsd-{setting.key}.log",
    )


def target_config(mtu: int, window: int) -> Any:
    from pvsd.config import TargetConfig

    return TargetConfig(mtu=mtu, window=window)


async def probe_pvsd(mac: str) -> None:
    from pvsd.log import get_logger
    from pvsd.target.client import StreamClient

    client = StreamClient(
        mac,
        [(PVSD_HOST, LOGIN_PORT)],
        target_config(1506, 8),
        get_logger("bench"),
        login_timeout=1.0,
        login_rounds=1,
    )
    try:
        await client.connect()
        await asyncio.wait_for(client.read(0, BLOCK), 5.0)
    finally:
        await client.close()


def wait_pvsd(server: Server) -> None:
    """Until a target can log in and read a block (pvsd verifies the replica before it serves it)."""
    assert server.proc is not None
    deadline = time.monotonic() + START_TIMEOUT
    problem = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(
                f"{server.name} exited with {server.proc.returncode}: {log_tail(server.log_path)}"
            )
        try:
            asyncio.run(probe_pvsd(mac_of(0)))
        except Exception as error:  # not up yet; the last problem is reported
            problem = str(error)
            time.sleep(0.3)
            continue
        return
    raise BenchError(f"{server.name} served no read within {START_TIMEOUT:.0f} s: {problem}")


def copy_argv(index: int) -> list[str]:
    argv = [str(PVSD), "--log-level", "warning", "target", "copy", "--mac", mac_of(index)]
    return [*argv, "--servers", PVSD_HOST, "--out", "/dev/null", "--json"]


def measure_pvsd_seq(running: Running, row: Measurement, image: Image, settings: Settings) -> Cell:
    env = {"PVSD_TARGET__MTU": str(row.setting.mtu), "PVSD_TARGET__WINDOW": "8"}
    cell = Cell(command=copy_argv(0), env=env)
    repeats = settings.repeats if row.targets == 1 else 1
    for _ in range(repeats):
        cell.attempts += row.targets
        argvs = [copy_argv(i) for i in range(row.targets)]
        wall, results, timed_out = run_parallel(running, argvs, env, settings.timeout)
        copies: list[dict[str, Any]] = []
        for result in results:
            copy = last_json(result.stdout)
            if result.returncode != 0 or copy is None:
                cell.add_error(error_of(result))
            elif copy.get("sha256") != image.sha256 or copy.get("bytes") != image.size:
                cell.add_error(f"SHA256 MISMATCH: got {copy.get('sha256')} ({copy.get('bytes')} bytes)")
            else:
                copies.append(copy)
        if timed_out or len(copies) < row.targets:
            continue
        seconds = sorted(float(copy["seconds"]) for copy in copies)
        if row.targets == 1:
            cell.runs.append(float(copies[0]["mb_per_s"]))  # the copy's own rate, first read to last
        else:
            cell.runs.append(round(row.targets * image.size / wall / 1e6, 1))
        cell.detail = {
            "wall_s": round(wall, 3),
            "copy_s": {"min": seconds[0], "p50": seconds[len(seconds) // 2], "max": seconds[-1]},
            "in_transfer_mb_s": round(row.targets * image.size / seconds[-1] / 1e6, 1),
            "retransmits": sum(int(copy.get("retransmits", 0)) for copy in copies),
            "payload": copies[0].get("payload"),
            "burst": copies[0].get("burst"),
        }
        time.sleep(PAUSE_BETWEEN_RUNS)
    cell.keep_best()
    return cell


def iops_worker_argv(
    index: int, image: Image, setting: PvsdSetting, settings: Settings, start_at: float
) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--_iops-worker", "--mac", mac_of(index)]
    argv += [
        "--mtu",
        str(setting.mtu),
        "--depth",
        str(settings.depth),
        "--seconds",
        f"{settings.iops_seconds:g}",
    ]
    return [*argv, "--image", str(image.path), "--start-at", f"{start_at:.3f}", "--seed", str(index + 1)]


def measure_pvsd_iops(running: Running, row: Measurement, image: Image, settings: Settings) -> Cell:
    # Every driver logs in first and starts reading at the same moment, after its siblings had
    # time to start Python (about 0.3 s of CPU each on this machine).
    start_at = time.time() + 2.0 + 0.5 * row.targets
    argvs = [iops_worker_argv(i, image, row.setting, settings, start_at) for i in range(row.targets)]
    cell = Cell(command=argvs[0], attempts=row.targets)
    timeout = start_at - time.time() + settings.iops_seconds + 30.0
    _, results, _ = run_parallel(running, argvs, {}, timeout)
    reports = []
    for result in results:
        report = last_json(result.stdout)
        if result.returncode != 0 or report is None:
            cell.add_error(error_of(result))
        elif report["mismatches"]:
            cell.add_error(f"DATA MISMATCH: {report['mismatches']} of {report['verified']} checked blocks")
        elif report["late_s"] > 0:
            cell.add_error(f"logged in {report['late_s']:.2f} s after the common start")
        else:
            reports.append(report)
    if len(reports) == row.targets:
        cell.value = round(sum(r["reads"] / r["seconds"] for r in reports))
        cell.runs = [cell.value]
        cell.detail = {
            "reads": sum(r["reads"] for r in reports),
            "per_target_iops": sorted(round(r["reads"] / r["seconds"]) for r in reports),
            "verified_blocks": sum(r["verified"] for r in reports),
            "retransmits": sum(r["retransmits"] for r in reports),
        }
    return cell


# -- the IOPS driver (one per target process) --------------------------------------------------------


async def iops_drive(opts: argparse.Namespace) -> dict[str, Any]:
    """Keep `depth` 4 KiB reads at random aligned offsets in flight for `seconds`; count completions."""
    from pvsd.log import get_logger
    from pvsd.target.client import StreamClient

    client = StreamClient(
        opts.mac, [(PVSD_HOST, LOGIN_PORT)], target_config(opts.mtu, opts.depth), get_logger("bench")
    )
    reply = await client.connect()
    late = time.time() - opts.start_at
    await asyncio.sleep(max(0.0, -late))
    blocks = reply.disk_size // BLOCK
    rng = random.Random(opts.seed)
    fd = os.open(opts.image, os.O_RDONLY)
    counts = {"reads": 0, "verified": 0, "mismatches": 0}
    start = time.monotonic()
    stop = start + opts.seconds

    async def lane() -> None:
        while time.monotonic() < stop and counts["reads"] < MAX_IOPS_READS:
            offset = rng.randrange(blocks) * BLOCK
            data = await client.read(offset, BLOCK)
            counts["reads"] += 1
            if counts["reads"] % VERIFY_EVERY == 0:
                counts["verified"] += 1
                if data != os.pread(fd, BLOCK, offset):
                    counts["mismatches"] += 1

    try:
        await asyncio.wait_for(asyncio.gather(*(lane() for _ in range(opts.depth))), opts.seconds + 20.0)
        elapsed = time.monotonic() - start
    finally:
        os.close(fd)
        stats = client.flow.stats if client.flow is not None else None
        await client.close()
    return {
        **counts,
        "seconds": round(elapsed, 4),
        "late_s": round(max(0.0, late), 3),
        "retransmits": getattr(stats, "retransmits", 0),
        "payload": reply.max_payload,
    }


def iops_worker(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/stream.py --_iops-worker")
    parser.add_argument("--mac", required=True)
    parser.add_argument("--mtu", type=int, required=True)
    parser.add_argument("--depth", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--start-at", type=float, required=True)
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args(argv)
    from pvsd.log import configure_logging

    configure_logging("warning", "json", sys.stderr)
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop  # as `pvsd serve` uses: the driver's own cost stays small
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        report = runner.run(iops_drive(opts))
    print(json.dumps(report), flush=True)
    return 0


# -- ratios, goals and the report --------------------------------------------------------------------


def peer_best(cells: dict[str, Cell]) -> tuple[str, Cell] | None:
    """qemu-nbd's best tool for a load: the cell with the highest figure."""
    done = [(tool, cell) for tool, cell in cells.items() if cell.value is not None]
    return max(done, key=lambda item: item[1].value or 0.0) if done else None


def ratio(ours: Cell | None, theirs: Cell | None) -> float | None:
    if ours is None or theirs is None or not ours.value or not theirs.value:
        return None
    return round(ours.value / theirs.value, 2)


def goals(
    rows: list[Measurement], pvsd: dict[str, Cell], peers: dict[str, dict[str, Cell]], settings: Settings
) -> list[dict[str, Any]]:
    by_key = {row.key: row for row in rows}
    n = settings.targets
    checks: list[dict[str, Any]] = []

    def against_peer(goal: str, key: str, at_least: float) -> None:
        if key not in by_key or key not in pvsd:
            return
        best = peer_best(peers.get(by_key[key].peer_key, {}))
        value = ratio(pvsd[key], best[1] if best else None)
        clean = pvsd[key].failures == 0
        met = value is not None and clean and value >= at_least
        checks.append({"goal": goal, "measurement": key, "ratio": value, "at_least": at_least, "met": met})

    lan = pvsd.get("seq-1-lan")
    if lan is not None:
        checks.append(
            {
                "goal": f"MTU 1506, one target >= {GOAL_LAN_MB_S:g} MB/s",
                "measurement": "seq-1-lan",
                "value": lan.value,
                "at_least": GOAL_LAN_MB_S,
                "met": lan.value is not None and lan.failures == 0 and lan.value >= GOAL_LAN_MB_S,
            }
        )
    against_peer("large datagrams, one target >= 0.5x qemu-nbd sequential", "seq-1-large", 0.5)
    against_peer(f"{n} targets aggregate >= qemu-nbd aggregate, MTU 1506", f"seq-{n}-lan", 1.0)
    against_peer(f"{n} targets aggregate >= qemu-nbd aggregate, large datagrams", f"seq-{n}-large", 1.0)
    against_peer("4 KiB random-read IOPS >= 0.5x qemu-nbd, 1 target, MTU 1506", "iops-1-lan", 0.5)
    against_peer(f"4 KiB random-read IOPS >= 0.5x qemu-nbd, {n} targets, MTU 1506", f"iops-{n}-lan", 0.5)
    return checks


def format_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if value >= 1000 else f"{value:.1f}"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table_lines(
    rows: list[Measurement], pvsd: dict[str, Cell], peers: dict[str, dict[str, Cell]], settings: Settings
) -> list[list[str]]:
    lines = []
    for row in rows:
        ours = pvsd.get(row.key)
        best = peer_best(peers.get(row.peer_key, {}))
        ours_text = "-" if ours is None else format_value(ours.value)
        if ours is not None and ours.failures:
            ours_text += f" ({ours.failures}/{ours.attempts} failed)"
        theirs_text = "n/a" if best is None else f"{format_value(best[1].value)} ({best[0]})"
        lines.append(
            [
                row.label(settings),
                row.unit,
                ours_text,
                theirs_text,
                format_ratio(ratio(ours, best and best[1])),
            ]
        )
    return lines


def render_table(
    rows: list[Measurement], pvsd: dict[str, Cell], peers: dict[str, dict[str, Cell]], settings: Settings
) -> str:
    header = ["measurement", "unit", "pvsd", "qemu-nbd (best tool)", "pvsd/qemu-nbd"]
    lines = [header, *table_lines(rows, pvsd, peers, settings)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(line))
        for line in lines
    ]
    text.insert(1, "  ".join("-" * width for width in widths))
    text += [
        "",
        f"MB/s: 10^6 bytes/s reading the whole {settings.size // MIB} MiB image. 1 target: best of "
        f"{settings.repeats}, each tool's own rate (pvsd copy and fio: first read to last;",
        "nbdcopy: its process).",
        f"{settings.targets} targets: total bytes / wall time from the first launch to the last exit.",
        f"IOPS: 4 KiB reads completed per second over {settings.iops_seconds:g} s, summed over the targets.",
    ]
    return "\n".join(text)


def render_markdown(
    rows: list[Measurement], pvsd: dict[str, Cell], peers: dict[str, dict[str, Cell]], settings: Settings
) -> str:
    header = ["measurement", "unit", "pvsd", "qemu-nbd (best tool)", "pvsd/qemu-nbd"]
    lines = [header, ["---"] * len(header), *table_lines(rows, pvsd, peers, settings)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def render_notes(
    rows: list[Measurement], pvsd: dict[str, Cell], peers: dict[str, dict[str, Cell]]
) -> list[str]:
    notes = []
    for load, cells in peers.items():
        for tool, cell in cells.items():
            notes.append(f"qemu-nbd {load}, {tool}: {format_value(cell.value)} (runs {cell.runs})")
            if cell.errors:
                notes.append(f"qemu-nbd {load}, {tool}: {cell.failures} failed, e.g. {cell.errors[0]}")
    for row in rows:
        ours = pvsd.get(row.key)
        if ours is None:
            continue
        detail = ours.detail
        extra = f"runs {ours.runs}"
        if "in_transfer_mb_s" in detail and row.targets > 1:
            extra += (
                f", wall {detail['wall_s']} s, slowest copy {detail['copy_s']['max']} s "
                f"({detail['in_transfer_mb_s']} MB/s without process start and login)"
            )
        if "retransmits" in detail:
            extra += f", retransmits {detail['retransmits']}"
        notes.append(f"pvsd {row.key}: {extra}")
        if ours.errors:
            notes.append(f"pvsd {row.key}: {ours.failures} failed, e.g. {ours.errors[0]}")
    return notes


def render_goals(checks: list[dict[str, Any]]) -> list[str]:
    lines = []
    for item in checks:
        figure = (
            f"ratio {format_ratio(item['ratio'])}"
            if "ratio" in item
            else f"{format_value(item['value'])} MB/s"
        )
        lines.append(f"{'MET   ' if item['met'] else 'MISSED'}  {item['goal']} ({figure})")
    return lines


def build_report(
    settings: Settings,
    machine: dict[str, Any],
    image: Image,
    servers: list[Server],
    rows: list[Measurement],
    pvsd: dict[str, Cell],
    peers: dict[str, dict[str, Cell]],
    started: float,
) -> dict[str, Any]:
    return {
        **report_header("stream", settings.quick, started, machine),
        "settings": {
            "size": settings.size,
            "targets": settings.targets,
            "repeats": settings.repeats,
            "iops_seconds": settings.iops_seconds,
            "depth": settings.depth,
            "timeout_s": settings.timeout,
            "pvsd_settings": [dataclasses.asdict(setting) for setting in PVSD_SETTINGS],
        },
        "image": {"size": image.size, "sha256": image.sha256},
        "servers": {
            server.name: {
                "command": server.argv,
                "env": server.env,
                "address": server.address,
                "log": server_log_summary(
                    "pvsd" if server.name.startswith("pvsd") else server.name,
                    server.log_path,
                    server.exit_code,
                ),
            }
            for server in servers
        },
        "peer": {
            load: {tool: dataclasses.asdict(cell) for tool, cell in cells.items()}
            for load, cells in peers.items()
        },
        "results": [
            {
                "key": row.key,
                "label": row.label(settings),
                "unit": row.unit,
                "targets": row.targets,
                "setting": row.setting.key,
                "pvsd": dataclasses.asdict(pvsd[row.key]) if row.key in pvsd else None,
                "peer_load": row.peer_key,
                "peer_best": (best := peer_best(peers.get(row.peer_key, {})))
                and {"tool": best[0], "value": best[1].value},
                "ratio": ratio(pvsd.get(row.key), best[1] if best else None),
            }
            for row in rows
        ],
        "ratio_note": "pvsd / qemu-nbd's best tool; >1 means pvsd is better",
        "goals": goals(rows, pvsd, peers, settings),
    }


# -- main --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        description="Benchmark pvsd's vDisk streaming against qemu-nbd (nbdcopy, fio) on loopback.",
        epilog="Writes bench/results/stream-<timestamp>.json unless --output is given.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 32 MiB, 4 targets, 1 repeat, 2 s IOPS"
    )
    parser.add_argument("--size", type=int, metavar="MIB", help="image size in MiB (default 256, quick 32)")
    parser.add_argument("--targets", type=int, help="concurrent targets (default 16, quick 4)")
    parser.add_argument("--repeats", type=int, help="single-target runs per cell, best kept (default 3)")
    parser.add_argument("--iops-seconds", type=float, help="seconds per IOPS run (default 5, quick 2)")
    parser.add_argument("--depth", type=int, default=16, help="4 KiB reads in flight per target (default 16)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds before a run is killed (180)")
    parser.add_argument("--output", type=Path, help="where to write the JSON results")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    size = args.size or (32 if quick else 256)
    targets = args.targets or (4 if quick else 16)
    repeats = args.repeats or (1 if quick else 3)
    seconds = args.iops_seconds or (2.0 if quick else 5.0)
    if not (1 <= size <= 16384 and 2 <= targets <= 64 and 1 <= repeats <= 10 and 0.5 <= seconds <= 120):
        parser.error("--size must be 1-16384, --targets 2-64, --repeats 1-10, --iops-seconds 0.5-120")
    if not (1 <= args.depth <= 256 and 1 <= args.timeout <= 3600):
        parser.error("--depth must be 1-256, --timeout 1-3600")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Settings(
        quick=quick,
        size=size * MIB,
        targets=targets,
        repeats=repeats,
        iops_seconds=seconds,
        depth=args.depth,
        timeout=args.timeout,
        output=args.output or RESULTS / f"stream-{'quick-' if quick else ''}{stamp}.json",
    )


def check_tools() -> None:
    needed = {"pvsd": str(PVSD), "qemu-nbd": "qemu-nbd", "nbdcopy": "nbdcopy", "fio": "fio"}
    missing = [name for name, tool in needed.items() if not on_path(tool)]
    if missing:
        raise BenchError(
            f"missing: {', '.join(missing)} (run `make bench-stream`; "
            "Debian packages fio libnbd-bin qemu-utils)"
        )
    engines = subprocess.run(["fio", "--enghelp"], capture_output=True, timeout=10, check=False)
    if b"nbd" not in engines.stdout.split():
        raise BenchError("this fio has no nbd engine (`fio --enghelp`)")
    for port in (LOGIN_PORT, 6911, 6912):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((PVSD_HOST, port))
            except OSError as error:
                raise BenchError(
                    f"UDP {PVSD_HOST}:{port} is taken ({error}): is another pvsd running?"
                ) from None


def on_path(tool: str) -> bool:
    if "/" in tool:
        return os.access(tool, os.X_OK)
    return any(
        os.access(Path(folder) / tool, os.X_OK) for folder in os.environ.get("PATH", "").split(os.pathsep)
    )


@dataclass
class Outcome:
    rows: list[Measurement]
    pvsd: dict[str, Cell]
    peers: dict[str, dict[str, Cell]]
    report: dict[str, Any]


def run(settings: Settings) -> Outcome:
    started = time.time()
    machine = machine_info(
        {
            "pvsd": [str(PVSD), "--version"],
            "qemu-nbd": ["qemu-nbd", "--version"],
            "nbdcopy": ["nbdcopy", "--version"],
            "fio": ["fio", "--version"],
        },
        with_platform=True,
    )
    rows = plan(settings)
    n = settings.targets
    services_off()  # fail now, not after the qemu-nbd half, if pvsd cannot even start
    pvsd: dict[str, Cell] = {}
    peers: dict[str, dict[str, Cell]] = {}
    with tempfile.TemporaryDirectory(prefix="pvsd-bench-stream-") as tmp, Running() as running:
        work = Path(tmp)
        (work / "logs").mkdir()
        progress(f"generating a {settings.size // MIB} MiB image in {work}")
        image = make_image(work / "disk.raw", settings.size)

        nbd, uri = qemu_nbd_server(work, image, n)
        running.start(nbd, work)
        wait_tcp(nbd, NBD_HOST, int(uri.rsplit(":", 1)[1].split("/")[0]))
        check_nbd_content(uri, image, settings.timeout)
        progress(f"qemu-nbd serving {uri}")
        for targets in (1, n):
            load = "1" if targets == 1 else "n"
            progress(f"qemu-nbd: sequential read, {targets} client(s)")
            peers[f"seq-{load}"] = measure_nbd_seq(running, uri, image, targets, settings)
            progress(f"qemu-nbd: 4 KiB random read, {targets} job(s)")
            peers[f"iops-{load}"] = measure_nbd_iops(running, uri, image, targets, settings)
        running.stop(nbd)

        progress(f"pvsd: importing the image and adding {n} devices")
        farm_env = {**setup_pvsd_farm(work, image, n), **services_off()}
        for setting in PVSD_SETTINGS:
            server = pvsd_server(work, farm_env, setting)
            running.start(server, work)
            wait_pvsd(server)
            progress(f"{server.name} serving on {server.address}")
            for row in rows:
                if row.setting != setting:
                    continue
                progress(f"pvsd: {row.label(settings)}")
                if row.kind == "seq":
                    pvsd[row.key] = measure_pvsd_seq(running, row, image, settings)
                else:
                    pvsd[row.key] = measure_pvsd_iops(running, row, image, settings)
                time.sleep(PAUSE_BETWEEN_RUNS)
            running.stop(server)
        report = build_report(settings, machine, image, running.servers, rows, pvsd, peers, started)
        return Outcome(rows, pvsd, peers, report)


def print_report(outcome: Outcome, settings: Settings) -> None:
    print()
    print(render_table(outcome.rows, outcome.pvsd, outcome.peers, settings))
    print("\nNotes:")
    print("\n".join(f"- {note}" for note in render_notes(outcome.rows, outcome.pvsd, outcome.peers)))
    print("\nGoals:")
    print("\n".join(render_goals(outcome.report["goals"])))
    print("\nMarkdown:\n")
    print(render_markdown(outcome.rows, outcome.pvsd, outcome.peers, settings))
    print_servers(outcome.report["servers"])
    print_machine(outcome.report["machine"], settings.output)


def mismatches(outcome: Outcome) -> list[str]:
    return [
        f"{row.key}: {error}"
        for row in outcome.rows
        for error in (outcome.pvsd[row.key].errors if row.key in outcome.pvsd else [])
        if "MISMATCH" in error
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--_iops-worker"]:
        return iops_worker(args[1:])
    settings = parse_args(args)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGHUP, raise_interrupt)
    try:
        check_tools()
        from pvsd.log import configure_logging

        configure_logging("error", "json", sys.stderr)  # the readiness probes' retries are expected
        outcome = run(settings)
        write_json(settings.output, outcome.report)
        print_report(outcome, settings)
    except BenchError as error:
        print(f"bench/stream.py: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/stream.py: interrupted; processes stopped and temp folder removed", file=sys.stderr)
        return 130
    wrong = mismatches(outcome)
    if wrong:
        print("\nbench/stream.py: WRONG DATA from pvsd:\n" + "\n".join(wrong), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
